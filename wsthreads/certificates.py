"""PEM files for TLS, both sides: each problem with one is one line that names the file.

OpenSSL reads the files itself and, when one is wrong, says ``[SSL] PEM lib
(_ssl.c:3905)`` whatever the file: a certificate without its key, a key with a
pass phrase (after asking for it on the terminal), a damaged block. So the
files are read here first, and each problem found gets its own words:
``cannot use the certificate server.pem: no private key in it (give the key
file too)``.
"""

from __future__ import annotations

import os
import ssl
import stat

from .lines import shown_path as shown

#: The most of a PEM file read (a CA bundle is a few hundred KiB); /dev/zero is not read for ever.
MAX_PEM = 16 * 1024 * 1024


def read_pem(what: str, path: str) -> str:
    """The text of the PEM file at ``path``; ValueError naming it if it cannot be read.

    A pipe is refused: OpenSSL would wait for ever for a writer (and the
    file is read twice, here and by OpenSSL).
    """
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            raise ValueError(f"cannot use the {what} {shown(path)}: it is a pipe, not a file")
        with open(path, encoding="ascii", errors="replace") as pem:
            if pem.isatty():  # /dev/stdin on a terminal: it would be read until someone types ^D
                raise ValueError(f"cannot use the {what} {shown(path)}: it is a terminal, not a file")
            return pem.read(MAX_PEM)
    except OSError as error:
        raise ValueError(f"cannot use the {what} {shown(path)}: {error.strerror or error}") from None


def trusting(cafile: str | None) -> ssl.SSLContext:
    """A client's context that trusts the CA certificates in ``cafile`` (None: the system's).

    Raises:
        ValueError: ``cannot use the CA file ca.pem: no PEM certificate in it``.
    """
    if cafile is None:
        return ssl.create_default_context()
    text = read_pem("CA file", cafile)
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"cannot use the CA file {shown(cafile)}: no PEM certificate in it")
    try:
        return ssl.create_default_context(cadata=text)  # what was read: the file is not read twice
    except (ssl.SSLError, ValueError):
        raise ValueError(f"cannot use the CA file {shown(cafile)}: a certificate in it is damaged") from None


def load_certificate(context: ssl.SSLContext, certfile: str, keyfile: str | None = None) -> None:
    """Have ``context`` show the certificate (chain) in ``certfile``, its key in ``keyfile`` or in it.

    Raises:
        ValueError: ``cannot use the certificate x.pem: No such file or
            directory``, ``... no private key in it (give the key file too)``,
            ``cannot use the key key.pem: it has a pass phrase; give a key
            without one``, ``... the key does not match it``.
    """
    certificate = read_pem("certificate", certfile)
    if "-----BEGIN CERTIFICATE-----" not in certificate:
        raise ValueError(f"cannot use the certificate {shown(certfile)}: no PEM certificate in it")
    key = certificate if keyfile is None else read_pem("key", keyfile)
    holder = f"the certificate {shown(certfile)}" if keyfile is None else f"the key {shown(keyfile)}"
    if "PRIVATE KEY-----" not in key:
        missing = " (give the key file too)" if keyfile is None else ""
        raise ValueError(f"cannot use {holder}: no private key in it{missing}")
    if "ENCRYPTED" in key:
        raise ValueError(f"cannot use {holder}: it has a pass phrase; give a key without one")
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_pass_phrase)
    except (ssl.SSLError, OSError) as error:
        named = shown(certfile)
        if "MISMATCH" in str(getattr(error, "reason", None)):  # KEY_VALUES_MISMATCH, KEY_TYPE_MISMATCH
            raise ValueError(f"cannot use the certificate {named}: the key does not match it") from None
        if keyfile is None:
            raise ValueError(f"cannot use the certificate {named}: a PEM block in it is damaged") from None
        raise ValueError(
            f"cannot use the certificate {named} with the key {shown(keyfile)}:"
            " a PEM block in one of them is damaged"
        ) from None


def _no_pass_phrase() -> bytes:
    """OpenSSL's question for a key's pass phrase: never asked on the terminal."""
    raise ssl.SSLError("the key has a pass phrase")
