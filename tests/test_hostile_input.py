"""Protocol errors from a hostile or broken client: the RFC 6455 answer, nothing else breaks."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable

import pytest
from helpers import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    RawPeer,
    ServerProgram,
    close_payload,
    encode_frame,
    wait_until,
)
from helpers import websocket_client as connect

from wsthreads.closing import CloseCode


def assert_still_serving(server: ServerProgram) -> None:
    ws = connect(server.url)
    try:
        ws.send("still fine")
        assert ws.recv() == "still fine"
    finally:
        ws.close()


@pytest.mark.slow
def test_a_bad_frame_gets_its_close_code_and_the_next_client_is_served(
    start_server: Callable[..., ServerProgram],
) -> None:
    """A malformed frame ends that connection with its RFC code, on the wire; the server goes on.

    Which code each broken rule gets is test_frames.py's
    test_each_broken_rule_has_its_close_code (the parser, byte by byte).
    """
    server = start_server("--echo")
    peer = RawPeer(server.port)
    peer.sock.sendall(encode_frame(OP_TEXT, b"hi", mask=False))  # a client frame must be masked
    assert peer.close_code() == CloseCode.PROTOCOL_ERROR
    assert peer.rest_until_eof() == b""
    assert_still_serving(server)
    assert "Traceback" not in server.output()


def test_a_message_in_the_same_segment_as_a_bad_frame_is_still_delivered(
    start_server: Callable[..., ServerProgram],
) -> None:
    """One TCP segment, a good message then a broken rule: the message is echoed, then 1002."""
    server = start_server("--echo")
    peer = RawPeer(server.port)
    peer.sock.sendall(encode_frame(OP_TEXT, b"before the error") + encode_frame(0x3, b""))
    frames, payload = peer.read_until_close()
    assert frames[0] == (OP_TEXT, b"before the error")
    assert struct.unpack("!H", payload[:2])[0] == CloseCode.PROTOCOL_ERROR


def test_bytes_behind_a_close_frame_are_not_read(start_server: Callable[..., ServerProgram]) -> None:
    """A close frame is a peer's last: junk after it in the same segment does not turn 1000 into 1002."""
    server = start_server("--echo")
    peer = RawPeer(server.port)
    peer.sock.sendall(encode_frame(OP_CLOSE, close_payload(1000, "bye")) + encode_frame(0x3, b"junk"))
    assert peer.close_code() == 1000
    assert peer.rest_until_eof() == b""
    assert "protocol error" not in server.output()


def test_oversize_message_closes_with_1009(start_server: Callable[..., ServerProgram]) -> None:
    """One byte over --max-message-size: 1009, and the server did not wait for the whole message."""
    server = start_server("--echo", "--max-message-size", "1000")
    peer = RawPeer(server.port)
    peer.send(OP_BINARY, b"x" * 1000)
    assert peer.read_frame() == (OP_BINARY, b"x" * 1000)
    peer.send(OP_BINARY, b"x" * 1001)
    assert peer.close_code() == CloseCode.MESSAGE_TOO_BIG
    assert_still_serving(server)


def test_oversize_fragmented_message_closes_with_1009(start_server: Callable[..., ServerProgram]) -> None:
    """Fragments that add up past the limit: 1009 while they are still arriving."""
    server = start_server("--echo", "--max-message-size", "1000")
    peer = RawPeer(server.port)
    peer.send(OP_TEXT, b"a" * 600, fin=False)
    peer.send(OP_CONT, b"b" * 600, fin=False)
    assert peer.close_code() == CloseCode.MESSAGE_TOO_BIG


def test_text_limit_counts_bytes_not_characters(start_server: Callable[..., ServerProgram]) -> None:
    """400 three-byte characters are 1200 bytes: over a 1000-byte limit."""
    server = start_server("--echo", "--max-message-size", "1000")
    peer = RawPeer(server.port)
    peer.send(OP_TEXT, ("€" * 400).encode())
    assert peer.close_code() == CloseCode.MESSAGE_TOO_BIG


def test_1009_reaches_a_peer_still_sending_the_big_message(
    start_server: Callable[..., ServerProgram],
) -> None:
    """The server drains instead of resetting: the sender of a 4 MiB message still reads 1009."""
    server = start_server("--echo")
    ws = connect(server.url)
    try:
        ws.send_binary(os.urandom(4 << 20))
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == OP_CLOSE
        assert struct.unpack("!H", data[:2])[0] == CloseCode.MESSAGE_TOO_BIG
    finally:
        ws.close()


def test_frame_pipelined_behind_the_handshake_is_not_lost(start_server: Callable[..., ServerProgram]) -> None:
    """A client that sends its first frame in the same write as its request is still heard."""
    server = start_server("--echo")
    peer = RawPeer(server.port, pipelined=encode_frame(OP_TEXT, b"early bird"))
    assert peer.read_frame() == (OP_TEXT, b"early bird")


def test_pings_are_answered_with_the_same_payload(start_server: Callable[..., ServerProgram]) -> None:
    """A ping gets a pong carrying its payload."""
    server = start_server("--echo")
    peer = RawPeer(server.port)
    peer.send(OP_PING, b"are you there")
    assert peer.read_frame() == (0xA, b"are you there")


@pytest.mark.slow
def test_silent_client_is_dropped_after_missing_a_pong(start_server: Callable[..., ServerProgram]) -> None:
    """--ping-interval: a client that never answers pings is closed with 1011 and its threads freed."""
    server = start_server("--echo", "--ping-interval", "0.2")
    threads = server.threads()
    peer = RawPeer(server.port)
    started = time.monotonic()
    opcode, _ = peer.read_frame()
    assert opcode == OP_PING
    assert peer.close_code() == 1011
    assert time.monotonic() - started < 3
    server.wait_for(r"keepalive ping timeout", stream="stderr")
    peer.close()
    assert wait_until(lambda: server.threads() == threads)


def test_16_mib_message_arrives_whole_with_a_short_handshake_timeout(
    start_server: Callable[..., ServerProgram],
) -> None:
    """The request timeout is cleared on upgrade: a 16 MiB echo is not cut short."""
    server = start_server("--echo", "--max-message-size", str(32 << 20), "--handshake-timeout", "0.2")
    data = os.urandom(16 << 20)
    ws = connect(server.url)
    try:
        ws.send_binary(data)
        opcode, echoed = ws.recv_data()
        assert opcode == OP_BINARY and echoed == data
    finally:
        ws.close()
