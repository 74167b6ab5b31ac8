"""The client refuses what RFC 6455 says it must, where websocket-client alone would not."""

from __future__ import annotations

import re
import socket
import struct
import time

import pytest
from helpers import OP_CLOSE, OP_PING, OP_PONG, RawServer, accept_key, decode_frames, encode_frame, run_client

import wsthreads
from wsthreads.connection import Connection


class HandshakeServer(RawServer):
    """A one-connection server whose 101 answer the test writes, given the client's key."""

    def __init__(self, answer_for: object, script: object = None) -> None:
        self.answer_for = answer_for
        super().__init__(script or (lambda conn: None))  # type: ignore[arg-type]

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.IGNORECASE)
            assert key is not None
            conn.sendall(self.answer_for(key.group(1).decode()))  # type: ignore[operator]
            self.script(conn)


def switching(accept: str, extra: str = "") -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    ).encode()


def one_line(stderr: str, fragment: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], stderr


@pytest.mark.parametrize(
    "answer, problem",
    [
        (lambda key: switching(accept_key(key).swapcase()), "wrong Sec-WebSocket-Accept"),
        (lambda key: switching(accept_key(key), "Sec-WebSocket-Protocol: chat\r\n"), "subprotocol 'chat'"),
        (
            lambda key: switching(accept_key(key), "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
            "extension 'permessage-deflate'",
        ),
        (lambda key: b"HTTP/1.1 301 Moved Permanently\r\nLocation: ws://127.0.0.1:9/ws\r\n\r\n", "redirect"),
    ],
    ids=["accept-case", "subprotocol", "extension", "redirect"],
)
@pytest.mark.slow
def test_a_wrong_handshake_answer_fails_the_dial(answer: object, problem: str) -> None:
    server = HandshakeServer(answer)
    result = run_client("--url", server.url, "--count", "0", "--timeout", "3")
    assert result.returncode == 1
    one_line(result.stderr, problem)
    server.close()


@pytest.mark.parametrize(
    ("lines", "compression", "problem"),
    [
        (
            ["Sec-WebSocket-Extensions: x-never-offered", "Sec-WebSocket-Extensions: permessage-deflate"],
            "deflate",
            "extension 'x-never-offered' was never offered",
        ),
        (
            [
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover",
                "Sec-WebSocket-Extensions: permessage-deflate",
            ],
            "deflate",
            "permessage-deflate more than once",
        ),
        (
            ["Sec-WebSocket-Extensions: x-never-offered", "Sec-WebSocket-Extensions: "],
            None,
            "extension 'x-never-offered' was never offered",
        ),
        (["Sec-WebSocket-Extensions: ,"], None, "malformed Sec-WebSocket-Extensions"),
        (["Sec-WebSocket-Extensions: ,"], "deflate", "malformed Sec-WebSocket-Extensions"),
        (
            ["Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: chat"],
            None,
            "header 'sec-websocket-protocol' came more than once",
        ),
    ],
    ids=[
        "unoffered-first",
        "deflate-twice",
        "unoffered-then-empty",
        "empty-list",
        "empty-list-offered",
        "protocol-twice",
    ],
)
def test_every_line_of_a_header_the_server_sends_twice_is_checked(
    lines: list[str], compression: str | None, problem: str
) -> None:
    """websocket-client keeps the last line of a repeated header; the check sees them all."""
    server = HandshakeServer(lambda key: switching(accept_key(key), "".join(f"{line}\r\n" for line in lines)))
    config = wsthreads.ClientConfig(compression=compression, subprotocols=("chat",), timeout=5)
    with pytest.raises(wsthreads.ConnectError) as raised:
        wsthreads.dial(server.url, config)
    assert problem in str(raised.value) and "answered the handshake wrongly" in str(raised.value)
    assert not raised.value.retryable
    server.close()


def lf_switching(accept: str, *lines: str) -> bytes:
    """A 101 whose lines end in a bare LF, which websocket-client reads as lines too."""
    head = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
    return "\n".join([*head, f"Sec-WebSocket-Accept: {accept}", *lines, "", ""]).encode()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (
            lambda key: lf_switching(accept_key(key), "Sec-WebSocket-Extensions: x-never-offered"),
            "extension 'x-never-offered' was never offered",
        ),
        (
            lambda key: lf_switching("garbage", f"Sec-WebSocket-Accept: {accept_key(key)}"),
            "header 'sec-websocket-accept' came more than once",
        ),
        (
            lambda key: switching(accept_key(key), "Sec-WebSocket-Protocol : chat\r\n"),
            "malformed header line 'Sec-WebSocket-Protocol : chat'",
        ),
    ],
    ids=["lf-unoffered-extension", "lf-accept-twice", "space-before-colon"],
)
def test_the_checks_read_the_lines_websocket_client_read(answer: object, problem: str) -> None:
    server = HandshakeServer(answer)
    config = wsthreads.ClientConfig(compression="deflate", subprotocols=("chat",), timeout=5)
    with pytest.raises(wsthreads.ConnectError) as raised:
        wsthreads.dial(server.url, config)
    assert problem in str(raised.value) and not raised.value.retryable
    server.close()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (lambda key: switching(accept_key(key), "X-A: a\r\n continued\r\n"), "Invalid header"),  # obs-fold
        (lambda key: switching(accept_key(key)).replace(b"\r\n\r\n", b"\r\nX-A: \xff\xfe\r\n\r\n"), "header"),
        (lambda key: b"\r\n" + switching(accept_key(key)), "no HTTP status line"),
    ],
    ids=["obs-fold", "not-utf8", "empty-first-line"],
)
def test_an_answer_websocket_client_cannot_read_is_one_line_and_final(answer: object, problem: str) -> None:
    server = HandshakeServer(answer)
    with pytest.raises(wsthreads.ConnectError) as raised:
        wsthreads.dial(server.url, wsthreads.ClientConfig(timeout=5))
    assert problem in str(raised.value) and "answered the handshake wrongly" in str(raised.value)
    assert not raised.value.retryable and "\n" not in str(raised.value)
    server.close()


EXTENSION = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits="


@pytest.mark.parametrize(
    ("answer", "bits"),
    [
        (lambda key: lf_switching(accept_key(key), f"{EXTENSION}11"), 11),
        # RFC 6455 9.1: a header's lines are one list (here an empty one, then the extension).
        (lambda key: switching(accept_key(key), f"Sec-WebSocket-Extensions: \r\n{EXTENSION}10\r\n"), 10),
    ],
    ids=["bare-lf-lines", "two-lines"],
)
def test_the_agreement_is_read_from_the_lines_websocket_client_read(answer: object, bits: int) -> None:
    server = HandshakeServer(answer)
    conn = wsthreads.dial(server.url, wsthreads.ClientConfig(compression="deflate", timeout=5))
    try:
        assert conn.compression is not None and conn.compression.receive_window_bits == bits
    finally:
        conn.abort()
        conn.start()
        conn.wait_closed()
        server.close()


def frames_until_eof(conn: socket.socket) -> list[tuple[int, bytes]]:
    conn.settimeout(5)
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except OSError:
        pass
    return decode_frames(data)


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(OP_PING, b"p" * 126, mask=False),  # a control frame over 125 bytes
        encode_frame(OP_CLOSE, struct.pack("!H", 1000), fin=False, mask=False),  # a fragmented close
    ],
    ids=["ping-126-bytes", "fragmented-close"],
)
@pytest.mark.slow
def test_an_illegal_control_frame_gets_1002_and_no_answer(frame: bytes) -> None:
    seen: list[list[tuple[int, bytes]]] = []

    def script(conn: socket.socket) -> None:
        conn.sendall(frame)
        seen.append(frames_until_eof(conn))

    server = HandshakeServer(lambda key: switching(accept_key(key)), script)
    result = run_client("--url", server.url, "--count", "0", "--timeout", "3")
    server.close()
    assert result.returncode == 1
    one_line(result.stderr, "closing with 1002 (protocol error)")
    (frames,) = seen
    assert [opcode for opcode, _ in frames] == [OP_CLOSE]
    assert frames[0][1][:2] == struct.pack("!H", 1002)
    assert OP_PONG not in [opcode for opcode, _ in frames]


@pytest.mark.parametrize("payload", [b"x" * 1000, b""], ids=["with-payload", "header-alone"])
@pytest.mark.slow
def test_a_frame_announcing_a_huge_message_gets_1009_before_its_payload(payload: bytes) -> None:
    """A header announcing 2**40 bytes (with or without payload after it): 1009 at once, nothing buffered."""
    seen: list[list[tuple[int, bytes]]] = []

    def script(conn: socket.socket) -> None:
        conn.sendall(bytes([0x82, 127]) + struct.pack("!Q", 1 << 40) + payload)
        seen.append(frames_until_eof(conn))

    server = HandshakeServer(lambda key: switching(accept_key(key)), script)
    started = time.monotonic()
    result = run_client("--url", server.url, "--count", "0", "--timeout", "3")
    server.close()
    assert time.monotonic() - started < 5
    one_line(result.stderr, "closing with 1009 (message too big) 'message over 1048576 bytes'")
    (frames,) = seen
    assert frames[0][0] == OP_CLOSE and frames[0][1][:2] == struct.pack("!H", 1009)


@pytest.mark.parametrize("code, sent", [(1005, 1000), (1006, 1000), (4000, 4000)])
@pytest.mark.slow
def test_close_never_sends_1005_or_1006_and_cuts_long_reasons(code: int, sent: int) -> None:
    ours, theirs = socket.socketpair()
    conn = Connection(ours, client=True, close_timeout=0.3)
    conn.start()
    conn.close(code, "why " * 100)
    frames = frames_until_eof(theirs)
    conn.wait_closed()
    theirs.close()
    assert frames[0][0] == OP_CLOSE
    payload = frames[0][1]
    assert struct.unpack("!H", payload[:2])[0] == sent
    assert len(payload) <= 125


@pytest.mark.slow
def test_a_frame_in_the_same_write_as_the_101_is_not_lost() -> None:
    """Guards a dependency's private behaviour: websocket-client reads the 101 one byte at a time.

    So nothing of what follows the response is left in its buffers, and our
    reader, which takes the socket over after the dial, sees every frame. If
    this fails after an upgrade of websocket-client, it has begun to read
    ahead: hand what it buffered to the Connection as ``pending`` (as the
    server side does with the HTTP server's read-ahead), or pin the version.
    """
    server = RawServer(lambda sock: time.sleep(0.5), behind=bytes([0x81, 5]) + b"first")
    try:
        conn = wsthreads.dial(server.url)
        conn.start()
        try:
            assert conn.recv(timeout=5) == "first"
        finally:
            conn.abort()
    finally:
        server.close()
