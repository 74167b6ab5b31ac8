"""The client against servers that misbehave: one line, never a hang or a traceback."""

from __future__ import annotations

import socket
import struct

from helpers import OP_TEXT, RawServer, encode_frame, run_client


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
