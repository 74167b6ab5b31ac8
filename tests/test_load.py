"""Load with faults mixed in: nothing lost for the well-behaved, nothing leaked after."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import websocket
from helpers import OP_TEXT, RawPeer, ServerProgram, encode_frame, wait_until

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

CLIENTS, MESSAGES = 200, 100


def well_behaved(url: str, client: int) -> list[str]:
    """Send MESSAGES numbered messages one by one; the echoes, in arrival order."""
    ws = websocket.create_connection(url, timeout=30, skip_utf8_validation=True)
    try:
        echoes: list[str] = []
        for number in range(MESSAGES):
            ws.send(f"client {client} message {number}")
            echo = ws.recv()
            assert isinstance(echo, str)
            echoes.append(echo)
        return echoes
    finally:
        ws.close()


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def misbehave(port: int, rounds: int = 50) -> None:
    """Resets in the middle of a frame, and connections dropped before any request."""
    for _ in range(rounds):
        peer = RawPeer(port)
        peer.sock.sendall(encode_frame(OP_TEXT, b"x" * 1000)[:500])  # half a frame
        reset(peer.sock)
        reset(socket.create_connection(("127.0.0.1", port)))


def test_200_clients_x_100_messages_with_faults_alongside(start_server: Callable[..., ServerProgram]) -> None:
    """Every well-behaved client gets every message back in order; counts return to baseline."""
    server = start_server("--echo")
    threads, fds = server.threads(), server.fds()
    with ThreadPoolExecutor(max_workers=CLIENTS + 2) as pool:
        saboteurs = [pool.submit(misbehave, server.port) for _ in range(2)]
        clients = [pool.submit(well_behaved, server.url, c) for c in range(CLIENTS)]
        results = [future.result() for future in clients]
        for saboteur in saboteurs:
            saboteur.result()
    for client, echoes in enumerate(results):
        assert echoes == [f"client {client} message {n}" for n in range(MESSAGES)]
    assert wait_until(lambda: server.threads() == threads, timeout=20), (server.threads(), threads)
    assert wait_until(lambda: server.fds() == fds, timeout=20), (server.fds(), fds)
    assert "Traceback" not in server.output()


def test_burst_of_500_abrupt_connections_then_a_normal_session(
    start_server: Callable[..., ServerProgram],
) -> None:
    """500 connections opened and reset at once: the server shrugs, the next session is normal."""
    server = start_server("--echo")
    threads, fds = server.threads(), server.fds()
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(500)]
    for sock in socks:
        reset(sock)
    assert well_behaved(server.url, 0)[-1] == f"client 0 message {MESSAGES - 1}"
    assert wait_until(lambda: server.threads() == threads, timeout=20), (server.threads(), threads)
    assert wait_until(lambda: server.fds() == fds, timeout=20), (server.fds(), fds)
    assert "Traceback" not in server.output()
