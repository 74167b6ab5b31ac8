"""wss:// with certificates made at test time (trustme): both programs, and mistakes."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from helpers import SERVER, Program, ServerProgram, run_client

import wsthreads


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A private CA and a certificate for 127.0.0.1 and localhost: (certfile, cafile)."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, cafile = folder / "server.pem", folder / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    return str(certfile), str(cafile)


@pytest.mark.slow
def test_wss_session_with_a_private_ca(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """--certfile serves wss://; the client trusts it with --cafile and runs a full session."""
    certfile, cafile = pki
    server = start_server("--certfile", certfile, "--count", "2", "--interval", "0")
    assert server.url.startswith("wss://")
    result = run_client("--url", server.url, "--cafile", cafile, "--count", "2", "--linger", "0.3")
    assert result.returncode == 0, result.stderr
    assert "received: server message 2 of 2" in result.stdout
    server.wait_for(r"received: client message 2 of 2")


def test_untrusted_certificate_is_one_line(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """Without --cafile the system store does not know our CA: one line, exit 1."""
    server = start_server("--certfile", pki[0])
    result = run_client("--url", server.url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not trusted" in lines[0], result.stderr


@pytest.mark.slow
def test_plain_ws_client_on_the_tls_port(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """ws:// to a wss:// server: a clean error on both sides, and the server keeps serving."""
    certfile, cafile = pki
    server = start_server("--certfile", certfile, "--count", "1")
    result = run_client("--url", f"ws://127.0.0.1:{server.port}/ws", "--timeout", "3")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    server.wait_for(r"TLS handshake with 127\.0\.0\.1 failed", stream="stderr")
    assert "Traceback" not in server.output() + result.stderr
    good = run_client("--url", server.url, "--cafile", cafile, "--count", "1", "--linger", "0.2")
    assert good.returncode == 0, good.stderr


@pytest.mark.slow
def test_silent_tls_client_does_not_stall_the_acceptor(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """A client that connects and never starts TLS holds its own thread, not the server."""
    certfile, cafile = pki
    server = start_server("--certfile", certfile, "--count", "1")
    with socket.create_connection(("127.0.0.1", server.port)):
        good = run_client("--url", server.url, "--cafile", cafile, "--count", "1", "--linger", "0.2")
        assert good.returncode == 0, good.stderr


#: A certificate or key file OpenSSL could not read, and which of the two it was is not known.
DAMAGED = "a PEM block in one of them is damaged"


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of PEM files right and wrong: cert.pem alone, key.pem, both.pem, ca.pem, ..."""
    folder = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    issued.private_key_pem.write_to_path(str(folder / "key.pem"))
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(folder / "other-key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (folder / "encrypted-key.pem").write_bytes(encrypted)
    damaged = "-----BEGIN CERTIFICATE-----\nAAAA!!\n-----END CERTIFICATE-----\n"
    (folder / "damaged.pem").write_text((folder / "ca.pem").read_text() + damaged)
    (folder / "text.pem").write_text("not a certificate")
    (folder / "empty.pem").write_text("")
    (folder / "folder.pem").mkdir()
    os.mkfifo(folder / "pipe.pem")
    return folder


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (("missing.pem",), "cannot use the certificate {0}: No such file or directory"),
        (("text.pem",), "cannot use the certificate {0}: no PEM certificate in it"),
        (("cert.pem",), "cannot use the certificate {0}: no private key in it (give the key file too)"),
        (("cert.pem", "ca.pem"), "cannot use the key {1}: no private key in it"),
        (("cert.pem", "missing.pem"), "cannot use the key {1}: No such file or directory"),
        (
            ("cert.pem", "encrypted-key.pem"),
            "cannot use the key {1}: it has a pass phrase; give a key without one",
        ),
        (
            ("cert.pem", "other-key.pem"),
            "cannot use the certificate {0}: the key does not match it",
        ),
        (("pipe.pem",), "cannot use the certificate {0}: it is a pipe, not a file"),
        (
            ("damaged.pem", "key.pem"),
            "cannot use the certificate {0} with the key {1}: a PEM block in one of them is damaged",
        ),
    ],
)
@pytest.mark.slow
def test_an_unusable_certificate_is_one_line_naming_the_file(
    pem_files: Path, files: tuple[str, ...], problem: str
) -> None:
    """Each mistake its own words (OpenSSL says '[SSL] PEM lib' for all); no pass phrase prompt."""
    paths = [str(pem_files / name) for name in files]
    options = ["--certfile", paths[0], *(["--keyfile", paths[1]] if len(paths) > 1 else [])]
    server = Program(SERVER, "--port", "0", *options)
    assert server.wait() == 1
    assert server.stderr == [f"sync_server.py: error: {problem.format(*paths)}"]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("missing.pem", "No such file or directory"),
        ("empty.pem", "no PEM certificate in it"),
        ("text.pem", "no PEM certificate in it"),
        ("folder.pem", "Is a directory"),
        ("pipe.pem", "it is a pipe, not a file"),
        ("damaged.pem", "a certificate in it is damaged"),
    ],
)
@pytest.mark.slow
def test_unusable_cafile_is_named_before_any_dial(pem_files: Path, name: str, problem: str) -> None:
    """A --cafile that cannot be used is named at start, not taken for a network error.

    Port 9 (discard) has no server here: the line must come before any dial.
    """
    cafile = pem_files / name
    result = run_client("--url", "wss://127.0.0.1:9/ws", "--cafile", str(cafile))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"sync_client.py: error: cannot use the CA file {cafile}: {problem} (see --help)"
    ]


def test_a_path_that_would_break_the_line_is_shown_escaped(tmp_path: Path) -> None:
    forged = str(tmp_path / "x\nsync_client.py: error: FORGED")
    result = run_client("--url", "wss://127.0.0.1:9/ws", "--cafile", forged)
    assert result.stderr.splitlines() == [
        f"sync_client.py: error: cannot use the CA file {forged!r}: No such file or directory (see --help)"
    ]
    empty = run_client("--url", "wss://127.0.0.1:9/ws", "--cafile", "")
    assert "cannot use the CA file '': No such file or directory" in empty.stderr


def test_the_files_are_read_once_when_the_config_is_made(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str], tmp_path: Path
) -> None:
    """A CA file gone after ClientConfig() does not matter: its certificates were read then."""
    from wsthreads import ClientConfig, dial

    certfile, cafile = pki
    server = start_server("--certfile", certfile, "--count", "0")
    copy = tmp_path / "ca.pem"
    copy.write_text(Path(cafile).read_text())
    config = ClientConfig(cafile=str(copy))
    copy.unlink()
    conn = dial(server.url, config)
    conn.start()
    conn.close()
    assert conn.wait_closed(5) is not None


@pytest.mark.slow
def test_eight_threads_sending_over_wss_while_the_reader_receives(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """One TLS connection used by 8 senders and the reader at once: every echo comes back.

    OpenSSL's connection object is not thread-safe; without a lock around the
    non-blocking reads and writes this broke about one run in six
    ("[SSL: BAD_LENGTH] bad length", then 1006).
    """
    import os
    import queue
    import threading

    from wsthreads import WebSocketClient

    certfile, cafile = pki
    server = start_server("--certfile", certfile, "--echo", "--quiet", "--max-message-size", "0")
    sizes = [10, 200, 17000, 70000, 300000]
    # Room for every echo: they are read only after all 1200 are sent.
    with WebSocketClient(server.url, cafile=cafile, max_message_size=None, max_queue=8 * 150) as client:

        def worker(k: int) -> None:
            for i in range(150):
                client.send(os.urandom(sizes[(i + k) % len(sizes)]))

        workers = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        echoed: list[object] = []
        try:
            while len(echoed) < 8 * 150:
                echoed.append(client.messages.get(timeout=10))
        except queue.Empty:
            pass
    assert len(echoed) == 8 * 150
    assert client.closed is not None and client.closed.code == 1000


@pytest.mark.slow
def test_close_cuts_a_tls_handshake_short() -> None:
    """close() while the TLS handshake waits on a server that never answers: the dial ends at once."""
    import threading

    from helpers import assert_close_cuts_the_dial_short

    from wsthreads import WebSocketClient

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    client = WebSocketClient(f"wss://127.0.0.1:{listener.getsockname()[1]}/ws", timeout=30)
    assert_close_cuts_the_dial_short(client, after=0.5)
    listener.close()
    for sock in accepted:
        sock.close()


@pytest.mark.slow
def test_tls_clients_that_reset_at_once_get_one_line_each_and_no_traceback(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """A reset before or during the ClientHello: wrapping the socket already fails; that is one
    warning line, never socketserver's traceback, and the request's deadline is disarmed.

    The threads come back to what they were once the idle request threads end
    (5 s), well before an armed deadline (30 s) would have let go."""
    import struct

    from helpers import wait_until

    from wsthreads.pool import REQUEST_THREAD_IDLE

    server = start_server("--certfile", pki[0], "--handshake-timeout", "30")
    threads = server.threads()
    for i in range(40):
        sock = socket.create_connection(("127.0.0.1", server.port))
        if i % 2:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 39)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert wait_until(lambda: server.threads() == threads, timeout=REQUEST_THREAD_IDLE + 5), (
        server.threads(),
        threads,
    )
    assert "Traceback" not in server.output()


@pytest.fixture(scope="module")
def mutual_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A wss:// echo server that asks every client for a certificate from its CA: (url, folder)."""
    folder = tmp_path_factory.mktemp("mtls")
    ca, stranger = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    for issuer, name, file in (
        (ca, "127.0.0.1", "server"),
        (ca, "me@example.com", "client"),
        (stranger, "me@example.com", "other"),
    ):
        issuer.issue_cert(name).private_key_and_cert_chain_pem.write_to_path(str(folder / f"{file}.pem"))
    context = wsthreads.tls_context(str(folder / "server.pem"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(folder / "ca.pem"))
    server = wsthreads.start_server(wsthreads.create_app(echo=True), "127.0.0.1", 0, tls_context=context)
    try:
        yield server.url, folder
    finally:
        server.shutdown()


@pytest.mark.slow
def test_mutual_tls_from_the_command_line(mutual_tls: tuple[str, Path]) -> None:
    """--certfile shows our certificate: a whole session; none, or one from a stranger: one line, exit 1."""
    url, folder = mutual_tls
    dial = ("--url", url, "--cafile", str(folder / "ca.pem"), "--count", "1", "--linger", "0.3")
    good = run_client(*dial, "--certfile", str(folder / "client.pem"))
    assert good.returncode == 0, good.stderr
    assert "received: client message 1 of 1" in good.stdout  # the echo
    none = run_client(*dial)
    assert none.returncode == 1
    # TLS 1.3: the server's alert may come, or only its close.
    assert none.stderr.splitlines() in (
        [f"sync_client.py: error: {url} asks for a client certificate, and we showed none (see --certfile)"],
        [
            f"sync_client.py: error: {url} closed the connection during the handshake"
            " (does it ask for a client certificate? see --certfile)"
        ],
    )
    stranger = run_client(*dial, "--certfile", str(folder / "other.pem"))
    assert stranger.returncode == 1
    # TLS 1.3: the server's alert may come, or only its close.
    assert stranger.stderr.splitlines() in (
        [f"sync_client.py: error: {url} refused our client certificate: tlsv1 alert unknown ca"],
        [
            f"sync_client.py: error: {url} closed the connection during the handshake"
            " (did it refuse our client certificate?)"
        ],
    )


def test_an_ssl_context_of_your_own(mutual_tls: tuple[str, Path]) -> None:
    """ssl_context= instead of the files, e.g. a certificate loaded from elsewhere; not with them."""
    url, folder = mutual_tls
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    context.load_cert_chain(str(folder / "client.pem"))
    with wsthreads.WebSocketClient(url, ssl_context=context) as client:
        client.send("mine")
        assert client.recv(timeout=10) == "mine"
    with pytest.raises(ValueError, match="give ssl_context, or cafile, certfile and keyfile, not both"):
        wsthreads.ClientConfig(ssl_context=context, cafile=str(folder / "ca.pem"))
    with pytest.raises(wsthreads.ConnectError) as refused:
        wsthreads.dial(url, wsthreads.ClientConfig(cafile=str(folder / "ca.pem")))
    assert "client certificate" in str(refused.value)


def test_a_tls_1_2_server_that_asks_for_a_certificate_is_named_too(mutual_tls: tuple[str, Path]) -> None:
    """TLS 1.2 has no 'certificate required' alert: its handshake failure gets the same hint."""
    _, folder = mutual_tls
    context = wsthreads.tls_context(str(folder / "server.pem"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(folder / "ca.pem"))
    with wsthreads.start_server(
        wsthreads.create_app(echo=True), "127.0.0.1", 0, tls_context=context
    ) as server:
        result = run_client("--url", server.url, "--cafile", str(folder / "ca.pem"))
    hint = "(does it ask for a client certificate? see --certfile)"
    assert result.stderr.splitlines() == [
        f"sync_client.py: error: TLS handshake with {server.url} failed: handshake failure {hint}"
    ]


def test_client_file_options_are_checked_as_flags() -> None:
    result = run_client("--keyfile", "key.pem")
    assert (result.returncode, result.stderr) == (
        2,
        "sync_client.py: error: --keyfile needs --certfile (see --help)\n",
    )
    with pytest.raises(TypeError, match=r"ssl_context is an ssl\.SSLContext"):
        wsthreads.ClientConfig(ssl_context="ca.pem")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="certfile is the path of a PEM file"):
        wsthreads.ClientConfig(certfile=123)  # type: ignore[arg-type]
