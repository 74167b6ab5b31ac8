"""The client's one lifecycle (CLI and WebSocketClient): close() wins, reconnect only when it helps."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

import pytest
from helpers import (
    CLIENT,
    OP_CLOSE,
    WAIT,
    Program,
    RawServer,
    accept_key,
    assert_close_cuts_the_dial_short,
    encode_frame,
    run_client,
    wait_until,
)

from wsthreads import Closed, ConnectError, WebSocketClient


def alive_client_threads(before: set[threading.Thread]) -> set[str]:
    names = ("reader", "supervisor")
    return {t.name for t in set(threading.enumerate()) - before if t.name in names}


def never_answering(conn: socket.socket) -> None:
    """After the handshake: read and discard everything, answer nothing, until the client goes."""
    conn.settimeout(10)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


@pytest.mark.slow
def test_close_against_a_server_that_never_answers_ends_everything_within_2_s() -> None:
    """close() returns within close_timeout plus a margin, with reader, supervisor and socket gone."""
    before = set(threading.enumerate())

    server = RawServer(never_answering)
    client = WebSocketClient(server.url).connect()
    assert client.connected
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 2.0
    assert not client.connected
    assert alive_client_threads(before) == set()
    server.close()


class ListenerThatNeverAnswers:
    """A TCP listener that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_close_during_a_pending_dial_wins() -> None:
    """close() while the (first or a re-)dial waits for a handshake answer: the dial is cut short,
    and the client stays closed: nothing connects afterwards, no thread is left waiting."""
    silent = ListenerThatNeverAnswers()
    client = WebSocketClient(f"ws://127.0.0.1:{silent.port}/ws", timeout=30)
    assert_close_cuts_the_dial_short(client, after=0.3)
    assert not client.connected
    silent.close()


@pytest.mark.slow
def test_close_during_the_backoff_before_a_redial_wins() -> None:
    """The server goes away (1001); close() during the backoff: no dial follows, the client ends."""
    before = set(threading.enumerate())

    def going_away(conn: socket.socket) -> None:
        conn.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1001) + b"restart", mask=False))
        conn.recv(4096)

    server = RawServer(going_away)
    client = WebSocketClient(server.url, reconnect=True, backoff=(5.0, 5.0)).connect()
    time.sleep(0.5)  # the session ended; the client is in its backoff
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    assert not client.connected
    assert alive_client_threads(before) == set()
    server.close()


class CountingServer:
    """Accepts every WebSocket handshake and immediately closes with ``code``; counts the dials."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.dials = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(4096)
                if not data:
                    return  # the client gave up before its request was whole (else: a spin, for ever)
                request += data
            key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0].decode()
            self.dials += 1
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
                + (encode_frame(OP_CLOSE, struct.pack("!H", self.code), mask=False) if self.code else b"")
            )
            try:
                conn.recv(4096)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("code", [1008, 1002, 1000])
@pytest.mark.slow
def test_reconnect_does_not_redial_after_a_final_close_code(code: int) -> None:
    """--reconnect against a server that refuses with 1008 (or 1002, 1000): one dial, then exit."""
    server = CountingServer(code)
    result = run_client("--url", server.url, "--count", "0", "--reconnect", timeout=10)
    assert server.dials == 1, result.stdout
    assert "reconnecting" not in result.stdout
    assert result.returncode == (0 if code == 1000 else 1)
    server.close()


@pytest.mark.slow
def test_backoff_keeps_growing_across_sessions_that_end_at_once() -> None:
    """A server that says 1001 right after every handshake: the delays double from 0.5 s,
    they do not start over with every short session."""
    server = CountingServer(1001)
    client = Program(CLIENT, "--url", server.url, "--count", "0", "--reconnect")
    time.sleep(4.0)
    client.signal()
    assert client.wait() == 0, client.output()
    # 0.5 s doubling with equal jitter: at most 1 + 5 dials fit in 4 s (0.25+0.5+1+2 = 3.75).
    assert 2 <= server.dials <= 6, client.output()
    server.close()


@pytest.mark.slow
def test_the_first_dial_is_bounded_by_a_deadline_against_a_dripping_server() -> None:
    """--timeout is a deadline for the whole dial: a 101 answer dripped one byte every 300 ms fails."""

    def drip(conn: socket.socket) -> None:
        pass

    answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"

    class DrippingServer(RawServer):
        """Times the dial from the server's side, so the client interpreter's start does not count."""

        dial_took = float("inf")

        def _serve(self) -> None:
            conn, _ = self.listener.accept()
            accepted = time.monotonic()
            with conn:
                conn.recv(4096)
                try:
                    for byte in answer * 10:
                        conn.sendall(bytes([byte]))
                        readable, _, _ = select.select([conn], [], [], 0.3)
                        if readable and not conn.recv(4096):
                            break
                except OSError:
                    pass
            self.dial_took = time.monotonic() - accepted

    server = DrippingServer(drip)
    result = run_client("--url", server.url, "--count", "0", "--timeout", "1")
    server.thread.join(WAIT)
    assert server.dial_took < 2.0, server.dial_took
    assert result.returncode == 1
    assert "no answer from" in result.stderr and "within 1 s" in result.stderr, result.stderr
    server.listener.close()


def test_a_session_that_ends_cleanly_is_reported_by_the_client_object() -> None:
    """How the session ended stays readable after it has (WebSocketClient.closed)."""
    server = CountingServer(1000)
    client = WebSocketClient(server.url).connect()
    deadline = time.monotonic() + 5
    while client.closed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(client.closed, Closed) and client.closed.code == 1000
    client.close()
    server.close()


def test_close_racing_connect_never_leaves_a_thread_behind() -> None:
    """close() from another thread at any moment of connect(): once close() returns, no reader
    or supervisor is alive (it used to raise 'cannot join thread before it is started', or miss
    a supervisor about to start)."""
    server = CountingServer(0)  # 0: never closes by itself (see _session)
    before = set(threading.enumerate())
    for i in range(60):
        client = WebSocketClient(server.url)

        def connect(client: WebSocketClient = client) -> None:
            try:
                client.connect()
            except ConnectError:
                pass

        connector = threading.Thread(target=connect)
        connector.start()
        time.sleep((i % 6) * 0.001)
        client.close()
        assert alive_client_threads(before) == set(), i
        connector.join(5)
        assert not client.connected
    server.close()


def test_close_from_on_message_returns_at_once_and_closes_cleanly() -> None:
    """WebSocketClient.close() in the reader thread only asks; the session ends with 1000."""

    def say_bye_then_answer(conn: socket.socket) -> None:
        conn.sendall(encode_frame(0x1, b"bye now", mask=False))
        answer_the_close(conn)

    server = RawServer(say_bye_then_answer)
    holder: list[WebSocketClient] = []
    took: list[float] = []

    def on_message(message: object) -> None:
        started = time.monotonic()
        holder[0].close()
        took.append(time.monotonic() - started)

    client = WebSocketClient(server.url, on_message=on_message)
    holder.append(client)
    client.connect()
    deadline = time.monotonic() + 5
    while client.closed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert took and took[0] < 0.1
    assert client.closed is not None and client.closed.code == 1000, client.closed
    client.close()
    server.close()


def answer_the_close(conn: socket.socket) -> None:
    """Answer the client's close frame with a close frame, then end."""
    conn.settimeout(5)
    data = conn.recv(4096)
    if data and data[0] & 0x0F == OP_CLOSE:
        conn.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1000), mask=False))


@pytest.mark.parametrize("code", [1012, 1013, 1014])
@pytest.mark.slow
def test_reconnect_redials_after_a_try_again_close_code(code: int) -> None:
    """1012-1014 mean "come back later": --reconnect dials again (1014 too: our frame layer knows it)."""
    server = CountingServer(code)
    client = Program(CLIENT, "--url", server.url, "--count", "0", "--reconnect")
    assert wait_until(lambda: server.dials >= 2, timeout=5), client.output()
    client.signal()
    assert client.wait() == 0, client.output()
    server.close()
