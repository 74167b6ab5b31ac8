"""Handshakes the server must refuse, cleanly, and the limits on who may connect."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from helpers import OP_TEXT, SERVER, Program, RawPeer, ServerProgram, wait_until

import wsthreads
from wsthreads.handshake import origin_allowed

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = {
    "Host": "127.0.0.1",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def raw_request(port: int, head: str) -> bytes:
    """Send a raw HTTP request; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def request(port: int, method: str = "GET", version: str = "HTTP/1.1", **changes: str | None) -> bytes:
    fields = {**GOOD, **changes}
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in fields.items() if v is not None)
    return raw_request(port, f"{method} /ws {version}\r\n{lines}\r\n")


@pytest.mark.parametrize(
    "method, version, changes, status",
    [
        ("POST", "HTTP/1.1", {}, b"405"),
        ("GET", "HTTP/1.0", {}, b"400"),
        ("GET", "HTTP/1.1", {"Sec-WebSocket-Version": "8"}, b"426"),
        ("GET", "HTTP/1.1", {"Sec-WebSocket-Version": None}, b"426"),
        ("GET", "HTTP/1.1", {"Sec-WebSocket-Key": None}, b"400"),
        ("GET", "HTTP/1.1", {"Sec-WebSocket-Key": "not base64!"}, b"400"),
        ("GET", "HTTP/1.1", {"Sec-WebSocket-Key": "c2hvcnQ="}, b"400"),
        ("GET", "HTTP/1.1", {"Origin": "https://evil.example"}, b"403"),
        ("GET", "HTTP/1.1", {"Origin": "http://["}, b"403"),  # not a URL: refused, not a 500
    ],
)
@pytest.mark.slow
def test_bad_handshakes_get_a_clean_4xx(
    start_server: Callable[..., ServerProgram],
    method: str,
    version: str,
    changes: dict[str, str | None],
    status: bytes,
) -> None:
    """Each malformed or unwelcome handshake: its 4xx status and a one-line body, no session."""
    server = start_server()
    answer = request(server.port, method, version, **changes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == status, answer
    assert body.count(b"\n") == 1, body
    if status == b"426":
        assert b"Sec-WebSocket-Version: 13" in head
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    "framing, body",
    [
        ("Content-Length: 10\r\n", b"\x81\x84\x00\x00\x00\x00BODY"),  # a masked frame, hidden as a body
        ("Content-Length: 7\r\n", b"a=1&b=2"),
        ("Transfer-Encoding: chunked\r\n", b"4\r\nBODY\r\n0\r\n\r\n"),
    ],
)
@pytest.mark.slow
def test_an_upgrade_with_a_body_is_refused(
    start_server: Callable[..., ServerProgram], framing: str, body: bytes
) -> None:
    """A body would be frames to us and a body to a proxy in front: 400, and no session."""
    server = start_server("--echo")
    head = "GET /ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in GOOD.items()) + framing + "\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert answer.endswith(b"a WebSocket handshake has no body\n")
    assert "connected" not in server.output() and "Traceback" not in server.output()


def test_absurdly_large_headers_get_a_4xx(start_server: Callable[..., ServerProgram]) -> None:
    server = start_server()
    answer = request(server.port, X_Big="x" * 70_000)
    assert answer.split()[1].startswith(b"4"), answer[:100]
    answer = raw_request(server.port, "GET /ws HTTP/1.1\r\n" + "X-A: b\r\n" * 200 + "\r\n")
    assert answer.split()[1].startswith(b"4"), answer[:100]
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    "origin, host, allowed, ok",
    [
        (None, "127.0.0.1:8080", (), True),  # not a browser
        ("http://127.0.0.1:8080", "127.0.0.1:8080", (), True),  # same origin
        ("http://localhost", "localhost:80", (), True),  # default ports
        ("https://localhost", "localhost:443", (), True),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", (), False),  # other port
        ("https://evil.example", "127.0.0.1:8080", (), False),
        ("null", "127.0.0.1:8080", (), False),  # a file: page
        ("https://app.example", "127.0.0.1:8080", ("https://app.example",), True),
        ("https://APP.example/", "127.0.0.1:8080", ("https://app.example",), True),
        ("https://evil.example", "127.0.0.1:8080", ("*",), True),
        ("http://[", "127.0.0.1:8080", (), False),  # urlsplit raises ValueError
        ("http://[::1", "[::1]:8080", (), False),
    ],
)
def test_origin_check(origin: str | None, host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok


def test_allowed_origin_option_widens_the_check(start_server: Callable[..., ServerProgram]) -> None:
    server = start_server("--allowed-origin", "https://app.example", "--count", "1")
    peer = RawPeer(server.port, headers={"Origin": "https://app.example"})
    assert peer.read_frame()[0] == OP_TEXT
    with pytest.raises(AssertionError, match="403"):
        RawPeer(server.port, headers={"Origin": "https://other.example"})


def test_same_origin_browser_request_is_accepted(start_server: Callable[..., ServerProgram]) -> None:
    server = start_server("--count", "1")
    peer = RawPeer(server.port, headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert peer.read_frame()[0] == OP_TEXT


def test_max_connections_refuses_with_503_and_leaves_sessions_alone(
    start_server: Callable[..., ServerProgram],
) -> None:
    server = start_server("--max-connections", "2", "--echo")
    first, second = RawPeer(server.port), RawPeer(server.port)
    with pytest.raises(AssertionError, match="503"):
        RawPeer(server.port)
    for peer in (first, second):
        peer.send(OP_TEXT, b"untouched")
        assert peer.read_frame() == (OP_TEXT, b"untouched")
    first.reset()
    # once a session has ended, its slot is free again
    assert wait_until(lambda: _can_connect(server.port))


def _can_connect(port: int) -> bool:
    try:
        RawPeer(port).close()
        return True
    except AssertionError:
        return False


@pytest.mark.slow
def test_client_that_never_finishes_its_request_is_dropped(
    start_server: Callable[..., ServerProgram],
) -> None:
    """--handshake-timeout: a half-sent request does not hold a thread for ever."""
    server = start_server("--handshake-timeout", "0.3")
    threads = server.threads()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        assert wait_until(lambda: server.threads() > threads)
        assert sock.recv(100) == b""  # the server hung up
    assert time.monotonic() - started < 5
    assert wait_until(lambda: server.threads() == threads)


@pytest.mark.slow
def test_request_timeout_does_not_apply_to_the_session(start_server: Callable[..., ServerProgram]) -> None:
    """A session stays open longer than --handshake-timeout, quiet or not."""
    server = start_server("--handshake-timeout", "0.2", "--echo", "--ping-interval", "0")
    peer = RawPeer(server.port)
    time.sleep(0.5)  # longer than the handshake timeout, on purpose: nothing to wait for
    peer.send(OP_TEXT, b"still open")
    assert peer.read_frame() == (OP_TEXT, b"still open")


@pytest.mark.parametrize(
    "origin, example",
    [
        ("example.com", "https://example.com"),
        ("example.com:8443", "https://example.com:8443"),
        ("https://example.com/app", "https://example.com"),
        ("http://[", "https://example.com"),
    ],
)
@pytest.mark.slow
def test_an_allowed_origin_no_browser_can_send_is_refused_at_start(origin: str, example: str) -> None:
    """Without its scheme (or with a path) an allowed origin never matches: every page would get 403."""
    line = (
        f"allowed origin {origin!r} can never match: a browser sends its scheme and host only,"
        f" e.g. {example!r}"
    )
    with pytest.raises(ValueError) as refused:
        wsthreads.ServerConfig(allowed_origins=(origin,))
    assert str(refused.value) == line
    server = Program(SERVER, "--allowed-origin", origin, "--port", "0")
    assert server.wait() == 2
    assert server.stderr == [f"sync_server.py: error: {line}"]


@pytest.mark.parametrize("origin", ["https://example.com", "http://localhost:3000", "*", "null"])
def test_allowed_origins_a_browser_can_send_are_taken(origin: str) -> None:
    assert wsthreads.ServerConfig(allowed_origins=(origin,)).allowed_origins == (origin,)
