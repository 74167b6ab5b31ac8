"""Every wait is bounded: each test is the peer or the timing that used to make one wait for ever."""

from __future__ import annotations

import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import (
    CLIENT,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    Program,
    RawPeer,
    ServerProgram,
    close_payload,
    encode_frame,
    wait_until,
)

import wsthreads
from wsthreads import Closed, Connection, Message


def small_buffers(peer: RawPeer) -> None:
    """Make a peer's receive buffer tiny, so a server writing to it fills it at once."""
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


@pytest.mark.slow
def test_a_client_that_pings_and_never_reads_is_dropped_by_the_write_deadline(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Pings whose pongs are never read fill the buffers; the pong write times out and the
    client is dropped, instead of pinning the server's reader in sendall for ever."""
    server = start_server("--count", "0", "--write-timeout", "1", "--ping-interval", "0")
    threads = server.threads()
    peer = RawPeer(server.port)  # (default buffers: a tiny one can stall TCP itself, not our server)
    ping = encode_frame(OP_PING, b"p" * 125)
    peer.sock.settimeout(0.2)
    started = time.monotonic()
    unsent = b""
    while time.monotonic() - started < 15 and not server.stderr:
        unsent = unsent or ping * 64
        try:
            unsent = unsent[peer.sock.send(unsent) :]  # never half a frame: keep what is unsent
        except TimeoutError:
            continue  # the server is busy answering; keep it busy
        except OSError:
            break  # the server dropped us
    server.wait_for(r"connection lost: a write took over 1 s: the peer is not reading", stream="stderr")
    assert wait_until(lambda: server.threads() == threads), (server.threads(), threads)
    peer.close()
    # The pings still in flight are not read as a next HTTP request.
    assert len(server.stderr) == 1, server.output()


@pytest.mark.slow
def test_an_echo_client_that_never_reads_is_dropped_and_others_go_on(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Echo mode: a client that sends but never reads its echoes is dropped by the write deadline."""
    server = start_server("--echo", "--quiet", "--write-timeout", "1", "--max-message-size", "0")
    deaf = RawPeer(server.port)
    small_buffers(deaf)
    deaf.sock.settimeout(0.5)
    try:
        for _ in range(200):
            deaf.send(OP_TEXT, b"x" * 65536)
    except OSError:
        pass
    server.wait_for(r"connection lost: a write took over 1 s", stream="stderr")
    other = RawPeer(server.port)
    other.send(OP_TEXT, b"still served")
    assert other.read_frame() == (OP_TEXT, b"still served")
    other.close()
    deaf.close()
    time.sleep(0.5)
    # What the deaf client still had in flight is not read as a next HTTP request.
    assert "Bad request" not in "\n".join(server.stderr), server.output()


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket]]:
    """A server-side Connection over a real socketpair with small buffers, and the raw other end."""
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = Connection(ours, client=False, write_timeout=30.0, close_timeout=0.5)
    conn.start()
    yield conn, theirs
    conn.abort()
    conn.wait_closed()
    theirs.close()


@pytest.mark.slow
def test_close_returns_at_once_and_the_connection_ends_within_its_bound_while_a_send_is_stuck(
    pair: tuple[Connection, socket.socket],
) -> None:
    """A thread is stuck sending to a peer that never reads (write deadline 30 s); close() from
    another thread returns at once, the connection ends within close_timeout, the sender wakes."""
    conn, _peer = pair
    failures: list[BaseException] = []

    def send_forever() -> None:
        try:
            conn.send(b"x" * (8 << 20))
        except Closed as error:
            failures.append(error)

    sender = threading.Thread(target=send_forever, name="stuck-sender")
    sender.start()
    time.sleep(0.2)  # the sender is now blocked on a full buffer, holding the wire lock
    started = time.monotonic()
    conn.close()
    assert time.monotonic() - started < 0.1
    assert conn.done.wait(2.0)
    sender.join(2.0)
    assert not sender.is_alive() and failures
    assert conn.closed is not None and conn.closed.code == 1006


@pytest.mark.slow
def test_shutdown_ends_within_2_s_however_many_peers_are_stuck() -> None:
    """30 sessions whose clients read nothing and never answer a close: shutdown() closes them
    all at once and returns within 2 s (it used to take up to 1 s each, one after another)."""
    app = wsthreads.create_app(handler=Flood(), ping_interval=None)
    server = wsthreads.start_server(app, "127.0.0.1", 0)
    peers = []
    try:
        for _ in range(30):
            peer = RawPeer(server.port)
            small_buffers(peer)
            peers.append(peer)
        assert wait_until(lambda: len(app.connections()) == 30)
        time.sleep(0.5)  # every flood has filled its buffers
        started = time.monotonic()
        assert server.shutdown()
        assert time.monotonic() - started < 2.0
        assert app.connections() == []
    finally:
        for peer in peers:
            peer.close()


class Flood:
    """Sends until the session ends: with a client that reads nothing, its writes block."""

    def on_message(self, conn: Connection, message: Message) -> None:
        pass

    def run(self, conn: Connection) -> None:
        while not conn.stop.is_set():
            conn.send(b"x" * 65536)


class SlowReader:
    """on_message takes a second; the session ends while it runs."""

    def on_message(self, conn: Connection, message: Message) -> None:
        time.sleep(1.0)

    def run(self, conn: Connection) -> None:
        pass


@pytest.mark.slow
def test_a_reader_inside_a_slow_on_message_when_the_session_ends_does_not_spin() -> None:
    """The peer vanishes while on_message runs; afterwards the reader ends instead of spinning."""
    with wsthreads.start_server(wsthreads.create_app(handler=SlowReader()), "127.0.0.1", 0) as server:
        peer = RawPeer(server.port)
        peer.send(OP_TEXT, b"take your time")
        time.sleep(0.2)
        peer.reset()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        before = cpu.ru_utime + cpu.ru_stime
        assert wait_until(lambda: server.app.connections() == [])
        time.sleep(1.0)
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        assert cpu.ru_utime + cpu.ru_stime - before < 0.5


class Failing:
    """A handler whose code fails in one of its two methods."""

    def __init__(self, where: str, error: type[BaseException]) -> None:
        self.where = where
        self.error = error

    def on_message(self, conn: Connection, message: Message) -> None:
        if self.where == "on_message":
            raise self.error("boom in on_message")

    def run(self, conn: Connection) -> None:
        if self.where == "run":
            raise self.error("boom in run")
        conn.stop.wait(10)


@pytest.mark.parametrize("error", [RuntimeError, SystemExit])
@pytest.mark.parametrize("where", ["run", "on_message"])
def test_an_exception_in_per_connection_code_closes_with_1011(where: str, error: type[BaseException]) -> None:
    """The client gets a 1011 close frame, the server keeps serving, nothing reaches Werkzeug."""
    app = wsthreads.create_app(handler=Failing(where, error))
    with wsthreads.start_server(app, "127.0.0.1", 0) as server:
        for _ in range(2):
            peer = RawPeer(server.port)
            peer.send(OP_TEXT, b"trigger")
            assert peer.close_code() == 1011
            peer.send(OP_CLOSE, close_payload(1011))
            assert peer.rest_until_eof() == b""
            peer.close()


@pytest.mark.slow
def test_a_request_that_drips_a_byte_every_300_ms_is_cut_at_the_handshake_deadline(
    start_server: Callable[..., ServerProgram],
) -> None:
    """--handshake-timeout is a deadline for the whole request, not an idle timeout."""
    server = start_server("--handshake-timeout", "1")
    threads = server.threads()
    sock = socket.create_connection(("127.0.0.1", server.port))
    started = time.monotonic()
    try:
        for byte in b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"a" * 100:
            sock.sendall(bytes([byte]))
            time.sleep(0.3)
            if time.monotonic() - started > 6:
                break
    except OSError:
        pass  # the server cut us off
    sock.settimeout(5)
    try:
        rest = sock.recv(4096)
    except OSError:
        rest = b""
    assert rest == b"" or rest.startswith(b"HTTP/1.1 4")
    assert time.monotonic() - started < 3.0
    sock.close()
    assert wait_until(lambda: server.threads() == threads)


def test_sigterm_and_sigint_together_end_the_server_cleanly(
    start_server: Callable[..., ServerProgram],
) -> None:
    """A process manager forwarding Ctrl+C as SIGTERM delivers both at once: exit 0, no traceback."""
    server = start_server("--count", "1000", "--interval", "5")
    client = Program(CLIENT, "--url", server.url, "--count", "1000", "--interval", "5")
    client.wait_for(r"received: server message 1 of 1000")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    server.signal(signal.SIGINT)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.output()
    assert time.monotonic() - started < 3.0
    assert client.wait() == 0, client.output()
    assert "Traceback" not in server.output() + client.output()
    assert "1001" in "\n".join(client.stdout)


@pytest.mark.parametrize("program", ["server", "client"])
@pytest.mark.slow
def test_a_storm_of_signals_cannot_hang_either_program(
    start_server: Callable[..., ServerProgram], program: str
) -> None:
    """200 signals at once: a handler that took a lock (threading.Event.set) could be entered
    again by the next signal in the same thread, while holding it, and wait for ever."""
    server = start_server("--count", "1000", "--interval", "5")
    client = Program(CLIENT, "--url", server.url, "--count", "1000", "--interval", "5")
    client.wait_for(r"received: server message 1 of 1000")
    target = server if program == "server" else client
    for number in range(200):
        target.signal(signal.SIGTERM if number % 2 else signal.SIGINT)
    assert target.wait() == 0, target.output()
    assert "Traceback" not in target.output()
    client.kill()


def test_sigterm_and_sigint_together_end_the_client_cleanly(
    start_server: Callable[..., ServerProgram],
) -> None:
    server = start_server("--count", "1000", "--interval", "5")
    client = Program(CLIENT, "--url", server.url, "--count", "1000", "--interval", "5")
    client.wait_for(r"received: server message 1 of 1000")
    client.signal(signal.SIGINT)
    client.signal(signal.SIGTERM)
    client.signal(signal.SIGINT)
    assert client.wait() == 0, client.output()
    assert "Traceback" not in client.output()
    server.wait_for(r"peer closed the connection: 1000")


@pytest.mark.slow
def test_shutdown_under_load_ends_within_2_s(start_server: Callable[..., ServerProgram]) -> None:
    """100 echo sessions whose clients flood and never read, plus handshakes never finished:
    SIGTERM, SIGINT, SIGTERM; the server exits 0 within 2 s of the first (plus process exit)."""
    server = start_server("--echo", "--quiet", "--max-message-size", "0", "--ping-interval", "0")
    peers, stalled = [], []
    try:
        for _ in range(100):
            peer = RawPeer(server.port)
            small_buffers(peer)
            peer.sock.setblocking(False)
            try:
                for _ in range(8):
                    peer.sock.send(encode_frame(OP_TEXT, b"x" * 65536))
            except BlockingIOError:
                pass  # its echoes are stuck: the server's writes to it block
            peers.append(peer)
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /ws HTTP/1.1\r\n")
            stalled.append(sock)
        time.sleep(0.5)
        started = time.monotonic()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            server.signal(signum)
        assert server.wait() == 0, server.output()
        assert time.monotonic() - started < 3.0
        assert "Traceback" not in server.output()
    finally:
        for sock in [p.sock for p in peers] + stalled:
            sock.close()


@pytest.mark.slow
def test_a_request_body_that_drips_is_cut_at_the_handshake_deadline(
    start_server: Callable[..., ServerProgram],
) -> None:
    """A refused request whose body trickles in a byte every 300 ms does not hold a thread."""
    server = start_server("--handshake-timeout", "1")
    threads = server.threads()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    started = time.monotonic()
    try:
        while time.monotonic() - started < 6:
            sock.sendall(b"x")
            time.sleep(0.3)
    except OSError:
        pass  # the server cut us off
    assert time.monotonic() - started < 3.0
    sock.close()
    assert wait_until(lambda: server.threads() == threads)


class EchoToStuckPeer:
    """on_message replies with more than a peer that reads nothing can take."""

    def on_message(self, conn: Connection, message: Message) -> None:
        conn.send(b"x" * (8 << 20))

    def run(self, conn: Connection) -> None:
        pass


@pytest.mark.slow
def test_close_bounds_a_reader_stuck_in_its_own_write() -> None:
    """The reader itself is blocked replying (write deadline 30 s): close() still ends the
    connection within close_timeout."""
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = Connection(ours, client=False, write_timeout=30.0, close_timeout=0.5)
    handler = EchoToStuckPeer()
    conn.start(lambda message: handler.on_message(conn, message))
    theirs.sendall(encode_frame(OP_TEXT, b"reply, please"))
    time.sleep(0.3)
    started = time.monotonic()
    conn.close()
    assert conn.done.wait(2.0)
    assert time.monotonic() - started < 1.5
    theirs.close()
