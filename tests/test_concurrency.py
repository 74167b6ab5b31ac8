"""Many clients at once, slow and broken ones among them, and nothing left behind."""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import OP_TEXT, RawPeer, ServerProgram, wait_until

from common import Sender
from wsthreads import Closed, WebSocketClient


def run_client(url: str, *, count: int, interval: float, linger: float, timeout: float) -> Closed:
    """One in-process client session, as sync_client.py runs it."""
    client = WebSocketClient(url, handler=Sender(count, interval, "client"), timeout=timeout)
    return client.run(linger=linger)


def run_clients(url: str, how_many: int, count: int = 3) -> list[int]:
    """``how_many`` in-process clients at once; the close code each ended with."""
    with ThreadPoolExecutor(max_workers=how_many) as pool:
        results = [
            pool.submit(run_client, url, count=count, interval=0.02, linger=0.3, timeout=10)
            for _ in range(how_many)
        ]
        return [future.result().code for future in results]


@pytest.mark.slow
def test_fifty_clients_at_once_all_complete(start_server: Callable[..., ServerProgram]) -> None:
    """50 simultaneous sessions: every client closes cleanly, the server saw all messages."""
    server = start_server("--count", "3", "--interval", "0.02")
    assert run_clients(server.url, 50) == [1000] * 50
    assert wait_until(lambda: server.count_lines(r"peer closed the connection: 1000") == 50)
    assert server.count_lines(r"received: client message \d of 3") == 150
    for n in (1, 2, 3):
        assert server.count_lines(f"received: client message {n} of 3") == 50
    assert server.stderr == []


@pytest.mark.slow
def test_stalled_and_unread_connections_do_not_delay_others(
    start_server: Callable[..., ServerProgram],
) -> None:
    """A TCP connection that never sends its request and a peer that never reads: others proceed."""
    server = start_server("--count", "200", "--interval", "0")
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"GET /ws HTTP/1.1\r\n")  # and nothing more
    deaf = RawPeer(server.port)  # the server sends it 200 messages it never reads
    try:
        assert run_clients(server.url, 10, count=1) == [1000] * 10
    finally:
        stalled.close()
        deaf.close()


@pytest.mark.slow
def test_threads_and_fds_return_to_baseline_after_100_clients(
    start_server: Callable[..., ServerProgram],
) -> None:
    """100 clients come and go (some vanish mid-session): thread and fd counts come back down."""
    server = start_server("--count", "2", "--interval", "0.01")
    threads, fds = server.threads(), server.fds()

    for _ in range(4):
        assert run_clients(server.url, 20, count=2) == [1000] * 20
    for _ in range(20):
        peer = RawPeer(server.port)
        assert peer.read_frame()[0] == OP_TEXT
        peer.reset()

    assert wait_until(lambda: server.threads() == threads), (server.threads(), threads)
    assert wait_until(lambda: server.fds() == fds), (server.fds(), fds)
    assert "Traceback" not in server.output()
