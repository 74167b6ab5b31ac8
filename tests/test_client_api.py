"""The client's embedding API: handshake headers, subprotocols, keepalive pings, recv() and iteration.

The independent peer is a ``websockets`` server that lets in only a client
with the right Authorization header and the ``chat`` subprotocol; hostile
peers are raw sockets (:class:`helpers.RawServer`) that never answer a ping
or flood a client that does not read.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any, Generic, TypeVar

import pytest
from helpers import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    WAIT,
    RawServer,
    ServerProgram,
    encode_frame,
    run_client,
    wait_until,
)
from test_client_lifecycle import alive_client_threads
from test_client_strict import frames_until_eof, one_line
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from wsthreads import Closed, ConnectError, NotConnected, WebSocketClient
from wsthreads.client import ClientConfig
from wsthreads.pubsub import Resume

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
