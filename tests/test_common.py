"""The shared pieces on their own: pure functions, the sender's stop, imports."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import OP_CLOSE, OP_TEXT, ROOT, decode_frames, open_client

import sync_server
import wsthreads
from common import message_text, send_messages
from wsthreads.closing import Closed, close_reason, describe_close, sendable_code
from wsthreads.connection import Connection


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket]]:
    """A server-side Connection over a real socketpair, and the raw other end."""
    ours, theirs = socket.socketpair()
    conn = Connection(ours, client=False)
    conn.start()
    theirs.settimeout(5)
    yield conn, theirs
    conn.abort()
    conn.wait_closed()
    theirs.close()


def test_message_text_carries_its_sequence_number() -> None:
    assert message_text("server", 3, 5) == "server message 3 of 5"


@pytest.mark.parametrize(
    "code, reason, text",
    [
        (1000, "", "1000 (normal closure)"),
        (1001, "bye", "1001 (going away) 'bye'"),
        (4000, "", "4000 (application code)"),
        (1006, "", "1006 (connection lost)"),
    ],
)
def test_describe_close(code: int, reason: str, text: str) -> None:
    assert describe_close(code, reason) == text


def test_close_reasons_are_cut_to_123_bytes_and_1005_1006_never_sent() -> None:
    assert len(close_reason("é" * 100).encode()) <= 123
    assert close_reason("é" * 100).encode().decode()  # never cut mid-character
    assert sendable_code(1005) == sendable_code(1006) == 1000
    assert sendable_code(4001) == 4001


def read_frames(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    data = b""
    while len(decode_frames(data)) < count:
        data += sock.recv(65536)
    return decode_frames(data)


def test_sender_sends_count_messages_in_order(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    send_messages(conn, 3, 0, "client")
    assert read_frames(peer, 3) == [(OP_TEXT, f"client message {i} of 3".encode()) for i in (1, 2, 3)]


def test_stop_interrupts_the_senders_sleep_at_once(pair: tuple[Connection, socket.socket]) -> None:
    """Shutdown never waits out an interval: stop.set() wakes the sender."""
    conn, peer = pair
    sender = threading.Thread(target=send_messages, args=(conn, 5, 60.0, "x"))
    sender.start()
    assert read_frames(peer, 1) == [(OP_TEXT, b"x message 1 of 5")]
    started = time.monotonic()
    conn.stop.set()
    sender.join(5)
    assert not sender.is_alive()
    assert time.monotonic() - started < 0.5


def test_close_is_idempotent_and_stops_sends(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    conn.close(1001, "bye")
    conn.close(1000)
    frames = read_frames(peer, 1)
    assert frames == [(OP_CLOSE, b"\x03\xe9bye")]
    with pytest.raises(Closed):
        conn.send("too late")
    assert conn.stop.is_set()


def test_importing_the_programs_has_no_side_effects() -> None:
    """Importing starts no thread, opens no socket, touches no logging or signal setup."""
    code = """
import logging, signal, threading
before = (threading.active_count(), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
import common, sync_server, sync_client, wsthreads
after = (threading.active_count(), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
assert before == after, (before, after)
assert logging.getLogger().handlers == []
app = sync_server.create_app()
assert callable(app) and app.connections() == []
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_an_echo_session_makes_neither_queue() -> None:
    """wsthreads.Echo answers in on_message with send(): after round trips its connection holds
    no inbox and no outbox (they are made on first use: ~9 KiB of objects per connection)."""
    seen: list[Connection] = []
    app = sync_server.create_app(echo=True)
    with wsthreads.start_server(app, "127.0.0.1", 0) as server:
        sock = open_client(server.port)
        try:
            for n in range(3):
                sock.sendall(b"\x81\x82" + bytes(4) + f"m{n}".encode())  # masked (zero key) text
                assert read_frames(sock, 1) == [(OP_TEXT, f"m{n}".encode())]
            seen.extend(app.connections())
            assert len(seen) == 1 and seen[0]._inbox is None and seen[0]._outbox is None
        finally:
            sock.close()


@pytest.mark.slow
def test_queues_made_after_the_end_behave_as_if_made_before(pair: tuple[Connection, socket.socket]) -> None:
    """The first recv() after the session ended raises how it ended; the first send_nowait()
    after a close is refused, and flush() has nothing to wait for."""
    conn, peer = pair
    conn.close(1000, "done")
    assert conn.send_nowait("late") is False and conn.flush(0.1) is True
    peer.sendall(b"\x88\x82" + bytes(4) + b"\x03\xe8")  # the answering close, 1000
    assert conn.done.wait(5)
    assert conn._inbox is None
    with pytest.raises(Closed) as ended:
        conn.recv(timeout=1)
    assert ended.value.code == 1000
