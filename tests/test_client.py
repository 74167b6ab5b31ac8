"""The client (wsthreads.WebSocketClient, and sync_client.py on it), in one suite.

Its sections: the embedding API (headers, subprotocols, pings, recv and
iteration, handler and run); the lifecycle (close() wins, reconnect only when
it helps); strictness (what RFC 6455 says it must refuse); servers that
misbehave (one line, never a hang or a traceback). Peers are a websockets
server, raw sockets that misbehave on purpose, and the real programs."""

from __future__ import annotations

import os
import queue
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any, Generic, TypeVar

import pytest
from helpers import (
    CLIENT,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WAIT,
    Program,
    RawServer,
    ServerProgram,
    accept_key,
    assert_close_cuts_the_dial_short,
    decode_frames,
    encode_frame,
    free_port,
    run_client,
    wait_until,
)
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

import wsthreads
from wsthreads import Closed, ConnectError, NotConnected, WebSocketClient
from wsthreads.client import ClientConfig
from wsthreads.connection import Connection
from wsthreads.pubsub import Resume

# --- The lifecycle -----------------------------------------------------------------------------------
# The client's one lifecycle (CLI and WebSocketClient): close() wins, reconnect only when it helps.


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


# --- Strictness --------------------------------------------------------------------------------------
# The client refuses what RFC 6455 says it must, where websocket-client alone would not.


class HandshakeServer(RawServer):
    """A one-connection server whose 101 answer the test writes, given the client's key."""

    def __init__(self, answer_for: object, script: object = None) -> None:
        self.answer_for = answer_for
        super().__init__(script or (lambda conn: None))  # type: ignore[arg-type]

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.IGNORECASE)
            assert key is not None
            conn.sendall(self.answer_for(key.group(1).decode()))  # type: ignore[operator]
            self.script(conn)


def switching(accept: str, extra: str = "") -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    ).encode()


def one_line(stderr: str, fragment: str) -> None:
    """``stderr`` is one line, holding ``fragment``: no traceback, no second message."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "answer, problem",
    [
        (lambda key: switching(accept_key(key).swapcase()), "wrong Sec-WebSocket-Accept"),
        (lambda key: switching(accept_key(key), "Sec-WebSocket-Protocol: chat\r\n"), "subprotocol 'chat'"),
        (
            lambda key: switching(accept_key(key), "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
            "extension 'permessage-deflate'",
        ),
        (lambda key: b"HTTP/1.1 301 Moved Permanently\r\nLocation: ws://127.0.0.1:9/ws\r\n\r\n", "redirect"),
    ],
    ids=["accept-case", "subprotocol", "extension", "redirect"],
)
@pytest.mark.slow
def test_a_wrong_handshake_answer_fails_the_dial(answer: object, problem: str) -> None:
    server = HandshakeServer(answer)
    result = run_client("--url", server.url, "--count", "0", "--timeout", "3")
    assert result.returncode == 1
    one_line(result.stderr, problem)
    server.close()


@pytest.mark.parametrize(
    ("lines", "compression", "problem"),
    [
        (
            ["Sec-WebSocket-Extensions: x-never-offered", "Sec-WebSocket-Extensions: permessage-deflate"],
            "deflate",
            "extension 'x-never-offered' was never offered",
        ),
        (
            [
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover",
                "Sec-WebSocket-Extensions: permessage-deflate",
            ],
            "deflate",
            "permessage-deflate more than once",
        ),
        (
            ["Sec-WebSocket-Extensions: x-never-offered", "Sec-WebSocket-Extensions: "],
            None,
            "extension 'x-never-offered' was never offered",
        ),
        (["Sec-WebSocket-Extensions: ,"], None, "malformed Sec-WebSocket-Extensions"),
        (["Sec-WebSocket-Extensions: ,"], "deflate", "malformed Sec-WebSocket-Extensions"),
        (
            ["Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: chat"],
            None,
            "header 'sec-websocket-protocol' came more than once",
        ),
    ],
    ids=[
        "unoffered-first",
        "deflate-twice",
        "unoffered-then-empty",
        "empty-list",
        "empty-list-offered",
        "protocol-twice",
    ],
)
def test_every_line_of_a_header_the_server_sends_twice_is_checked(
    lines: list[str], compression: str | None, problem: str
) -> None:
    """websocket-client keeps the last line of a repeated header; the check sees them all."""
    server = HandshakeServer(lambda key: switching(accept_key(key), "".join(f"{line}\r\n" for line in lines)))
    config = wsthreads.ClientConfig(compression=compression, subprotocols=("chat",), timeout=5)
    with pytest.raises(wsthreads.ConnectError) as raised:
        wsthreads.dial(server.url, config)
    assert problem in str(raised.value) and "answered the handshake wrongly" in str(raised.value)
    assert not raised.value.retryable
    server.close()


def lf_switching(accept: str, *lines: str) -> bytes:
    """A 101 whose lines end in a bare LF, which websocket-client reads as lines too."""
    head = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
    return "\n".join([*head, f"Sec-WebSocket-Accept: {accept}", *lines, "", ""]).encode()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (
            lambda key: lf_switching(accept_key(key), "Sec-WebSocket-Extensions: x-never-offered"),
            "extension 'x-never-offered' was never offered",
        ),
        (
            lambda key: lf_switching("garbage", f"Sec-WebSocket-Accept: {accept_key(key)}"),
            "header 'sec-websocket-accept' came more than once",
        ),
        (
            lambda key: switching(accept_key(key), "Sec-WebSocket-Protocol : chat\r\n"),
            "malformed header line 'Sec-WebSocket-Protocol : chat'",
        ),
    ],
    ids=["lf-unoffered-extension", "lf-accept-twice", "space-before-colon"],
)
def test_the_checks_read_the_lines_websocket_client_read(answer: object, problem: str) -> None:
    server = HandshakeServer(answer)
    config = wsthreads.ClientConfig(compression="deflate", subprotocols=("chat",), timeout=5)
    with pytest.raises(wsthreads.ConnectError) as raised:
        wsthreads.dial(server.url, config)
    assert problem in str(raised.value) and not raised.value.retryable
    server.close()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (lambda key: switching(accept_key(key), "X-A: a\r\n continued\r\n"), "Invalid header"),  # obs-fold
        (lambda key: switching(accept_key(key)).replace(b"\r\n\r\n", b"\r\nX-A: \xff\xfe\r\n\r\n"), "header"),
        (lambda key: b"\r\n" + switching(accept_key(key)), "no HTTP status line"),
    ],
    ids=["obs-fold", "not-utf8", "empty-first-line"],
)
def test_an_answer_websocket_client_cannot_read_is_one_line_and_final(answer: object, problem: str) -> None:
    server = HandshakeServer(answer)
    with pytest.raises(wsthreads.ConnectError) as raised:
        wsthreads.dial(server.url, wsthreads.ClientConfig(timeout=5))
    assert problem in str(raised.value) and "answered the handshake wrongly" in str(raised.value)
    assert not raised.value.retryable and "\n" not in str(raised.value)
    server.close()


EXTENSION = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits="


@pytest.mark.parametrize(
    ("answer", "bits"),
    [
        (lambda key: lf_switching(accept_key(key), f"{EXTENSION}11"), 11),
        # RFC 6455 9.1: a header's lines are one list (here an empty one, then the extension).
        (lambda key: switching(accept_key(key), f"Sec-WebSocket-Extensions: \r\n{EXTENSION}10\r\n"), 10),
    ],
    ids=["bare-lf-lines", "two-lines"],
)
def test_the_agreement_is_read_from_the_lines_websocket_client_read(answer: object, bits: int) -> None:
    server = HandshakeServer(answer)
    conn = wsthreads.dial(server.url, wsthreads.ClientConfig(compression="deflate", timeout=5))
    try:
        assert conn.compression is not None and conn.compression.receive_window_bits == bits
    finally:
        conn.abort()
        conn.start()
        conn.wait_closed()
        server.close()


def frames_until_eof(conn: socket.socket) -> list[tuple[int, bytes]]:
    conn.settimeout(5)
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except OSError:
        pass
    return decode_frames(data)


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(OP_PING, b"p" * 126, mask=False),  # a control frame over 125 bytes
        encode_frame(OP_CLOSE, struct.pack("!H", 1000), fin=False, mask=False),  # a fragmented close
    ],
    ids=["ping-126-bytes", "fragmented-close"],
)
@pytest.mark.slow
def test_an_illegal_control_frame_gets_1002_and_no_answer(frame: bytes) -> None:
    seen: list[list[tuple[int, bytes]]] = []

    def script(conn: socket.socket) -> None:
        conn.sendall(frame)
        seen.append(frames_until_eof(conn))

    server = HandshakeServer(lambda key: switching(accept_key(key)), script)
    result = run_client("--url", server.url, "--count", "0", "--timeout", "3")
    server.close()
    assert result.returncode == 1
    one_line(result.stderr, "closing with 1002 (protocol error)")
    (frames,) = seen
    assert [opcode for opcode, _ in frames] == [OP_CLOSE]
    assert frames[0][1][:2] == struct.pack("!H", 1002)
    assert OP_PONG not in [opcode for opcode, _ in frames]


@pytest.mark.parametrize("payload", [b"x" * 1000, b""], ids=["with-payload", "header-alone"])
@pytest.mark.slow
def test_a_frame_announcing_a_huge_message_gets_1009_before_its_payload(payload: bytes) -> None:
    """A header announcing 2**40 bytes (with or without payload after it): 1009 at once, nothing buffered."""
    seen: list[list[tuple[int, bytes]]] = []

    def script(conn: socket.socket) -> None:
        conn.sendall(bytes([0x82, 127]) + struct.pack("!Q", 1 << 40) + payload)
        seen.append(frames_until_eof(conn))

    server = HandshakeServer(lambda key: switching(accept_key(key)), script)
    started = time.monotonic()
    result = run_client("--url", server.url, "--count", "0", "--timeout", "3")
    server.close()
    assert time.monotonic() - started < 5
    one_line(result.stderr, "closing with 1009 (message too big) 'message over 1048576 bytes'")
    (frames,) = seen
    assert frames[0][0] == OP_CLOSE and frames[0][1][:2] == struct.pack("!H", 1009)


@pytest.mark.parametrize("code, sent", [(1005, 1000), (1006, 1000), (4000, 4000)])
@pytest.mark.slow
def test_close_never_sends_1005_or_1006_and_cuts_long_reasons(code: int, sent: int) -> None:
    ours, theirs = socket.socketpair()
    conn = Connection(ours, client=True, close_timeout=0.3)
    conn.start()
    conn.close(code, "why " * 100)
    frames = frames_until_eof(theirs)
    conn.wait_closed()
    theirs.close()
    assert frames[0][0] == OP_CLOSE
    payload = frames[0][1]
    assert struct.unpack("!H", payload[:2])[0] == sent
    assert len(payload) <= 125


@pytest.mark.slow
def test_a_frame_in_the_same_write_as_the_101_is_not_lost() -> None:
    """Guards a dependency's private behaviour: websocket-client reads the 101 one byte at a time.

    So nothing of what follows the response is left in its buffers, and our
    reader, which takes the socket over after the dial, sees every frame. If
    this fails after an upgrade of websocket-client, it has begun to read
    ahead: hand what it buffered to the Connection as ``pending`` (as the
    server side does with the HTTP server's read-ahead), or pin the version.
    """
    server = RawServer(lambda sock: time.sleep(0.5), behind=bytes([0x81, 5]) + b"first")
    try:
        conn = wsthreads.dial(server.url)
        conn.start()
        try:
            assert conn.recv(timeout=5) == "first"
        finally:
            conn.abort()
    finally:
        server.close()


# --- Servers that misbehave --------------------------------------------------------------------------
# The client against servers that misbehave: one line, never a hang or a traceback.


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


def nothing(conn: socket.socket) -> None:
    """A script that does nothing more after the handshake."""


@pytest.mark.parametrize("status", [b"403 Forbidden", b"404 Not Found", b"500 Internal Server Error"])
@pytest.mark.slow
def test_http_error_instead_of_101_names_the_status(status: bytes) -> None:
    server = RawServer(nothing, answer=b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    result = run_client("--url", server.url)
    server.close()
    assert result.returncode == 1
    one_line(result.stderr, f"HTTP {status.decode()}")


def test_a_plain_web_server_is_told_apart_from_a_refusal() -> None:
    """A server that answers 200 (any web page) did not upgrade: the line says so, exactly."""
    server = RawServer(nothing, answer=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    result = run_client("--url", server.url)
    server.close()
    assert result.returncode == 1
    assert result.stderr == (
        f"sync_client.py: error: {server.url} answered like a plain web server (HTTP 200 OK) and did"
        " not upgrade: is this a WebSocket endpoint?\n"
    )


def test_wss_to_a_plain_server_says_it_does_not_speak_tls(
    start_server: Callable[..., ServerProgram],
) -> None:
    """wss:// to a ws:// server: not OpenSSL's WRONG_VERSION_NUMBER, but what happened and what to try."""
    server = start_server("--count", "0")
    secure = server.url.replace("ws://", "wss://")
    result = run_client("--url", secure)
    assert result.returncode == 1
    assert result.stderr == (
        f"sync_client.py: error: {secure}: the server does not speak TLS on that port; try {server.url}\n"
    )


def test_wrong_accept_key_is_refused() -> None:
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: d3Jvbmcgd3Jvbmcgd3Jvbmc=\r\n\r\n"
    )
    server = RawServer(nothing, answer=answer)
    result = run_client("--url", server.url)
    server.close()
    assert result.returncode == 1
    one_line(result.stderr, "answered the handshake wrongly")


def closing_reply(frames: bytes) -> Callable[[socket.socket], None]:
    """A script: send ``frames``, then record the client's close frame."""

    def script(conn: socket.socket) -> None:
        conn.sendall(frames)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        replies.append(data)

    replies: list[bytes] = []
    script.replies = replies  # type: ignore[attr-defined]
    return script


def close_code_sent(data: bytes) -> int:
    """The code in the client's (masked) close frame within ``data``."""
    payload = next(payload for opcode, payload in decode_frames(data) if opcode == 0x8)
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


@pytest.mark.slow
def test_a_broken_frame_from_the_server_gets_its_close_code_and_one_line() -> None:
    """The client fails the session with 1002, one line on stderr, exit 1.

    Which code each broken rule gets on the client's side is test_frames.py's
    test_a_masked_server_frame_is_refused_by_the_client and
    test_the_client_parser_keeps_the_same_rules.
    """
    script = closing_reply(encode_frame(OP_TEXT, b"hidden", mask=True))  # a server frame must not be
    server = RawServer(script)
    result = run_client("--url", server.url, "--count", "0", "--timeout", "3")
    server.close()
    assert result.returncode == 1
    one_line(result.stderr, "masked frame")
    assert close_code_sent(script.replies[0]) == 1002  # type: ignore[attr-defined]


@pytest.mark.slow
def test_server_that_never_closes_is_left_in_bounded_time() -> None:
    """No close reply ever comes: the client closes, waits a bounded time, and exits."""

    took: list[float] = []

    def deaf(conn: socket.socket) -> None:
        """Timed from the server's side, so the client interpreter's start does not count."""
        started = time.monotonic()
        while conn.recv(4096):
            pass
        took.append(time.monotonic() - started)

    server = RawServer(deaf)
    result = run_client("--url", server.url, "--count", "1", "--linger", "0.2")
    server.close()
    assert took and took[0] < 3, took  # linger 0.2 s, the close's 1 s, a margin
    assert result.returncode == 0, result.stderr
    one_line(result.stderr, "did not answer the close")


def test_server_pings_are_answered() -> None:
    """Pings from the server get pongs with the same payload."""
    pongs: list[bytes] = []

    def pinger(conn: socket.socket) -> None:
        conn.sendall(encode_frame(OP_PING, b"one", mask=False) + encode_frame(OP_PING, b"two", mask=False))
        data = b""
        while len(decode_frames(data)) < 2:
            data += conn.recv(4096)
        pongs.extend(payload for opcode, payload in decode_frames(data) if opcode == OP_PONG)
        conn.sendall(encode_frame(0x8, struct.pack("!H", 1000), mask=False))

    server = RawServer(pinger)
    result = run_client("--url", server.url, "--count", "0", "--linger", "5")
    server.close()
    assert result.returncode == 0, result.stderr
    assert pongs == [b"one", b"two"]


def test_a_redirect_is_one_line_and_final() -> None:
    """Guards a dependency's words: websocket-client reports a redirect only as 'Redirect limit exhausted'.

    ``describe_dial_error`` and ``is_retryable`` sort websocket-client's
    errors by the words "Redirect" and "Header" in them. If this fails after
    an upgrade, it words them otherwise: find the new words (or an exception
    class, if it has gained one) and sort by those.
    """
    server = RawServer(
        lambda sock: None, answer=b"HTTP/1.1 301 Moved Permanently\r\nLocation: ws://127.0.0.1:1/ws\r\n\r\n"
    )
    try:
        with pytest.raises(wsthreads.ConnectError) as failed:
            wsthreads.dial(server.url)
    finally:
        server.close()
    assert str(failed.value) == f"{server.url} answered with a redirect, which is not followed"
    assert not failed.value.retryable


# --- The embedding API -------------------------------------------------------------------------------
# The client's embedding API: handshake headers, subprotocols, keepalive pings, recv() and iteration.
#
# The independent peer is a ``websockets`` server that lets in only a client
# with the right Authorization header and the ``chat`` subprotocol; hostile
# peers are raw sockets (:class:`helpers.RawServer`) that never answer a ping
# or flood a client that does not read.


T = TypeVar("T")

TOKEN = "Bearer xyz"
REFUSAL = "a token and the chat subprotocol are required"


class Background(Generic[T]):
    """``function()`` in a daemon thread: a wait that never ends fails the test instead of hanging it."""

    def __init__(self, function: Callable[[], T]) -> None:
        self._values: list[T] = []
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self._thread.start()

    def _run(self, function: Callable[[], T]) -> None:
        try:
            self._values.append(function())
        except BaseException as error:
            self._errors.append(error)

    def done(self) -> bool:
        return bool(self._values or self._errors)

    def result(self, timeout: float = WAIT) -> T:
        """What ``function()`` returned (or raised); fails the test after ``timeout`` seconds."""
        self._thread.join(timeout)
        if self._errors:
            raise self._errors[0]
        assert self._values, f"still waiting after {timeout} s"
        return self._values[0]


def config(**settings: Any) -> ClientConfig:
    """A ClientConfig from settings of any shape (a dict of headers, a list of subprotocols)."""
    return ClientConfig(**settings)


# --- the websockets server ------------------------------------------------------------


def echo(ws: ServerConnection) -> None:
    """Send every message back until the client goes."""
    try:
        for message in ws:
            ws.send(message)
    except ConnectionClosed:
        pass


def offered(request: Request) -> list[str]:
    """The subprotocols a request offers."""
    return [
        name.strip()
        for value in request.headers.get_all("Sec-WebSocket-Protocol")
        for name in value.split(",")
    ]


def require_token_and_chat(connection: ServerConnection, request: Request) -> Response | None:
    """process_request: 401 unless the request has our token and offers ``chat``."""
    if request.headers.get("Authorization") != TOKEN or "chat" not in offered(request):
        return connection.respond(HTTPStatus.UNAUTHORIZED, f"{REFUSAL}\n")
    return None


@pytest.fixture
def peer() -> Iterator[Callable[..., str]]:
    """``start(handler, **options)``: a websockets server on port 0, stopped at the end; its URL."""
    servers: list[tuple[Server, threading.Thread]] = []

    def start(handler: Callable[[ServerConnection], None] = echo, **options: Any) -> str:
        server = serve(handler, "127.0.0.1", 0, **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws"

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join(WAIT)


@pytest.fixture
def guarded(peer: Callable[..., str]) -> str:
    """The URL of an echoing websockets server that requires our token and the ``chat`` subprotocol."""
    return peer(echo, process_request=require_token_and_chat, subprotocols=["chat"])


# --- headers and subprotocols -----------------------------------------------------------


def test_headers_and_subprotocols_open_a_session_on_a_server_that_requires_them(guarded: str) -> None:
    with WebSocketClient(
        guarded, headers={"Authorization": TOKEN}, subprotocols=["chat.v2", "chat"]
    ) as client:
        assert client.subprotocol == "chat"
        client.send("hello")
        assert client.recv(timeout=WAIT) == "hello"
    assert client.subprotocol is None  # no connection any more


@pytest.mark.parametrize(
    "settings",
    [
        {"subprotocols": ["chat"]},
        {"headers": {"Authorization": "Bearer wrong"}, "subprotocols": ["chat"]},
        {"headers": [("Authorization", TOKEN)]},
    ],
    ids=["no-token", "wrong-token", "no-subprotocol"],
)
def test_without_the_token_or_the_subprotocol_the_dial_fails_with_a_one_line_401(
    guarded: str, settings: dict[str, Any]
) -> None:
    with pytest.raises(ConnectError) as failed:
        WebSocketClient(guarded, **settings).connect()
    assert str(failed.value) == f"{guarded} refused the WebSocket handshake: HTTP 401 Unauthorized: {REFUSAL}"
    assert not failed.value.retryable


@pytest.mark.slow
def test_cli_sends_the_header_offers_the_subprotocols_and_names_the_one_chosen(guarded: str) -> None:
    result = run_client(
        *("--url", guarded, "--header", f"Authorization: {TOKEN}"),
        *("--subprotocol", "chat.v2", "--subprotocol", "chat", "--count", "1", "--linger", "0.5"),
    )
    assert result.returncode == 0, result.stderr
    assert f"connected to {guarded} (subprotocol chat)" in result.stdout
    assert "received: client message 1 of 1" in result.stdout


def test_cli_without_the_header_prints_the_401_on_one_line(guarded: str) -> None:
    result = run_client("--url", guarded, "--subprotocol", "chat", "--count", "1")
    assert result.returncode == 1
    one_line(result.stderr, f"refused the WebSocket handshake: HTTP 401 Unauthorized: {REFUSAL}")


def test_a_subprotocol_the_client_never_offered_fails_the_dial(peer: Callable[..., str]) -> None:
    url = peer(echo, subprotocols=["chat"], select_subprotocol=lambda connection, offered: "superchat")
    with pytest.raises(ConnectError) as failed:
        WebSocketClient(url, subprotocols=["chat"]).connect()
    assert (
        str(failed.value)
        == f"{url} answered the handshake wrongly: subprotocol 'superchat' was never offered"
    )
    assert not failed.value.retryable


def test_a_server_that_picks_no_subprotocol_leaves_it_none(
    start_server: Callable[..., ServerProgram],
) -> None:
    """RFC 6455 lets a server pick none of those offered (ours does): the session opens without one."""
    server = start_server("--echo", "--quiet")
    with WebSocketClient(server.url, subprotocols=["chat"]) as client:
        assert client.connected and client.subprotocol is None
        client.send("still fine")
        assert client.recv(timeout=WAIT) == "still fine"


def test_every_header_is_sent_once_with_our_value(peer: Callable[..., str]) -> None:
    """Origin and Cookie, which websocket-client writes itself, too: ours replaces or joins its own."""
    seen: list[Headers] = []

    def record(connection: ServerConnection, request: Request) -> None:
        seen.append(request.headers)

    ours = {
        "Origin": "https://app.example",
        "Cookie": "session=abc",
        "X-Trace": "t-1",
        "Authorization": TOKEN,
    }
    with WebSocketClient(peer(echo, process_request=record), headers=ours):
        pass
    (headers,) = seen
    assert {name: headers.get_all(name) for name in ours} == {name: [value] for name, value in ours.items()}


def test_headers_may_be_a_dict_or_pairs_and_are_kept_as_a_tuple() -> None:
    pairs = (("Authorization", TOKEN), ("X-Trace", "t-1"))
    assert config(headers=dict(pairs)).headers == pairs
    assert config(headers=[list(pair) for pair in pairs]).headers == pairs
    assert config(subprotocols=["chat", "chat.v2"]).subprotocols == ("chat", "chat.v2")
    assert ClientConfig().ping_interval is None  # no pings unless asked


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "sec-websocket-extensions",
    ],
)
def test_a_header_the_handshake_sets_itself_may_not_be_given(name: str) -> None:
    with pytest.raises(ValueError, match=f"^header '{name}' is set by the WebSocket handshake itself$"):
        WebSocketClient("ws://127.0.0.1:9/ws", headers={name: "x"})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"headers": {"X Token": "1"}}, "not a valid header name (an RFC 7230 token): 'X Token'"),
        ({"headers": {"": "1"}}, "not a valid header name (an RFC 7230 token): ''"),
        ({"headers": {"X-Token": "1\r\nX-Evil: 2"}}, "the value of header 'X-Token' must be printable ASCII"),
        ({"headers": {"X-Token": "1\n"}}, "the value of header 'X-Token' must be printable ASCII"),
        ({"headers": [("Accept", "a"), ("accept", "b")]}, "header 'accept' is given twice"),
        (
            {"subprotocols": ["chat", "chat v2"]},
            "not a valid subprotocol name (an RFC 7230 token): 'chat v2'",
        ),
        ({"ping_interval": 0}, "ping_interval must be a number of seconds above 0 (None: off): 0"),
        ({"ping_interval": float("nan")}, "ping_interval must be a number of seconds above 0"),
        ({"max_queue": 0}, "max_queue must be a whole number of at least 1: 0"),
    ],
)
def test_bad_settings_raise_a_one_line_value_error_before_any_dial(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        WebSocketClient("ws://127.0.0.1:9/ws", **settings)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"headers": "Accept: a"},
        {"headers": [("Accept",)]},
        {"headers": [("Accept", 1)]},
        {"subprotocols": "chat"},
    ],
    ids=["headers-string", "header-alone", "header-number", "subprotocols-string"],
)
def test_settings_of_the_wrong_shape_raise_type_error(settings: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        config(**settings)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--header", "Authorization Bearer xyz"], "argument --header: not a header 'Name: value'"),
        (["--header", "Bad Name: x"], "argument --header: not a valid header name (an RFC 7230 token)"),
        (
            ["--header", "Sec-WebSocket-Key: x"],
            "header 'Sec-WebSocket-Key' is set by the WebSocket handshake",
        ),
        (["--header", "Accept: a", "--header", "accept: b"], "header 'accept' is given twice"),
        (["--subprotocol", "chat v2"], "argument --subprotocol: not a valid subprotocol name: 'chat v2'"),
        (["--ping-interval", "-1"], "argument --ping-interval: must be 0 or more seconds"),
    ],
    ids=["no-colon", "bad-name", "reserved", "twice", "bad-subprotocol", "negative-ping"],
)
@pytest.mark.slow
def test_cli_bad_header_or_subprotocol_is_a_one_line_usage_error(args: list[str], message: str) -> None:
    result = run_client("--url", "ws://127.0.0.1:9/ws", *args, timeout=WAIT)
    assert result.returncode == 2
    one_line(result.stderr, message)
    assert result.stdout == ""


# --- keepalive pings --------------------------------------------------------------------


class Recorder(RawServer):
    """A raw server that completes the handshake, then reads everything and answers nothing."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        super().__init__(lambda conn: self.frames.extend(frames_until_eof(conn)))


@pytest.mark.slow
def test_keepalive_pings_drop_a_server_that_never_answers_them() -> None:
    """A ping after ``interval``, no pong by the next: 1011 "keepalive ping timeout", every thread gone."""
    before = set(threading.enumerate())
    interval, close_timeout = 0.5, 0.3
    server = Recorder()
    client = WebSocketClient(server.url, ping_interval=interval, close_timeout=close_timeout).connect()
    started = time.monotonic()
    with pytest.raises(Closed) as ended:
        client.recv(timeout=WAIT)
    took = time.monotonic() - started
    assert 2 * interval - 0.2 <= took < 2 * interval + close_timeout + 1.0
    assert (ended.value.code, ended.value.reason) == (1011, "keepalive ping timeout")
    assert client.closed is ended.value
    assert wait_until(lambda: not alive_client_threads(before), timeout=2.0)
    server.close()
    assert [opcode for opcode, _ in server.frames] == [OP_PING, OP_CLOSE]
    assert server.frames[1][1][:2] == (1011).to_bytes(2, "big")


@pytest.mark.slow
def test_cli_ping_interval_drops_a_server_that_never_answers() -> None:
    server = Recorder()
    started = time.monotonic()
    result = run_client("--url", server.url, "--count", "0", "--linger", "30", "--ping-interval", "0.5")
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert "closing with 1011 (internal error) 'keepalive ping timeout'" in result.stderr, result.stderr
    server.close()


def run_object_client(url: str) -> None:
    """A WebSocketClient with the default settings, 1.5 s long."""
    with WebSocketClient(url):
        time.sleep(1.5)


@pytest.mark.parametrize(
    "run",
    [
        lambda url: run_client("--url", url, "--count", "0", "--linger", "1.5"),
        lambda url: run_client("--url", url, "--count", "0", "--linger", "1.5", "--ping-interval", "0"),
        run_object_client,
    ],
    ids=["cli-default", "cli-zero", "object-default"],
)
@pytest.mark.slow
def test_no_ping_is_sent_when_pings_are_off(run: Callable[[str], object]) -> None:
    server = Recorder()
    run(server.url)
    server.close()
    assert [opcode for opcode, _ in server.frames] == [OP_CLOSE]


# --- recv() and iteration ---------------------------------------------------------------


def test_recv_raises_timeout_error_when_nothing_comes(start_server: Callable[..., ServerProgram]) -> None:
    server = start_server("--count", "0")
    with WebSocketClient(server.url) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"^no message within 0\.2 s$"):
            client.recv(timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 2.0
        assert client.connected


def test_sending_what_is_not_a_message_raises_and_sends_nothing(
    start_server: Callable[..., ServerProgram],
) -> None:
    """send(5) once sent five NUL bytes: only str, bytes, bytearray and memoryview go out."""
    server = start_server("--echo")
    with WebSocketClient(server.url) as client:
        careless: list[tuple[Any, type[Exception], str]] = [
            (5, TypeError, "not int"),
            ([104, 105], TypeError, "not list"),
            (None, TypeError, "not NoneType"),
            ("\ud800", ValueError, "not valid Unicode"),
        ]
        for value, error, text in careless:
            with pytest.raises(error, match=text):
                client.send(value)

        class Odd(bytes):
            def __bytes__(self) -> bytes:
                return b"not these"

        binary_like: list[Any] = [bytearray(b"ba"), memoryview(b"mv"), Odd(b"own")]
        for message in [*binary_like, "ok"]:
            client.send(message)
        assert [client.recv(timeout=WAIT) for _ in range(4)] == [b"ba", b"mv", b"own", "ok"]
        assert client.connected


def test_iteration_yields_every_message_then_ends_with_the_close_code(peer: Callable[..., str]) -> None:
    def three_then_4000(ws: ServerConnection) -> None:
        for number in range(1, 4):
            ws.send(f"message {number}")
        ws.close(4000, "done")

    client = WebSocketClient(peer(three_then_4000)).connect()
    assert Background(lambda: list(client)).result() == ["message 1", "message 2", "message 3"]
    with pytest.raises(Closed) as ended:
        client.recv(timeout=WAIT)
    assert (ended.value.code, ended.value.reason) == (4000, "done")
    assert client.closed is ended.value
    assert Background(lambda: list(client)).result() == []
    client.close()


@pytest.mark.slow
def test_recv_keeps_waiting_across_a_reconnect(start_server: Callable[..., ServerProgram]) -> None:
    """The server goes away (1001) while recv() waits; it comes back, and recv() returns its echo."""
    first = start_server("--echo", "--quiet")
    client = WebSocketClient(first.url, reconnect=True, backoff=(0.05, 0.2)).connect()
    try:
        client.send("before")
        assert client.recv(timeout=WAIT) == "before"
        waiting = Background(lambda: client.recv(timeout=3 * WAIT))
        first.signal()
        assert first.wait() == 0
        assert wait_until(lambda: not client.connected)
        start_server("--echo", "--quiet", "--port", str(first.port))
        assert wait_until(lambda: client.connected)
        assert not waiting.done()  # still waiting, across the 1001
        client.send("after")
        assert waiting.result() == "after"
    finally:
        client.close()
    with pytest.raises(Closed) as ended:
        client.recv(timeout=WAIT)
    assert ended.value.code == 1000


def test_recv_and_iteration_need_a_connection_and_no_on_message(
    start_server: Callable[..., ServerProgram],
) -> None:
    never_connected = WebSocketClient("ws://127.0.0.1:9/ws")
    with pytest.raises(NotConnected, match="call connect"):
        never_connected.recv(timeout=0)
    with pytest.raises(NotConnected, match="call connect"):
        iter(never_connected)
    server = start_server("--count", "0")
    with WebSocketClient(server.url, on_message=lambda message: None) as client:
        with pytest.raises(RuntimeError, match="messages go to on_message"):
            client.recv(timeout=0)
        with pytest.raises(RuntimeError, match="messages go to on_message"):
            iter(client)


def flooding(conn: socket.socket) -> None:
    """After the handshake: text frames, one a millisecond, until the client goes; read nothing."""
    frame = encode_frame(OP_TEXT, b"x" * 1000, mask=False)
    try:
        while True:
            conn.sendall(frame)
            time.sleep(0.001)
    except OSError:
        pass


@pytest.mark.slow
def test_a_full_queue_holds_the_reader_and_close_still_ends_everything_in_time() -> None:
    """Nobody reads: the queue fills to max_queue and the reader waits (TCP pushes back). close()
    still ends the reader, the supervisor and the socket within close_timeout plus a second,
    against a peer that keeps sending and never answers the close; what was queued stays readable."""
    before = set(threading.enumerate())
    server = RawServer(flooding)
    client = WebSocketClient(server.url, max_queue=4, close_timeout=0.5).connect()
    assert isinstance(client.messages, queue.Queue)
    assert wait_until(client.messages.full)
    time.sleep(0.3)
    assert client.messages.qsize() == 4  # the reader takes nothing more
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 0.5 + 1.0
    assert not client.connected
    assert alive_client_threads(before) == set()
    left = Background(lambda: list(client)).result()
    assert len(left) >= 4 and set(left) == {"x" * 1000}
    assert client.closed is not None and client.closed.code == 1000
    server.close()


class Greeting:
    """A client Handler: says hello once per session, collects what comes back."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.sessions = 0

    def on_message(self, conn: Any, message: Any) -> None:
        self.received.append(message)

    def run(self, conn: Any) -> None:
        self.sessions += 1
        conn.send("hello")


def test_a_handler_runs_per_session_and_run_returns_how_the_last_one_ended(
    serve: Callable[..., Any],
) -> None:
    """handler= (a Handler object): its run sends, its on_message gets the echo; run() returns
    the session's Closed once the client lingers out (1000, this side first)."""
    server = serve(echo=True)
    greeting = Greeting()
    closed = WebSocketClient(server.url, handler=greeting).run(linger=0.3)
    assert (closed.code, closed.by_peer) == (1000, False)
    assert greeting.received == ["hello"] and greeting.sessions == 1


def test_a_function_handler_reads_with_recv_and_its_return_closes_with_1000(
    serve: Callable[..., Any],
) -> None:
    """handler= (a function): it pulls with conn.recv, as a server's handler function does."""
    server = serve(echo=True)
    seen: list[Any] = []

    def ask(conn: Any) -> None:
        conn.send("ping me")
        seen.append(conn.recv(timeout=WAIT))

    closed = WebSocketClient(server.url, handler=ask).run()
    assert seen == ["ping me"] and closed.code == 1000


def test_close_from_another_thread_ends_run_in_time_even_mid_session() -> None:
    """The command line's Ctrl+C: close() from the main thread while run() holds a session with a
    server that never answers the close: run() returns within close_timeout plus a second."""

    def deaf(conn: socket.socket) -> None:
        conn.settimeout(WAIT)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass

    server = RawServer(deaf)
    client = WebSocketClient(server.url, handler=Greeting())
    outcome: list[Closed] = []
    runner = threading.Thread(target=lambda: outcome.append(client.run()), name="test-runner")
    runner.start()
    assert wait_until(lambda: client.connected)
    started = time.monotonic()
    client.close()
    runner.join(3.0)
    assert not runner.is_alive() and outcome
    assert time.monotonic() - started < 2.5
    server.close()


def test_a_client_runs_its_sessions_once_connect_or_run(serve: Callable[..., Any]) -> None:
    """connect() then run(), or run() then connect(): RuntimeError, one line; nothing dialed twice."""
    server = serve(echo=True)
    with WebSocketClient(server.url) as client, pytest.raises(RuntimeError, match="already started"):
        client.run()
    ran = WebSocketClient(server.url, handler=Greeting())
    ran.run(linger=0.1)
    with pytest.raises(RuntimeError, match="runs its sessions in run"):
        ran.connect()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"handler": Greeting(), "on_message": print}, "give on_message or handler, not both"),
        ({"handler": lambda conn: None, "resume": Resume}, "resume needs every message"),
    ],
    ids=["handler-and-on-message", "resume-with-a-function"],
)
def test_handler_settings_that_cannot_work_are_refused_before_any_dial(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        WebSocketClient("ws://127.0.0.1:9/ws", **settings)


def test_with_a_handler_recv_says_where_the_messages_go(serve: Callable[..., Any]) -> None:
    server = serve(echo=True)
    with (
        WebSocketClient(server.url, handler=Greeting()) as client,
        pytest.raises(RuntimeError, match="messages go to on_message or the handler"),
    ):
        client.recv(timeout=0.1)


@pytest.mark.parametrize("linger", ["3", float("nan"), float("inf"), -1, 0, 1e10])
def test_a_linger_that_cannot_work_is_refused_before_any_dial(linger: Any) -> None:
    """Not a TypeError or OverflowError from inside the session, with its connection left open."""
    client = WebSocketClient("ws://127.0.0.1:9/ws", handler=Greeting())
    with pytest.raises(ValueError, match=r"linger must be a number of seconds above 0|linger is too large"):
        client.run(linger=linger)


@pytest.mark.parametrize("option", ["--linger", "--interval", "--timeout"])
def test_cli_seconds_past_what_the_clock_holds_are_a_usage_error(option: str) -> None:
    result = run_client(option, "1e300")
    assert result.returncode == 2
    one_line(result.stderr.splitlines()[-1], "is too large")


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (wsthreads.Echo, r"handler is an object or a function: Echo\(\), not the class"),
        (type("OnlyOnMessage", (), {"on_message": lambda self, conn, message: None})(), "has no run"),
        (42, "handler is a Handler object or a function handler"),
    ],
    ids=["a-class", "no-run", "a-number"],
)
def test_a_handler_of_the_wrong_shape_is_refused_before_any_dial(handler: Any, message: str) -> None:
    """Not dialed, failed with 1011, and (reconnecting) dialed again for ever."""
    with pytest.raises(TypeError, match=message):
        WebSocketClient("ws://127.0.0.1:9/ws", handler=handler, reconnect=True)


def test_close_from_the_clients_own_handler_in_its_supervisor_thread_only_asks(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that decides the session is over calls client.close(): no 'cannot join current thread'."""
    holder: list[WebSocketClient] = []
    went_on: list[bool] = []

    class Stops:
        def on_message(self, conn: Any, message: Any) -> None:
            pass

        def run(self, conn: Any) -> None:
            holder[0].close()
            went_on.append(True)

    server = serve(echo=True)
    client = WebSocketClient(server.url, handler=Stops())
    holder.append(client)
    client.connect()
    assert wait_until(lambda: client.closed is not None)
    assert client.closed is not None and client.closed.code == 1000
    assert not [r for r in caplog.records if "error in the session handler" in r.getMessage()]
    assert went_on == [True]
    client.close()


def test_run_raises_why_reconnecting_stopped_when_a_redial_is_refused_for_good(
    serve: Callable[..., Any],
) -> None:
    """The server restarts (1012), then refuses the redial with 401: run() says so, as recv() would."""
    calls: list[int] = []

    def authenticate(request: Any) -> Any:
        calls.append(1)
        return "ada" if len(calls) == 1 else None

    server = serve(handler=lambda conn: conn.close(1012, "restart"), authenticate=authenticate)
    client = WebSocketClient(server.url, handler=Greeting(), reconnect=True, backoff=(0.05, 0.1))
    with pytest.raises(ConnectError, match="401 Unauthorized") as refused:
        client.run()
    assert not refused.value.retryable


def test_after_a_failed_first_dial_run_or_connect_may_try_again(serve: Callable[..., Any]) -> None:
    """As after a failed connect(): nothing ran, so the client may dial again (the server came up)."""
    port = free_port()
    client = WebSocketClient(f"ws://127.0.0.1:{port}/ws", timeout=2)
    with pytest.raises(ConnectError, match="connection refused"):
        client.run()
    with pytest.raises(ConnectError, match="connection refused"):
        client.connect()


def test_a_lookup_that_hangs_is_bounded_by_the_timeout_and_cut_by_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The system's resolver cannot be interrupted: the dial stops waiting for it at its deadline,
    or at once on close(), and leaves it to end in its own thread."""
    real = socket.getaddrinfo

    def slow(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow.example":
            time.sleep(3)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"within 0\.5 s"):
        WebSocketClient("ws://slow.example/ws", timeout=0.5).connect()
    assert time.monotonic() - started < 1.5
    client = WebSocketClient("ws://slow.example/ws", timeout=30)
    assert_close_cuts_the_dial_short(client, after=0.3)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def resolvers() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "resolver"}


def test_a_name_idna_cannot_encode_is_one_line_and_at_once() -> None:
    """A label over 63 characters: not a resolver thread's traceback and 'no answer within 3 s'."""
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"cannot find the host of .*not a valid host name"):
        WebSocketClient(f"ws://{'a' * 70}.example/ws", timeout=3).connect()
    assert time.monotonic() - started < 1.5


def test_dials_through_a_hung_resolver_share_one_lookup_and_keep_no_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client redialing while DNS hangs: one resolver thread for the host, not one per dial, and
    each dial's socket pair closed as it gives up; once the lookup ends, nothing is left."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hung(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hung.example":
            release.wait(WAIT)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hung)
    earlier = resolvers()  # other tests' lookups, still ending in this process
    before = fds()
    for _ in range(20):
        with pytest.raises(ConnectError):
            WebSocketClient("ws://hung.example:9/ws", timeout=0.05).connect()
    assert fds() <= before  # fewer if something else of this process let go meanwhile
    assert len(resolvers() - earlier) == 1
    release.set()
    assert wait_until(lambda: not resolvers() - earlier)
    assert fds() <= before


def test_a_late_answer_writes_nothing_to_a_dial_that_gave_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup wakes its dials by closing their ends, never by a write: a process that set SIGPIPE
    back to its default cannot be killed by an answer that came after its dial failed."""
    release = threading.Event()
    real = socket.getaddrinfo

    def late(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "late.example":
            release.wait(WAIT)
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", late)
    sent: list[Any] = []

    def send(self: socket.socket, *args: Any) -> int:
        sent.append(args)
        return 0

    monkeypatch.setattr(socket.socket, "send", send)
    with pytest.raises(ConnectError, match=r"within 0\.1 s"):
        WebSocketClient("ws://late.example:9/ws", timeout=0.1).connect()
    release.set()
    assert wait_until(lambda: not any(t.name == "resolver" and t.is_alive() for t in threading.enumerate()))
    assert sent == []


def test_connect_on_a_closed_client_leaves_no_socket_behind() -> None:
    """close() first, then connect(): 'closed while dialing', and the lookup's socket pair closed."""
    client = WebSocketClient("ws://localhost:9/ws", timeout=1)
    client.close()
    before = fds()
    errors = []
    for _ in range(20):
        with pytest.raises(ConnectError, match="the client was closed") as failed:
            client.connect()
        errors.append(failed.value)  # kept: a socket only the collector would close would show
    assert fds() <= before
