"""wsthreads.session over a real TCP pair: the lifecycle around a handler, with a raw peer.

The peer is a bare socket that writes masked frames (``helpers.encode_frame``)
and parses ours with ``frames.Parser``; no server, no handshake.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import OP_CLOSE, OP_TEXT, WAIT, encode_frame, wait_until

from wsthreads import frames
from wsthreads.closing import Closed
from wsthreads.connection import Connection, Message
from wsthreads.netpoller import Netpoller
from wsthreads.session import Echo, park_session, run_session


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, the peer's) ends of one TCP connection on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    peer.settimeout(WAIT)
    yield ours, peer
    peer.close()
    ours.close()


def connection(sock: socket.socket, **settings: object) -> Connection:
    return Connection(sock, client=False, name="conn-test-reader", close_timeout=2.0, **settings)  # type: ignore[arg-type]


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class Peer:
    """The peer's side: what it has read of our frames, and what it answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = frames.Parser(client=True, max_message_size=None)
        self.events: list[frames.Event] = []

    def send_text(self, text: str) -> None:
        self.sock.sendall(encode_frame(OP_TEXT, text.encode()))

    def close(self, code: int = 1000) -> None:
        self.sock.sendall(encode_frame(OP_CLOSE, close_payload(code)))

    def answer(self, code: int = 1000) -> None:
        """Answer our close frame, and end the TCP connection (else ours waits for it, bounded)."""
        self.close(code)
        self.sock.shutdown(socket.SHUT_WR)

    def until_close(self) -> frames.Close:
        """Read until our close frame; it."""
        while True:
            for event in self.events:
                if isinstance(event, frames.Close):
                    return event
            data = self.sock.recv(65536)
            assert data, f"EOF before a close frame; read {self.events}"
            self.events += self.parser.receive(data)

    def messages(self) -> list[object]:
        return [event for event in self.events if isinstance(event, (str, bytes))]

    def read_message(self) -> object:
        while not self.messages():
            data = self.sock.recv(65536)
            assert data, "EOF before a message"
            self.events += self.parser.receive(data)
        return self.messages()[0]


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """``target()`` in a thread of its own (the session's); its result, once it returns."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(target()), name="conn-test", daemon=True)
    thread.start()
    return thread, result


def test_a_function_handler_that_returns_closes_the_session_with_1000(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    conn, peer = connection(ours), Peer(theirs)

    def handler(conn: Connection) -> None:
        conn.send("hello")

    thread, result = in_thread(lambda: run_session(conn, handler))
    close = peer.until_close()
    assert peer.messages() == ["hello"] and close.code == 1000
    peer.answer(1000)
    thread.join(WAIT)
    ended = result[0]
    assert isinstance(ended, Closed) and (ended.code, ended.by_peer) == (1000, False)


def test_a_failing_handler_closes_with_1011_in_one_line_and_never_raises(
    pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    ours, theirs = pair
    conn, peer = connection(ours), Peer(theirs)

    def handler(conn: Connection) -> None:
        raise RuntimeError("bug in the handler")

    with caplog.at_level(logging.ERROR, logger="wsthreads"):
        thread, result = in_thread(lambda: run_session(conn, handler))
        close = peer.until_close()
        peer.answer(1011)
        thread.join(WAIT)
    assert (close.code, close.reason) == (1011, "internal error")
    assert isinstance(result[0], Closed) and result[0].code == 1011
    lines = [r.getMessage() for r in caplog.records if "session handler" in r.getMessage()]
    assert lines == ["closing after an error in the session handler: RuntimeError('bug in the handler')"]


def test_a_handler_object_answers_each_message_and_lasts_until_the_peer_closes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    conn, peer = connection(ours), Peer(theirs)
    thread, result = in_thread(lambda: run_session(conn, Echo()))
    peer.send_text("one")
    assert peer.read_message() == "one"
    time.sleep(0.2)
    assert thread.is_alive()  # run() returned long ago: the session waits for the peer
    peer.close(1000)
    assert peer.until_close().code == 1000  # our answer
    theirs.shutdown(socket.SHUT_WR)
    thread.join(WAIT)
    assert isinstance(result[0], Closed) and (result[0].code, result[0].by_peer) == (1000, True)


def test_linger_closes_a_quiet_session_with_1000(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    conn, peer = connection(ours), Peer(theirs)
    started = time.monotonic()
    thread, _ = in_thread(lambda: run_session(conn, Echo(), linger=0.3))
    close = peer.until_close()
    took = time.monotonic() - started
    assert close.code == 1000 and 0.25 < took < 5
    peer.answer(1000)
    thread.join(WAIT)


def test_first_runs_after_the_reader_started_and_before_the_handler(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    conn, peer = connection(ours), Peer(theirs)
    order: list[str] = []

    def first() -> None:
        order.append("first" if conn.reader is not None and conn.reader.is_alive() else "first, no reader")

    def handler(conn: Connection) -> None:
        order.append("handler")

    thread, _ = in_thread(lambda: run_session(conn, handler, first=first))
    peer.until_close()
    peer.answer(1000)
    thread.join(WAIT)
    assert order == ["first", "handler"]


def test_a_parked_session_holds_no_thread_and_runs_on_message_in_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    conn, peer = connection(ours), Peer(theirs)
    poller = Netpoller()
    seen: list[tuple[Message, str]] = []
    ended: list[Connection] = []

    class Record:
        def on_message(self, conn: Connection, message: Message) -> None:
            seen.append((message, threading.current_thread().name))

        def run(self, conn: Connection) -> None:
            conn.send("ready")

    conn.at_end(ended.append)
    park_session(conn, Record(), poller)  # returns once run() has: nothing holds this thread
    assert peer.read_message() == "ready"
    for number in range(5):
        peer.send_text(str(number))
    assert wait_until(lambda: len(seen) == 5)
    assert [message for message, _ in seen] == ["0", "1", "2", "3", "4"]
    assert all(name.startswith("conn-test") for _, name in seen)  # a worker, named for the connection
    peer.close(1000)
    assert peer.until_close().code == 1000
    theirs.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: ended == [conn])  # its netpoller thread ends with its last watch
