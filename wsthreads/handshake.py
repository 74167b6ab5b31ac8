"""The opening handshake's checks: what a server refuses, and what a client must.

Pure functions, no I/O: the server asks :func:`check_request` whether a WSGI
request may become a session; the client asks :func:`check_response`
whether a server's 101 answers the request it sent (RFC 6455, 4.1 and 4.2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

#: RFC 6455, 1.3: appended to the key before hashing it for Sec-WebSocket-Accept.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Refusal(NamedTuple):
    """An HTTP answer instead of a session: status, one line of text, headers, and its cause.

    ``cause`` is one short word for a metric's label (``origin``,
    ``server-full``): the text may hold anything, the label only a few values.
    """

    status: str
    text: str
    headers: tuple[tuple[str, str], ...] = ()
    cause: str = "bad-request"


#: RFC 7230 3.2.6: the characters of a token (a subprotocol's name, a header's name).
TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_token(text: str) -> bool:
    """True if ``text`` may be a subprotocol name or a header name (an RFC 7230 token)."""
    return bool(text) and set(text) <= TOKEN_CHARS


def check_header(name: str, value: str, reserved: Mapping[str, str] | None = None) -> None:
    """A header we send must be ``token: printable ASCII`` (tabs too), and not one we set ourselves.

    No CR, LF or other control character can reach the wire: no header injection.
    ``reserved``: the (lower-case) names we set ourselves, each with who sets it.

    Raises:
        ValueError: one line: ``not a valid header name (an RFC 7230 token): 'X Token'``,
            ``the value of header 'X-Token' must be printable ASCII: '1\\r\\n'``, or
            ``header 'Upgrade' is set by the WebSocket handshake itself``.
    """
    if not is_token(name):
        raise ValueError(f"not a valid header name (an RFC 7230 token): {name!r}")
    if not isinstance(value, str) or not all(c == "\t" or " " <= c <= "~" for c in value):
        raise ValueError(f"the value of header {name!r} must be printable ASCII: {value!r}")
    setter = (reserved or {}).get(name.lower())
    if setter is not None:
        raise ValueError(f"header {name!r} is set by {setter}")


def subprotocol_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple of subprotocol names, each an RFC 7230 token.

    Raises:
        ValueError: ``not a valid subprotocol name (an RFC 7230 token): 'chat v2'``.
        TypeError: a single string: ``subprotocols is a sequence of names, e.g. ('chat',)``.
    """
    if isinstance(names, str):
        raise TypeError(f"subprotocols is a sequence of names, e.g. ({names!r},)")
    names = tuple(names)
    for name in names:
        if not (isinstance(name, str) and is_token(name)):
            raise ValueError(f"not a valid subprotocol name (an RFC 7230 token): {name!r}")
    return names


def new_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes in base64."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept that answers ``key`` (RFC 6455, 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def is_websocket_upgrade(environ: Mapping[str, Any]) -> bool:
    """True if the request asks to switch to WebSocket (RFC 6455, 4.2.1)."""
    upgrade = environ.get("HTTP_UPGRADE", "").lower()
    connection = environ.get("HTTP_CONNECTION", "").lower()
    return "websocket" in upgrade and "upgrade" in (t.strip() for t in connection.split(","))


def is_valid_key(key: str) -> bool:
    """A Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455, 4.1)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str] = ()) -> bool:
    """The origin check that stops cross-site WebSocket hijacking.

    A request without ``Origin`` comes from a program, not a browser page:
    allowed. A browser page may connect if it was served by this server (its
    origin's host:port is the request's Host) or its origin is listed in
    ``allowed`` (``*`` allows every origin).
    """
    if origin is None or "*" in allowed:
        return True
    if origin.rstrip("/").lower() in (a.rstrip("/").lower() for a in allowed):
        return True
    try:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or not host:
            return False
        default_port = 443 if parts.scheme == "https" else 80
        origin_port = parts.port or default_port
        host_parts = urlsplit(f"//{host}")
        host_port = host_parts.port or default_port
    except ValueError:
        return False
    return (parts.hostname, origin_port) == (host_parts.hostname, host_port)


def check_allowed_origin(origin: str) -> None:
    """Raise ValueError (one line) for an allowed origin no browser can send: it needs its scheme.

    A browser's ``Origin`` is ``scheme://host[:port]``, nothing more: ``example.com``
    or ``https://example.com/app`` would never match, and every page would get 403.
    """
    if origin in ("*", "null"):  # null: what a browser sends from a file or a sandboxed frame
        return
    try:
        parts = urlsplit(origin)
        if (
            parts.scheme
            and parts.hostname
            and parts.path in ("", "/")
            and not (parts.query or parts.fragment)
        ):
            return
        suggested = urlsplit(origin if "://" in origin else f"https://{origin}")
        example = f"{suggested.scheme}://{suggested.netloc or 'example.com'}"
    except ValueError:  # not even a URL (an unclosed IPv6 bracket)
        example = "https://example.com"
    raise ValueError(
        f"allowed origin {origin!r} can never match: a browser sends its scheme and host"
        f" only, e.g. {example!r}"
    )


def has_body(environ: Mapping[str, Any]) -> bool:
    """Whether the request says a body follows it (Transfer-Encoding, or a Content-Length but 0)."""
    length = environ.get("CONTENT_LENGTH", "").strip()
    return bool(environ.get("HTTP_TRANSFER_ENCODING")) or length not in ("", "0")


def check_request(
    environ: Mapping[str, Any], path: str, allowed_origins: Sequence[str] = ()
) -> Refusal | None:
    """Why this request may not become a session on endpoint ``path``, or None if it may."""
    if environ.get("PATH_INFO", "") != path:
        return Refusal(
            "404 Not Found", f"no such path; the WebSocket endpoint is {path}", cause="no-such-path"
        )
    if not is_websocket_upgrade(environ):
        return Refusal(
            "400 Bad Request",
            f"{path} speaks WebSocket only: send 'Connection: Upgrade' and 'Upgrade: websocket'",
            cause="not-an-upgrade",
        )
    if environ.get("REQUEST_METHOD") != "GET":
        return Refusal(
            "405 Method Not Allowed", "a WebSocket handshake is a GET", (("Allow", "GET"),), "not-get"
        )
    if environ.get("SERVER_PROTOCOL") not in ("HTTP/1.1", "HTTP/2", "HTTP/2.0", "HTTP/3"):
        return Refusal("400 Bad Request", "a WebSocket handshake needs HTTP/1.1", cause="not-http-1.1")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        return Refusal(
            "426 Upgrade Required",
            "only WebSocket version 13 is supported",
            (("Sec-WebSocket-Version", "13"),),
            "websocket-version",
        )
    if not is_valid_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")):
        return Refusal("400 Bad Request", "Sec-WebSocket-Key must be 16 bytes in base64", cause="bad-key")
    if has_body(environ):
        # The bytes after the request are the client's first frames; a body there
        # would be read as frames by us and as a body by a proxy in front.
        return Refusal("400 Bad Request", "a WebSocket handshake has no body", cause="has-body")
    if not origin_allowed(environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST"), allowed_origins):
        return Refusal("403 Forbidden", f"origin {environ.get('HTTP_ORIGIN')} is not allowed", cause="origin")
    return None


def response_fields(head: bytes) -> list[tuple[str, str]]:
    """Every header line of a response head, in order: lower-case names, values stripped.

    Lines are read as websocket-client reads them (a line ends at LF, whitespace around it
    dropped, the head ends at the first empty one), so that what it accepted is what is
    checked. A header may come on several lines, where a dict of them keeps only the last.

    Raises:
        ValueError: a line that is not ``name: value`` with a token for its name (RFC 7230
            allows no space before the colon): ``malformed header line 'X-Y : z'``.
    """
    fields = []
    for line in head.decode("utf-8", "replace").split("\n")[1:]:  # after the status line (UTF-8, as it reads)
        line = line.strip()
        if not line:
            break
        name, colon, value = line.partition(":")
        if not colon or not is_token(name):
            raise ValueError(f"malformed header line {line[:60]!r}")
        fields.append((name.lower(), value.strip()))
    return fields


#: Headers of a 101 that must come once (RFC 6455 4.1, 11.3.3): a second one is a wrong answer.
SINGLE_RESPONSE_HEADERS = ("sec-websocket-accept", "sec-websocket-protocol")


def repeated_header(fields: Sequence[tuple[str, str]]) -> str | None:
    """The first of :data:`SINGLE_RESPONSE_HEADERS` that ``fields`` hold more than once, if any."""
    names = [name for name, _ in fields]
    return next((name for name in SINGLE_RESPONSE_HEADERS if names.count(name) > 1), None)


def check_response(headers: Mapping[str, str], key: str, subprotocols: Sequence[str] = ()) -> str | None:
    """What is wrong with a server's 101 response to our ``key``, or None if nothing.

    ``headers`` have lower-case names. Stricter than websocket-client, which
    compares the accept value ignoring case (base64 is case-sensitive) and
    lets through a subprotocol the client never offered; RFC 6455, 4.1 says
    the client must fail the connection on each of those. The extensions
    are :func:`wsthreads.deflate.accept`'s to check.
    """
    if headers.get("sec-websocket-accept", "").strip() != accept_value(key):
        return "wrong Sec-WebSocket-Accept"
    protocol = headers.get("sec-websocket-protocol", "").strip()
    if protocol and protocol not in subprotocols:
        return f"subprotocol {protocol!r} was never offered"
    return None
