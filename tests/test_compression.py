"""permessage-deflate over real connections: declined by default, and with ``--compression`` agreed
with websockets both ways, bounded against a bomb, in wire order under context takeover.

The negotiation and zlib's bounds without sockets: ``tests/test_deflate.py``;
Autobahn's 12.* and 13.*: ``tests/test_autobahn.py``; Chromium: ``tests/test_browser.py``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import pytest
from helpers import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawPeer,
    ServerProgram,
    run_client,
    wait_until,
)
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection, serve

import wsthreads
from wsthreads import frames
from wsthreads.connection import Connection, broadcast
from wsthreads.deflate import Agreement, Compressor, Deflate

OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
MESSAGES: list[str | bytes] = [
    "hello",
    "",
    "ä" * 5000,
    b"\x00\x01" * 70_000,
    json.dumps({"n": list(range(500))}),
]


def rss_kib(server: ServerProgram) -> int:
    with open(f"/proc/{server.proc.pid}/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1])


def bomb(size: int) -> bytes:
    """A compressed message payload that inflates to ``size`` zero bytes, made a MiB at a time."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(min(size, 1 << 20))
    data = b"".join(deflate.compress(chunk) for _ in range(size // len(chunk)))
    return (data + deflate.flush(zlib.Z_SYNC_FLUSH))[:-4]


# --- off by default --------------------------------------------------------------


def test_compression_offer_is_declined_by_default(start_server: Callable[..., ServerProgram]) -> None:
    """A client offering permessage-deflate gets a 101 without it."""
    server = start_server("--echo")
    peer = RawPeer(server.port, headers=OFFER)
    assert peer.status_line.startswith("HTTP/1.1 101")
    assert b"deflate" not in peer.response_head.lower()


def test_fragmented_message_with_ping_between_fragments_round_trips(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Fragments with a ping in between: the pong comes at once, the message arrives whole."""
    server = start_server("--echo")
    peer = RawPeer(server.port, headers=OFFER)
    first, second = b"A" * 1000, b"B" * 1000
    peer.send(OP_TEXT, first, fin=False)
    peer.send(OP_PING, b"between")
    assert peer.read_frame() == (OP_PONG, b"between")
    peer.send(OP_CONT, second)
    assert peer.read_frame() == (OP_TEXT, first + second)


def test_a_compressed_frame_without_compression_agreed_is_1002_and_nothing_inflates(
    start_server: Callable[..., ServerProgram],
) -> None:
    """A 100 KB frame that would inflate to 100 MB: 1002, and the server's memory does not grow."""
    server = start_server("--echo")
    before = rss_kib(server)
    peer = RawPeer(server.port, headers=OFFER)
    peer.send(OP_BINARY, bomb(100 << 20), rsv=4)  # RSV1: "this message is compressed"
    assert peer.close_code() == 1002
    assert rss_kib(server) - before < 10_000


# --- with --compression ---------------------------------------------------------------


def test_websockets_client_and_our_server_agree_and_echo(start_server: Callable[..., ServerProgram]) -> None:
    server = start_server("--echo", "--compression")
    with ws_connect(server.url) as ws:
        assert ws.response is not None
        extension = ws.response.headers["Sec-WebSocket-Extensions"]
        assert extension == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        for message in MESSAGES:
            ws.send(message)
            assert ws.recv(timeout=5) == message
    with ws_connect(server.url, compression=None) as ws:
        assert ws.response is not None and "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=5) == "plain"
    assert server.count_lines(r"connected: .* \(permessage-deflate\)") == 1


@pytest.fixture
def websockets_echo() -> Iterator[Callable[..., str]]:
    """A websockets echo server on port 0, with the given ``compression``; its URL."""
    servers = []

    def start(compression: str | None = "deflate") -> str:
        def echo(ws: ServerConnection) -> None:
            for message in ws:
                ws.send(message)

        server = serve(echo, "127.0.0.1", 0, compression=compression)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("setting", [Deflate(), Deflate(context_takeover=False), Deflate(window_bits=9)])
def test_our_client_and_websockets_server_agree_and_echo(
    websockets_echo: Callable[..., str], setting: Deflate
) -> None:
    with wsthreads.WebSocketClient(websockets_echo(), compression=setting) as client:
        assert client.compression is not None
        assert client.compression.send_context_takeover is setting.context_takeover
        for message in MESSAGES:
            client.send(message)
            assert client.recv(timeout=5) == message


def test_a_server_that_declines_leaves_our_client_uncompressed(websockets_echo: Callable[..., str]) -> None:
    conn = wsthreads.dial(websockets_echo(compression=None), wsthreads.ClientConfig(compression="deflate"))
    conn.start()
    try:
        assert conn.compression is None
        conn.send("plain")
        assert conn.recv(5) == "plain"
    finally:
        conn.close()
        conn.wait_closed()


@pytest.mark.slow
def test_both_programs_say_compression_was_agreed(start_server: Callable[..., ServerProgram]) -> None:
    server = start_server("--compression", "--count", "2", "--interval", "0.05")
    result = run_client("--url", server.url, "--compression", "--count", "2", "--interval", "0.05")
    assert result.returncode == 0, result.stderr
    assert "(permessage-deflate)" in result.stdout
    assert result.stdout.count("received: server message") == 2
    assert wait_until(lambda: server.count_lines("received: client message") == 2)


@pytest.mark.slow
def test_a_bomb_closes_with_1009_having_inflated_no_more_than_the_limit(
    start_server: Callable[..., ServerProgram],
) -> None:
    """1 MiB on the wire that would inflate to 1 GiB: 1009, and the server grows by about the 1 MiB limit."""
    server = start_server("--echo", "--compression")
    data = bomb(1 << 30)
    before = rss_kib(server)
    peer = RawPeer(server.port, headers=OFFER)
    try:
        peer.send(OP_BINARY, data, rsv=4)
    except OSError:
        pass  # the server closed while the rest was on its way
    assert peer.close_code() == 1009
    assert rss_kib(server) - before < 4 * 1024
    assert server.proc.poll() is None


# --- in wire order, once per broadcast, and not for secrets ------------------------------


def pair(agreement: Agreement | None) -> tuple[Connection, socket.socket]:
    """A server-side connection with ``agreement`` over a socketpair, and the raw other end."""
    ours, theirs = socket.socketpair()
    conn = Connection(ours, client=False, compression=agreement, name="test-reader")
    conn.start(lambda message: None)
    theirs.settimeout(5)
    return conn, theirs


def raw_frames(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` whole frames as they came (header and payload)."""
    data, found = b"", list[bytes]()
    while len(found) < count:
        data += sock.recv(65536)
        while len(data) >= 2:
            length, at = data[1] & 0x7F, 2
            if length == 126:
                length, at = int.from_bytes(data[2:4], "big"), 4
            if len(data) < at + length:
                break
            found.append(data[: at + length])
            data = data[at + length :]
    return found


def test_without_context_takeover_a_broadcast_is_compressed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three compressing connections and a plain one: one compression, the same bytes to the three."""
    calls: list[bytes] = []
    compress = Compressor.compress

    def counted(self: Compressor, data: bytes) -> bytes:
        calls.append(data)
        return compress(self, data)

    monkeypatch.setattr(Compressor, "compress", counted)
    agreement = Agreement(12, False, 12, False)
    pairs = [pair(agreement) for _ in range(3)] + [pair(None)]
    message = json.dumps({"price": 101.25, "history": list(range(200))})
    assert broadcast([conn for conn, _ in pairs], message) == 4
    assert len(calls) == 1
    received = [raw_frames(theirs, 1)[0] for _, theirs in pairs]
    assert received[0] == received[1] == received[2] and received[0][0] == 0x80 | frames.RSV1 | frames.TEXT
    assert received[3] == b"".join(frames.frame(frames.TEXT, message.encode(), masked=False))
    assert len(received[0]) * 2 < len(received[3])
    for conn, theirs in pairs:
        conn.abort()
        theirs.close()


def test_a_message_sent_with_compress_false_goes_as_it_is() -> None:
    """The way to keep a secret out of a compressed history an attacker's text shares."""
    conn, theirs = pair(Agreement(12, True, 12, True))
    conn.send("token=s3cret", compress=False)
    conn.send("hello")
    conn.send_nowait("token=s3cret", compress=False)
    plain, compressed, queued = raw_frames(theirs, 3)
    assert plain == b"\x81\x0ctoken=s3cret" and queued == plain
    assert compressed[0] == 0x80 | frames.RSV1 | frames.TEXT
    conn.abort()
    theirs.close()


def test_with_context_takeover_messages_from_many_threads_inflate_in_order() -> None:
    """send() and send_nowait() from four threads at once, through one compression history:
    the peer (websockets) inflates every message, each thread's in its order."""
    received: list[str] = []
    done = threading.Event()

    def handler(conn: Connection) -> None:
        def sender(n: int) -> None:
            for i in range(300):
                text = json.dumps({"thread": n, "i": i, "pad": "x" * (i % 50)})
                conn.send(text) if i % 3 == 0 else conn.send_nowait(text)

        threads = [threading.Thread(target=sender, args=(n,), name=f"sender-{n}") for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.wait(10)

    server = wsthreads.start_server(wsthreads.create_app(handler=handler, compression="deflate"), port=0)
    try:
        with ws_connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            for _ in range(1200):
                received.append(str(ws.recv(timeout=10)))
            done.set()
    finally:
        server.shutdown()
    by_thread: dict[int, list[int]] = {}
    for text in received:
        message = json.loads(text)
        by_thread.setdefault(message["thread"], []).append(message["i"])
    assert by_thread == {n: list(range(300)) for n in range(4)}


def test_drop_oldest_under_context_takeover_drops_only_what_was_never_compressed() -> None:
    """A peer far behind, drop-oldest: some messages are dropped, and every one that arrives inflates."""
    sent = threading.Event()
    dropped = []

    def handler(conn: Connection) -> None:
        for i in range(3000):
            conn.send_nowait(json.dumps({"i": i, "data": os.urandom(2000).hex()}))  # 2 KiB compressed
        dropped.append(conn.messages_dropped)
        sent.set()
        conn.stop.wait(10)

    app = wsthreads.create_app(
        handler=handler, compression="deflate", on_overflow="drop-oldest", outbound_limit=64 * 1024
    )
    server = wsthreads.start_server(app, port=0)
    try:
        with ws_connect(f"ws://127.0.0.1:{server.port}/ws", max_queue=4) as ws:  # it stops reading
            assert sent.wait(20)
            numbers: list[int] = []
            while not numbers or numbers[-1] != 2999:
                numbers.append(json.loads(ws.recv(timeout=10))["i"])
    finally:
        server.shutdown()
    assert dropped[0] > 0 and len(numbers) == 3000 - dropped[0]
    assert numbers == sorted(numbers)


def test_a_byte_rate_counts_what_compressed_messages_inflate_to(
    start_server: Callable[..., ServerProgram],
) -> None:
    """100 KB messages that take 100 bytes on the wire: by the third, 200 KB/s is crossed: 1008."""
    server = start_server("--echo", "--quiet", "--compression", "--max-byte-rate", "200000")
    peer = RawPeer(server.port, headers=OFFER)
    for _ in range(3):
        peer.send(OP_BINARY, bomb(100_000), rsv=4)
    received, close = peer.read_until_close()
    assert int.from_bytes(close[:2], "big") == 1008 and b"too many bytes" in close
    assert len(received) <= 3  # at most two echoes (a full bucket lends what one read takes), the close


@pytest.mark.slow
def test_compressing_a_big_message_does_not_count_as_a_peer_that_does_not_read() -> None:
    """With context takeover a message is compressed under the write lock: a second of it, with
    write_timeout 1 s, neither drops the fast peer nor the send waiting behind it, whose own
    4 MiB write then still has its full write_timeout (the peer, in this process, is meanwhile
    inflating the big one: a tighter bound fails on a loaded machine)."""
    big = os.urandom(16 << 20).hex()  # 32 MiB of text that halves: about a second of zlib here
    after = os.urandom(4 << 20)
    outcome: list[str] = []

    def handler(conn: Connection) -> None:
        def later() -> None:
            # Once the big one holds the lock, compressing (on a busy machine that may take a while).
            assert wait_until(conn.wire_lock.locked, timeout=10)
            conn.send(after, compress=False)
            outcome.append("after sent")

        behind = threading.Thread(target=later, name="behind")
        behind.start()
        conn.send(big)
        outcome.append("big sent")
        behind.join()
        conn.stop.wait(10)

    app = wsthreads.create_app(handler=handler, compression="deflate", write_timeout=1.0)
    server = wsthreads.start_server(app, port=0)
    try:
        with ws_connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as ws:
            assert ws.recv(timeout=30) == big
            assert ws.recv(timeout=10) == after
    finally:
        server.shutdown()
    assert sorted(outcome) == ["after sent", "big sent"]


@pytest.mark.slow
def test_a_send_waits_as_long_as_the_holder_of_the_wire_prepares_its_write() -> None:
    """A holder compressing (or joining what it drained) is CPU, not the peer: a send waiting for it,
    here three times its write_timeout, is not dropped as one to a peer that does not read."""
    ours, theirs = socket.socketpair()
    conn = Connection(ours, client=False, compression=Agreement(12, True, 12, True), write_timeout=0.2)
    conn.start(lambda message: None)
    theirs.settimeout(5)
    try:
        assert conn.wire_lock.acquire()
        conn._writing_until = None  # what a holder says while it prepares its write
        sender = threading.Thread(target=conn.send, args=("after",), name="waiting-sender")
        sender.start()
        time.sleep(0.6)
        conn.wire_lock.release()
        sender.join(5)
        assert not sender.is_alive() and conn.closed is None
        assert raw_frames(theirs, 1)[0][0] == 0x80 | frames.RSV1 | frames.TEXT
    finally:
        conn.abort()
        conn.wait_closed()
        theirs.close()


@pytest.mark.slow
def test_flush_says_false_when_what_it_waited_for_was_cut_mid_write() -> None:
    """send_nowait 20 MB to a peer that never reads, then send(): flush() must not say True."""
    from helpers import upgrade

    flushed: list[bool] = []

    def handler(conn: Connection) -> None:
        conn.send_nowait(b"x" * 20_000_000)
        flusher = threading.Thread(target=lambda: flushed.append(conn.flush(5)), name="flusher")
        flusher.start()
        try:
            conn.send(b"y")
        except wsthreads.Closed:
            pass
        flusher.join(10)

    app = wsthreads.create_app(
        handler=handler, write_timeout=1.0, outbound_limit=100_000_000, ping_interval=None
    )
    server = wsthreads.start_server(app, port=0)
    try:
        _, _, sock = upgrade(server.port, receive_buffer=4096)  # and never read
        try:
            assert wait_until(lambda: bool(flushed), timeout=15)
        finally:
            sock.close()
    finally:
        server.shutdown()
    assert flushed == [False]
