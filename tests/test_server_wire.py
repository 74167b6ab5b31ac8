"""The server as seen on the wire: HTTP answers, echo, close handshake bytes."""

from __future__ import annotations

import http.client
import os
from collections.abc import Callable

import pytest
from helpers import OP_BINARY, OP_CLOSE, OP_TEXT, RawPeer, ServerProgram, close_payload
from helpers import websocket_client as connect


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_plain_get_on_ws_path_gets_400_with_one_line(start_server: Callable[..., ServerProgram]) -> None:
    """GET /ws without an upgrade: 400 and a one-line explanation."""
    server = start_server()
    status, body = http_get(server.port, "/ws")
    assert status == 400
    assert body.count(b"\n") == 1 and b"WebSocket" in body


def test_other_paths_get_404(start_server: Callable[..., ServerProgram]) -> None:
    """Any path but /ws: 404, for plain GETs and upgrade attempts alike."""
    server = start_server()
    assert http_get(server.port, "/index.html")[0] == 404
    assert http_get(server.port, "/wsx")[0] == 404
    with pytest.raises(AssertionError, match="404"):
        RawPeer(server.port, path="/other")


@pytest.mark.parametrize("payload", ["hello", "", "x" * 70_000])
@pytest.mark.slow
def test_echo_keeps_text_as_text(start_server: Callable[..., ServerProgram], payload: str) -> None:
    """--echo sends text back as a text frame, unchanged."""
    server = start_server("--echo")
    peer = RawPeer(server.port)
    peer.send(OP_TEXT, payload.encode())
    assert peer.read_frame() == (OP_TEXT, payload.encode())
    peer.close()


def test_echo_round_trips_1_mib_binary_byte_for_byte(start_server: Callable[..., ServerProgram]) -> None:
    """A 1 MiB binary message comes back as binary, byte for byte."""
    server = start_server("--echo")
    data = os.urandom(1 << 20)
    ws = connect(server.url)
    try:
        ws.send_binary(data)
        opcode, echoed = ws.recv_data()
        assert opcode == OP_BINARY
        assert echoed == data
        ws.send("and text after it")
        assert ws.recv() == "and text after it"
    finally:
        ws.close()
    server.wait_for(r"received: <binary message, 1048576 bytes>")


def test_echo_sends_nothing_of_its_own(start_server: Callable[..., ServerProgram]) -> None:
    """In echo mode the server only answers: one message in, one message out."""
    server = start_server("--echo", "--count", "3", "--interval", "0")
    peer = RawPeer(server.port)
    peer.send(OP_TEXT, b"only this")
    peer.send(OP_CLOSE, close_payload(1000))
    frames, _ = peer.read_until_close()
    assert frames[:-1] == [(OP_TEXT, b"only this")]


def test_no_bytes_after_the_close_handshake_when_client_closes(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Client closes: server answers 1000, then EOF, with no HTTP response behind it."""
    server = start_server("--count", "2", "--interval", "0")
    peer = RawPeer(server.port)
    assert peer.read_frame() == (OP_TEXT, b"server message 1 of 2")
    assert peer.read_frame() == (OP_TEXT, b"server message 2 of 2")
    peer.send(OP_CLOSE, close_payload(1000, "bye"))
    _frames, payload = peer.read_until_close()
    assert payload[:2] == b"\x03\xe8"
    assert peer.rest_until_eof() == b""
    peer.close()


@pytest.mark.slow
def test_no_bytes_after_the_close_handshake_when_server_shuts_down(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Server closes with 1001 on shutdown, the client answers, then EOF and nothing else."""
    server = start_server("--count", "1", "--interval", "0")
    peer = RawPeer(server.port)
    assert peer.read_frame()[0] == OP_TEXT
    server.signal()
    _frames, payload = peer.read_until_close()
    assert payload[:2] == (1001).to_bytes(2, "big")
    peer.send(OP_CLOSE, payload[:2])
    assert peer.rest_until_eof() == b""
    assert server.wait() == 0


@pytest.mark.slow
def test_peer_that_never_answers_the_close_is_dropped(start_server: Callable[..., ServerProgram]) -> None:
    """Shutdown is bounded even if a client never answers the close frame."""
    server = start_server("--count", "1", "--interval", "0")
    peer = RawPeer(server.port)
    assert peer.read_frame()[0] == OP_TEXT
    server.signal()
    _frames, _ = peer.read_until_close()
    assert peer.rest_until_eof() == b""  # EOF without our close reply
    assert server.wait(timeout=5) == 0


def test_client_vanishing_is_one_line_and_server_keeps_serving(
    start_server: Callable[..., ServerProgram],
) -> None:
    """A client reset mid-session: one clear line on stderr, and the next client is served."""
    server = start_server("--count", "100", "--interval", "0.05")
    peer = RawPeer(server.port)
    assert peer.read_frame()[0] == OP_TEXT
    peer.reset()
    server.wait_for(r"\[conn-1-reader\] connection lost", stream="stderr")
    assert len(server.stderr) == 1, server.output()

    ws = connect(server.url)
    try:
        assert ws.recv() == "server message 1 of 100"
    finally:
        ws.close()
    assert "Traceback" not in server.output()


def test_bytes_pipelined_after_a_tcp_reset_do_not_break_the_server(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Half a frame and a reset: the server logs it and keeps serving."""
    server = start_server("--echo")
    peer = RawPeer(server.port)
    peer.sock.sendall(b"\x81\xfe\x10")  # a text frame header cut short
    peer.reset()
    server.wait_for(r"connection lost", stream="stderr")
    ws = connect(server.url)
    try:
        ws.send("still here")
        assert ws.recv() == "still here"
    finally:
        ws.close()
    assert "Traceback" not in server.output()
