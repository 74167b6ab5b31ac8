"""The client against servers that misbehave: one line, never a hang or a traceback."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest
from helpers import (
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawServer,
    ServerProgram,
    decode_frames,
    encode_frame,
    run_client,
)

import wsthreads


def test_server_vanishing_mid_session_is_one_line_and_exit_1() -> None:
    """The server resets the connection after one message: one line on stderr, exit 1."""

    def vanish(conn: socket.socket) -> None:
        conn.sendall(encode_frame(OP_TEXT, b"hello", mask=False))
        conn.recv(4096)  # the client's first message
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = RawServer(vanish)
    result = run_client("--url", server.url, "--count", "3", "--interval", "0.2")
    server.close()
    assert result.returncode == 1
    assert "received: hello" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "connection lost" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_server_closing_with_1000_ends_the_client_with_status_0() -> None:
    """The server says goodbye first: the client answers and exits 0."""
    replies: list[bytes] = []

    def goodbye(conn: socket.socket) -> None:
        conn.sendall(encode_frame(0x8, struct.pack("!H", 1000) + b"done", mask=False))
        replies.append(conn.recv(4096))

    server = RawServer(goodbye)
    result = run_client("--url", server.url, "--count", "0")
    server.close()
    assert result.returncode == 0, result.stderr
    assert "peer closed the connection: 1000 (normal closure) 'done'" in result.stdout
    assert replies[0][0] == 0x88  # a close frame came back


def one_line(stderr: str, fragment: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], stderr
    assert "Traceback" not in stderr


def nothing(conn: socket.socket) -> None:
    """A script that does nothing more after the handshake."""


@pytest.mark.parametrize("status", [b"403 Forbidden", b"404 Not Found", b"500 Internal Server Error"])
@pytest.mark.slow
def test_http_error_instead_of_101_names_the_status(status: bytes) -> None:
    server = RawServer(nothing, answer=b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    result = run_client("--url", server.url)
    server.close()
    assert result.returncode == 1
    one_line(result.stderr, f"HTTP {status.decode()}")


def test_a_plain_web_server_is_told_apart_from_a_refusal() -> None:
    """A server that answers 200 (any web page) did not upgrade: the line says so, exactly."""
    server = RawServer(nothing, answer=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    result = run_client("--url", server.url)
    server.close()
    assert result.returncode == 1
    assert result.stderr == (
        f"sync_client.py: error: {server.url} answered like a plain web server (HTTP 200 OK) and did"
        " not upgrade: is this a WebSocket endpoint?\n"
    )


def test_wss_to_a_plain_server_says_it_does_not_speak_tls(
    start_server: Callable[..., ServerProgram],
) -> None:
    """wss:// to a ws:// server: not OpenSSL's WRONG_VERSION_NUMBER, but what happened and what to try."""
    server = start_server("--count", "0")
    secure = server.url.replace("ws://", "wss://")
    result = run_client("--url", secure)
    assert result.returncode == 1
    assert result.stderr == (
        f"sync_client.py: error: {secure}: the server does not speak TLS on that port; try {server.url}\n"
    )


def test_wrong_accept_key_is_refused() -> None:
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: d3Jvbmcgd3Jvbmcgd3Jvbmc=\r\n\r\n"
    )
    server = RawServer(nothing, answer=answer)
    result = run_client("--url", server.url)
    server.close()
    assert result.returncode == 1
    one_line(result.stderr, "answered the handshake wrongly")


def closing_reply(frames: bytes) -> Callable[[socket.socket], None]:
    """A script: send ``frames``, then record the client's close frame."""

    def script(conn: socket.socket) -> None:
        conn.sendall(frames)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        replies.append(data)

    replies: list[bytes] = []
    script.replies = replies  # type: ignore[attr-defined]
    return script


def close_code_sent(data: bytes) -> int:
    """The code in the client's (masked) close frame within ``data``."""
    payload = next(payload for opcode, payload in decode_frames(data) if opcode == 0x8)
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


@pytest.mark.slow
def test_a_broken_frame_from_the_server_gets_its_close_code_and_one_line() -> None:
    """The client fails the session with 1002, one line on stderr, exit 1.

    Which code each broken rule gets on the client's side is test_frames.py's
    test_a_masked_server_frame_is_refused_by_the_client and
    test_the_client_parser_keeps_the_same_rules.
    """
    script = closing_reply(encode_frame(OP_TEXT, b"hidden", mask=True))  # a server frame must not be
    server = RawServer(script)
    result = run_client("--url", server.url, "--count", "0", "--timeout", "3")
    server.close()
    assert result.returncode == 1
    one_line(result.stderr, "masked frame")
    assert close_code_sent(script.replies[0]) == 1002  # type: ignore[attr-defined]


@pytest.mark.slow
def test_server_that_never_closes_is_left_in_bounded_time() -> None:
    """No close reply ever comes: the client closes, waits a bounded time, and exits."""

    took: list[float] = []

    def deaf(conn: socket.socket) -> None:
        """Timed from the server's side, so the client interpreter's start does not count."""
        started = time.monotonic()
        while conn.recv(4096):
            pass
        took.append(time.monotonic() - started)

    server = RawServer(deaf)
    result = run_client("--url", server.url, "--count", "1", "--linger", "0.2")
    server.close()
    assert took and took[0] < 3, took  # linger 0.2 s, the close's 1 s, a margin
    assert result.returncode == 0, result.stderr
    one_line(result.stderr, "did not answer the close")


def test_server_pings_are_answered() -> None:
    """Pings from the server get pongs with the same payload."""
    pongs: list[bytes] = []

    def pinger(conn: socket.socket) -> None:
        conn.sendall(encode_frame(OP_PING, b"one", mask=False) + encode_frame(OP_PING, b"two", mask=False))
        data = b""
        while len(decode_frames(data)) < 2:
            data += conn.recv(4096)
        pongs.extend(payload for opcode, payload in decode_frames(data) if opcode == OP_PONG)
        conn.sendall(encode_frame(0x8, struct.pack("!H", 1000), mask=False))

    server = RawServer(pinger)
    result = run_client("--url", server.url, "--count", "0", "--linger", "5")
    server.close()
    assert result.returncode == 0, result.stderr
    assert pongs == [b"one", b"two"]


def test_a_redirect_is_one_line_and_final() -> None:
    """Guards a dependency's words: websocket-client reports a redirect only as 'Redirect limit exhausted'.

    ``describe_dial_error`` and ``is_retryable`` sort websocket-client's
    errors by the words "Redirect" and "Header" in them. If this fails after
    an upgrade, it words them otherwise: find the new words (or an exception
    class, if it has gained one) and sort by those.
    """
    server = RawServer(
        lambda sock: None, answer=b"HTTP/1.1 301 Moved Permanently\r\nLocation: ws://127.0.0.1:1/ws\r\n\r\n"
    )
    try:
        with pytest.raises(wsthreads.ConnectError) as failed:
            wsthreads.dial(server.url)
    finally:
        server.close()
    assert str(failed.value) == f"{server.url} answered with a redirect, which is not followed"
    assert not failed.value.retryable
