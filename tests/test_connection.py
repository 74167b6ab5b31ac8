"""wsthreads.connection on its own: one server-side Connection over a real TCP pair, the peer raw.

The write path: a message that finds nothing queued leaves at once from the
sending thread; what a full socket buffer does not take (the end of a frame)
waits for the writer, and nothing may come between a frame's start and its
end: not a queued message, not a pong, a send() or the close frame. Each
test runs over plain TCP and over TLS.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
import trustme
from helpers import WAIT, wait_until

from wsthreads import Closed, frames
from wsthreads.connection import Connection, broadcast
from wsthreads.queues import OVERFLOW_DROP_OLDEST

#: Socket buffers this small make a 1 MiB message stop mid-frame at once.
SMALL_BUFFER = 4096
BIG = 1 << 20


@pytest.fixture(params=["tcp", "tls"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server end, peer end) of one connection on loopback, with small buffers; plain or TLS.

    With TLS a write the socket cannot take may still have left part of the
    frame inside OpenSSL, and its next write must start with the same bytes.
    """
    ours, peer = tcp_pair()
    if request.param == "tls":
        ours, peer = tls_pair(ours, peer)
    try:
        yield ours, peer
    finally:
        end_connections()  # before closing ours: a connection may still own it
        peer.close()
        ours.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server end, peer end) of one TCP connection on loopback, both buffers small."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        peer.connect(listener.getsockname())
        ours, _ = listener.accept()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    return ours, peer


def tls_pair(ours: socket.socket, peer: socket.socket) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """Both ends wrapped in TLS, the handshakes done (the server's in a thread)."""
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_context)
    wrapped: list[ssl.SSLSocket] = []
    handshake = threading.Thread(
        target=lambda: wrapped.append(server_context.wrap_socket(ours, server_side=True))
    )
    handshake.start()
    client = client_context.wrap_socket(peer, server_hostname="localhost")
    handshake.join(WAIT)
    return wrapped[0], client


#: The connections a test made (see end_connections).
made: list[Connection] = []


def connection(sock: socket.socket, **settings: object) -> Connection:
    conn = Connection(sock, client=False, name="conn-test-reader", **settings)  # type: ignore[arg-type]
    conn.start(lambda message: None)
    made.append(conn)
    return conn


def end_connections() -> None:
    """Cut what a test left running (a close still waiting for its answer) and wait until each has
    let go of its socket. Closing the socket under it instead would free its descriptor for the next
    test's socket, which the old reader would then read and shut down."""
    while made:
        conn = made.pop()
        conn.abort()
        assert conn.wait_closed()


@pytest.fixture(autouse=True)
def ended() -> Iterator[None]:
    """Every connection a test made is over before the next test begins."""
    yield
    end_connections()


def read_events(peer: socket.socket, enough: Callable[[list[frames.Event]], bool]) -> list[frames.Event]:
    """Read and parse the server's frames until ``enough`` of them came (or EOF)."""
    parser = frames.Parser(client=True, max_message_size=None)
    events: list[frames.Event] = []
    peer.settimeout(WAIT)
    while not enough(events):
        data = peer.recv(65536)
        if not data:
            break
        events += parser.receive(data)  # raises ProtocolError if a frame was broken up
    return events


def messages(count: int) -> Callable[[list[frames.Event]], bool]:
    return lambda events: sum(isinstance(e, (str, bytes)) for e in events) >= count


def a_close(events: list[frames.Event]) -> bool:
    return any(isinstance(e, frames.Close) for e in events)


def writers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith("-writer")]


@pytest.mark.slow
def test_a_message_that_fits_leaves_from_the_sending_thread_and_wakes_no_writer(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    conn = connection(ours)
    # Read as sent: with TCP_NODELAY each message is a segment of its own, and 50 of
    # them would not fit the tiny send buffer of this pair, so some would wait.
    for number in range(50):
        assert conn.send_nowait(f"message {number}")
        assert read_events(peer, messages(1)) == [f"message {number}"]
    assert writers() == [] and conn._outbox is None  # nothing was queued, no thread was started
    conn.close()
    assert conn.wait_closed()


@pytest.mark.slow
def test_a_frame_cut_by_a_full_socket_is_finished_before_anything_else(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The peer reads nothing at first: the big message stops mid-frame, and then
    everything else wants the wire: queued messages, a blocking send() from another
    thread, a pong for the peer's ping. Each must wait for the frame's end."""
    ours, peer = pair
    conn = connection(ours, outbound_limit=4 * BIG)  # the policy is not what this tests
    big = b"x" * BIG
    sender = threading.Thread(target=conn.send, args=("sent with send()",))
    started = time.monotonic()
    assert conn.send_nowait(big)
    sender.start()  # races the writer for the wire
    assert time.monotonic() - started < 1.0  # send_nowait did not wait for the peer
    assert conn.send_nowait("after the big one")
    peer.sendall(b"".join(frames.frame(frames.PING, b"are you there", masked=True)))
    events = read_events(peer, lambda got: messages(3)(got) and any(isinstance(e, frames.Pong) for e in got))
    sender.join(WAIT)
    assert events[0] == big
    data = [e for e in events if isinstance(e, (str, bytes))]
    assert sorted(data[1:]) == ["after the big one", "sent with send()"]
    conn.close()
    assert conn.wait_closed()


@pytest.mark.slow
def test_a_send_racing_a_cut_frame_does_not_break_into_it(pair: tuple[socket.socket, socket.socket]) -> None:
    """A send() from another thread that asks for the wire as a send_nowait() is cut.

    With TLS this is the sharp case: OpenSSL keeps a record of the cut frame,
    and a write of other bytes would continue them from where it stopped.
    """
    ours, peer = pair
    conn = connection(ours, outbound_limit=4 * BIG)
    go = threading.Event()

    def send() -> None:
        go.wait()
        conn.send(b"s" * 16384)

    sender = threading.Thread(target=send)
    sender.start()
    go.set()
    assert conn.send_nowait(b"n" * (256 * 1024))
    events = read_events(peer, messages(2))
    sender.join(WAIT)
    assert sorted(events) == [b"n" * (256 * 1024), b"s" * 16384]  # type: ignore[type-var]
    conn.close()
    assert conn.wait_closed()


def test_a_close_frame_waits_for_the_end_of_a_cut_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    conn = connection(ours, close_timeout=5.0)
    assert conn.send_nowait(b"y" * BIG)
    conn.close(1000, "done")
    events = read_events(peer, a_close)
    assert events[0] == b"y" * BIG
    assert isinstance(events[-1], frames.Close) and events[-1].code == 1000


@pytest.mark.slow
def test_drop_oldest_never_drops_the_end_of_a_cut_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    conn = connection(ours, outbound_limit=64 * 1024, on_overflow=OVERFLOW_DROP_OLDEST)
    assert conn.send_nowait(b"z" * BIG)  # cut: its end is more than the limit on its own
    for number in range(200):
        assert conn.send_nowait(f"{number:0100d}")  # over the limit: the oldest of these go
    events = read_events(peer, messages(2))
    assert events[0] == b"z" * BIG  # whole: the policy dropped only whole messages
    assert all(isinstance(e, str) for e in events[1:])
    assert wait_until(lambda: conn._outbox is not None and conn._outbox.dropped > 0)
    conn.close()
    assert conn.wait_closed()


def test_a_big_broadcast_that_many_sockets_cut_is_held_once_not_once_per_connection() -> None:
    """20 peers that read nothing, one 4 MiB broadcast: each connection keeps the end of the
    one framed buffer, not a copy of its own (that was 20 copies, 80 MiB, in the caller)."""
    size = 4 << 20
    made = []
    for _ in range(20):
        ours, peer = tcp_pair()
        made.append((connection(ours, outbound_limit=4 * size), peer))
    message = bytes(size)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert broadcast([conn for conn, _ in made], message) == len(made)
        grew = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert grew < 2 * size, f"{grew / size:.1f} times the message"
    for conn, peer in made:
        peer.close()
        conn.abort()
        assert conn.wait_closed()


# --- How a message is shown: log lines and trace events -----------------------------


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("hello", "hello"),
        ("a" * 200, "a" * 200),
        ("a" * 201, "a" * 200 + "... (201 bytes in all)"),
        ("ü\n" + "a" * 99_998, "ü\\n" + "a" * 197 + "... (100001 bytes in all)"),
        ("\x1b" * 200, "\\x1b" * 50 + "... (200 bytes in all)"),  # bounded after escaping
        ("\U000e0001" * 201, "\\U000e0001" * 20 + "... (804 bytes in all)"),
        ("a\\nb", "a\\\\nb"),  # a backslash is two: a real \n cannot pass for a line break
        (b"\x00" * 5, "<binary message, 5 bytes>"),
    ],
)
def test_a_message_is_shown_on_one_line_of_at_most_200_characters(message: str | bytes, shown: str) -> None:
    from wsthreads.lines import PREVIEW_LIMIT, describe_message

    assert describe_message(message) == shown
    assert len(shown.partition("... (")[0]) <= PREVIEW_LIMIT


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("message", ["x" * 300, b"\x01\x02" * 25])
def test_a_frame_we_built_is_traced_as_its_message(masked: bool, message: str | bytes) -> None:
    """send_nowait() queues frames, and a client's are masked: the trace shows the message, not the frame."""
    from wsthreads.connection import frame_text

    opcode, payload = (
        (frames.TEXT, message.encode()) if isinstance(message, str) else (frames.BINARY, message)
    )
    header, body = frames.frame(opcode, payload, masked)
    assert frame_text(header + body) == message


@pytest.mark.slow
def test_send_after_our_own_close_raises_our_close_while_closing_and_once_over(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """close(1000, "done"), the peer slow to answer: send() raises 1000 'done' throughout."""

    ours, peer = pair
    conn = connection(ours, close_timeout=0.5)
    conn.close(1000, "done")
    assert a_close(read_events(peer, a_close))  # ours is out; the peer does not answer
    with pytest.raises(Closed) as closing:
        conn.send("too late")
    assert (closing.value.code, closing.value.reason, closing.value.by_peer) == (1000, "done", False)
    assert conn.wait_closed(WAIT)
    with pytest.raises(Closed) as over:
        conn.send("later still")
    assert (over.value.code, over.value.reason) == (1000, "done")  # unanswered, our close still stands


@pytest.mark.slow
@pytest.mark.parametrize("reader_waits_for", ["nothing", "the wire lock, to answer a ping"])
def test_a_close_is_over_by_its_deadline_while_another_thread_writes_to_a_peer_that_does_not_read(
    pair: tuple[socket.socket, socket.socket], reader_waits_for: str
) -> None:
    """The other thread's write (its own deadline 8 s) gives up at the close deadline (1 s): the
    close frame, and the reader's pong, wait for its lock, so the close was bounded by the write."""
    from helpers import OP_PING, encode_frame

    ours, peer = pair
    conn = connection(ours, write_timeout=8.0, close_timeout=1.0)
    failed: list[Exception] = []

    def send_what_is_never_read() -> None:
        try:
            conn.send(b"x" * (1 << 20))
        except Closed as error:
            failed.append(error)

    writer = threading.Thread(target=send_what_is_never_read, daemon=True)
    writer.start()
    assert wait_until(lambda: conn.traffic.bytes_out > 0)
    if reader_waits_for != "nothing":
        peer.sendall(encode_frame(OP_PING, b"p"))
        time.sleep(0.3)  # the reader now waits for the writer's lock
    started = time.monotonic()
    conn.close()
    assert conn.wait_closed(WAIT)
    assert time.monotonic() - started < 3  # the close's 1 s and a look or two, not the write's 8 s
    assert conn.closed is not None and "close deadline" in conn.closed.reason, conn.closed
    writer.join(WAIT)
    assert len(failed) == 1  # the send that never went out says so
