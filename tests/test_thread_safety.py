"""Many threads sending on one connection: every message arrives whole, none interleaved."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest
import websocket
from helpers import ServerProgram, wait_until

from sync_server import create_app
from wsthreads import ClientConfig, Message, RunningServer, dial, start_server

THREADS, SENDS = 8, 500
FILLER = "x" * 8000  # big enough that one message takes several send() calls


def message(thread: int, number: int) -> str:
    return f"{thread}:{number}:{FILLER}"


def send_from_threads(send: Callable[[Message], None]) -> None:
    """THREADS threads each send SENDS numbered messages, all at once."""
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> None:
        start.wait()
        for number in range(SENDS):
            send(message(thread, number))

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def assert_all_intact(received: list[Message]) -> None:
    """4000 whole messages, and each thread's in the order it sent them."""
    assert len(received) == THREADS * SENDS
    numbers: dict[int, list[int]] = defaultdict(list)
    for text in received:
        assert isinstance(text, str)
        thread, number, filler = text.split(":")
        assert filler == FILLER
        numbers[int(thread)].append(int(number))
    assert all(numbers[t] == list(range(SENDS)) for t in range(THREADS))


@pytest.fixture
def quiet_server() -> Iterator[RunningServer]:
    """An in-process server whose sessions send nothing themselves."""
    with start_server(create_app(count=0, ping_interval=None), "127.0.0.1", 0) as server:
        yield server


def test_server_session_sends_from_8_threads(quiet_server: RunningServer) -> None:
    """8 threads x 500 sends on one server session reach the client as 4000 intact messages."""
    # websocket-client's own UTF-8 check runs at ~1 MB/s in pure Python.
    ws = websocket.create_connection(quiet_server.url, skip_utf8_validation=True)
    try:
        assert wait_until(lambda: len(quiet_server.app.connections()) == 1)
        (session,) = quiet_server.app.connections()
        sender = threading.Thread(target=send_from_threads, args=(session.send,))
        sender.start()
        received = [ws.recv() for _ in range(THREADS * SENDS)]
        sender.join()
    finally:
        ws.close()
    assert_all_intact(received)


def test_client_session_sends_from_8_threads(start_server: Callable[..., ServerProgram]) -> None:
    """8 threads x 500 sends on one client session: the echo server returns 4000 intact messages."""
    server = start_server("--echo", "--max-message-size", "0")
    received: list[Message] = []
    conn = dial(server.url, ClientConfig(max_message_size=None))
    conn.start(received.append)
    send_from_threads(conn.send)
    assert wait_until(lambda: len(received) >= THREADS * SENDS, timeout=30)
    conn.close()
    assert conn.wait_closed()
    assert_all_intact(received)
