"""Extensions (wsthreads.extension): headers on the 101, a first step, an end, a close at once.

The app's generic hooks, which pub/sub (wsthreads.pubsub.PubSub) is one user
of. Peers are websockets' synchronous client; servers are real, on port 0.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import open_client, upgrade, wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import wsthreads
from wsthreads import Connection, Opening

Serve = Callable[..., wsthreads.RunningServer]
WAIT = 10.0


class Recorder:
    """An extension that records what the app asks of it, and answers with ``opening(conn)``."""

    def __init__(self, name: str = "x", opening: Callable[[Connection], Opening] | None = None) -> None:
        self.name = name
        self.opening = opening or (lambda conn: Opening())
        self.events: list[str] = []
        self.ended = threading.Event()

    def start(self, app: wsthreads.WebSocketApp) -> None:
        self.events.append("start")

    def open(self, conn: Connection) -> Opening:
        self.events.append("open")
        opening = self.opening(conn)
        if not isinstance(opening, Opening):
            return opening  # what the app must refuse
        end = opening.end

        def ending() -> None:
            self.events.append("end")
            if end is not None:
                end()
            self.ended.set()

        return Opening(headers=opening.headers, first=opening.first, end=ending, closing=opening.closing)

    def stop(self) -> None:
        self.events.append("stop")


def greet(conn: Connection) -> None:
    """A handler function: one message, then wait for the client to go."""
    conn.send("from the handler")
    for _ in conn:
        pass


class Greeter:
    """A handler object (parked in the netpoller): one message from run()."""

    def on_message(self, conn: Connection, message: Any) -> None:
        pass

    def run(self, conn: Connection) -> None:
        conn.send("from the handler")


@pytest.mark.parametrize("handler", [greet, Greeter()], ids=["function", "parked-object"])
def test_an_extension_adds_a_header_a_first_step_and_an_end(serve: Serve, handler: Any) -> None:
    """The header is on the 101; the first step's message comes before the handler's; the end runs once."""
    order: list[str] = []
    extension = Recorder(
        opening=lambda conn: Opening(
            headers=(("X-Room", f"room-{conn.request.query.get('room')}"),),  # type: ignore[union-attr]
            first=lambda: conn.send("from the extension"),
            end=lambda: order.append("ended"),
        )
    )
    server = serve(handler=handler, extensions=[extension])
    with connect(f"{server.url}?room=7") as client:
        assert client.response is not None and client.response.headers["X-Room"] == "room-7"
        assert [client.recv(timeout=WAIT) for _ in range(2)] == ["from the extension", "from the handler"]
    assert extension.ended.wait(WAIT)
    assert wait_until(lambda: not server.app.connections())
    assert order == ["ended"] and extension.events == ["start", "open", "end"]


def test_an_extensions_closing_closes_at_once_without_the_handler(serve: Serve) -> None:
    """closing=(code, reason): the client gets them; the handler never runs; the end still does."""
    ran: list[Connection] = []
    extension = Recorder(opening=lambda conn: Opening(closing=(4003, "no room for you")))
    server = serve(handler=ran.append, extensions=[extension])
    with connect(server.url) as client, pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=WAIT)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4003, "no room for you")
    assert extension.ended.wait(WAIT)
    assert ran == []


def test_extensions_open_in_order_end_in_reverse_and_a_closing_one_stops_the_rest(serve: Serve) -> None:
    """The one after a closing extension is not asked; each one asked gets its end, the last first."""
    ends: list[str] = []
    first = Recorder("first", lambda conn: Opening(end=lambda: ends.append("first")))
    second = Recorder("second", lambda conn: Opening(end=lambda: ends.append("second"), closing=(1008, "no")))
    third = Recorder("third")
    server = serve(extensions=[first, second, third])
    with connect(server.url) as client, pytest.raises(ConnectionClosed):
        client.recv(timeout=WAIT)
    assert first.ended.wait(WAIT) and second.ended.wait(WAIT)
    assert ends == ["second", "first"]
    assert third.events == ["start"]


def test_a_failing_extension_closes_its_session_with_1011_and_the_server_goes_on(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """open() raising, or answering something else than an Opening: 1011, one log line, next session fine."""
    answers = iter([RuntimeError("the rooms table is gone"), "not an opening", Opening()])

    def opening(conn: Connection) -> Any:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    server = serve(handler=greet, extensions=[Recorder(opening=opening)])
    for _ in range(2):
        with connect(server.url) as client, pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert closed.value.rcvd.reason == "internal error while opening the session"
    with connect(server.url) as client:
        assert client.recv(timeout=WAIT) == "from the handler"
    failures = [r.getMessage() for r in caplog.records if "the extension" in r.getMessage()]
    assert len(failures) == 2 and "the rooms table is gone" in failures[0]
    assert "must return an Opening" in failures[1]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("handler", [greet, Greeter()], ids=["function", "parked-object"])
def test_a_failing_first_step_is_the_handlers_1011_and_a_failing_end_leaves_the_rest(
    serve: Serve, caplog: pytest.LogCaptureFixture, handler: Any, error: type[BaseException]
) -> None:
    """first() raising closes with 1011, as a handler's error; an end raising anything is logged,
    and the other ends, and the session's admission, still end; shutdown finds none left."""

    def fail() -> None:
        raise RuntimeError("first step failed")

    def fail_end() -> None:
        raise error("end failed")

    ends: list[str] = []
    outer = Recorder("outer", lambda conn: Opening(end=lambda: ends.append("outer")))
    inner = Recorder("inner", lambda conn: Opening(first=fail, end=fail_end))
    server = serve(handler=handler, extensions=[outer, inner], max_connections=1)
    for _ in range(2):  # max_connections=1: the second session needs the first one's admission back
        with connect(server.url) as client, pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert wait_until(lambda: len(ends) == 1 + _)  # noqa: B023
    assert ends == ["outer", "outer"]
    assert any("an extension's end failed" in r.getMessage() for r in caplog.records)
    assert server.app.shutdown(timeout=2.0)  # no admission was left behind


def test_start_and_stop_follow_the_apps_life(serve: Serve) -> None:
    """Started when the app is made, stopped as its shutdown begins (once), started again on reopen."""
    extension = Recorder()
    app = wsthreads.create_app(extensions=[extension])
    assert extension.events == ["start"]
    for _ in range(2):
        server = wsthreads.start_server(app, "127.0.0.1", 0)
        server.shutdown()
    assert extension.events == ["start", "stop", "start", "stop"]


@pytest.mark.parametrize(
    ("opening", "message"),
    [
        ({"headers": [("X-Bad", "a\r\nSet-Cookie: x=1")]}, "must be printable ASCII"),
        ({"headers": [("Bad Name", "v")]}, "not a valid header name"),
        ({"headers": [("Sec-WebSocket-Accept", "v")]}, "is set by the WebSocket handshake itself"),
        ({"closing": (1006, "lost")}, "not a close code a peer may be sent: 1006"),
        ({"closing": (999, "")}, "not a close code a peer may be sent: 999"),
        ({"closing": (True, "")}, "not a close code a peer may be sent: True"),
        ({"headers": [("Sec-WebSocket-Version", "13")]}, "is set by the WebSocket handshake itself"),
        ({"headers": [("sec-websocket-key", "x")]}, "is set by the WebSocket handshake itself"),
        ({"headers": [("Content-Length", "4")]}, "a 101 has no body"),
        ({"headers": [("Transfer-Encoding", "chunked")]}, "a 101 has no body"),
    ],
)
def test_an_opening_refuses_what_cannot_go_on_the_wire(opening: dict[str, Any], message: str) -> None:
    """No header injection, no handshake header overridden, no body header on a 101, no close code
    that cannot be sent."""
    with pytest.raises(ValueError, match=message):
        Opening(**opening)


@pytest.mark.parametrize(
    ("opening", "message"),
    [
        ({"closing": (1008,)}, r"closing is a \(code, reason\) pair"),
        ({"closing": 1008}, r"closing is a \(code, reason\) pair"),
        ({"closing": (1008, None)}, r"closing is a \(code, reason\) pair"),
        ({"headers": {"X-A": "b"}}, r"headers are \(name, value\) pairs"),
        ({"headers": ("X-A", "b")}, r"a header is a \(name, value\) pair of strings, not 'X-A'"),
        ({"first": "hello"}, "first and end are functions to call"),
    ],
)
def test_an_opening_of_the_wrong_shape_says_so_at_once(opening: dict[str, Any], message: str) -> None:
    """Not after the 101, as an IndexError that leaves the client a 1006: a TypeError, one line, in open()."""
    with pytest.raises(TypeError, match=message):
        Opening(**opening)


def test_extensions_must_be_a_sequence_of_extensions() -> None:
    extension = Recorder()
    with pytest.raises(TypeError, match=r"e\.g\. \["):
        wsthreads.create_app(extensions=extension)
    with pytest.raises(TypeError, match="it needs start, open and stop"):
        wsthreads.create_app(extensions=[lambda conn: None])
    with pytest.raises(TypeError, match=r"not classes: PubSub\(\.\.\.\), not the class"):
        wsthreads.create_app(extensions=[wsthreads.PubSub])
    with pytest.raises(ValueError, match="an extension is given twice"):
        wsthreads.create_app(extensions=[extension, extension])
    assert wsthreads.create_app(extensions=[extension]).config.extensions == (extension,)


def test_without_pubsub_a_topic_is_a_query_parameter_like_any_other(serve: Serve) -> None:
    """The app itself knows no topic: ?topic= reaches the handler, and no subscription note comes."""

    def echo_topic(conn: Connection) -> None:
        conn.send(f"topic is {conn.request.query.get('topic')}")  # type: ignore[union-attr]

    server = serve(handler=echo_topic)
    with connect(f"{server.url}?topic=news") as client:
        assert client.recv(timeout=WAIT) == "topic is news"
        assert client.response is not None and "Wsthreads-Last-Id" not in client.response.headers


def test_one_pubsub_serves_one_app_at_a_time() -> None:
    """Two apps on one PubSub would each start a follower for it: the second one is refused."""
    pubsub = wsthreads.PubSub(wsthreads.MemoryBroker())
    first = wsthreads.create_app(extensions=[pubsub])
    with pytest.raises(ValueError, match="already serves another app: make one PubSub per app"):
        wsthreads.create_app(extensions=[pubsub])
    first.shutdown()
    wsthreads.create_app(extensions=[pubsub]).shutdown()  # free again once the first has shut down


def test_an_extension_that_cannot_start_stops_those_started_and_the_app_is_not_made() -> None:
    started = Recorder("started")

    class Broken(Recorder):
        def start(self, app: wsthreads.WebSocketApp) -> None:
            raise ValueError("no rooms today")

    with pytest.raises(ValueError, match="no rooms today"):
        wsthreads.create_app(extensions=[started, Broken()])
    assert started.events == ["start", "stop"]


def test_a_reopen_that_cannot_start_its_extensions_listens_nowhere_and_stays_shut() -> None:
    """start_server on an app whose PubSub another app took: ValueError, no listening socket left."""
    pubsub = wsthreads.PubSub(wsthreads.MemoryBroker())
    first = wsthreads.create_app(extensions=[pubsub])
    first.shutdown()
    second = wsthreads.create_app(extensions=[pubsub])
    descriptors = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="already serves another app"):
        wsthreads.start_server(first, "127.0.0.1", 0)
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert not first.accepting
    second.shutdown()


def test_a_second_shutdown_of_an_app_leaves_the_pubsub_another_app_took_alone(serve: Serve) -> None:
    """A with block's exit after an explicit shutdown(): the PubSub, serving another app now, goes on."""
    pubsub = wsthreads.PubSub(wsthreads.MemoryBroker())
    first = wsthreads.create_app(extensions=[pubsub])
    first.shutdown()
    server = serve(extensions=[pubsub])
    first.shutdown()
    with connect(f"{server.url}?topic=news") as client:
        assert "subscribed" in str(client.recv(timeout=WAIT))
        entry_id = pubsub.publish("news", "still delivered")
        assert entry_id in str(client.recv(timeout=WAIT))


def test_a_reopen_while_the_shutdown_still_waits_keeps_its_extensions_started() -> None:
    """start_server(app) again while the last shutdown waits for a client that never answers its close:
    the PubSub is started for the new server, and the old shutdown's end stops nothing."""
    pubsub = wsthreads.PubSub(wsthreads.MemoryBroker())
    app = wsthreads.create_app(extensions=[pubsub], close_timeout=1.0)
    old = wsthreads.start_server(app, "127.0.0.1", 0)
    deaf = open_client(old.port)  # never answers the close: the shutdown waits for it
    shutting = threading.Thread(target=old.shutdown, name="test-shutdown")
    shutting.start()
    assert wait_until(lambda: not app.accepting)
    new = wsthreads.start_server(app, "127.0.0.1", 0)
    try:
        shutting.join(WAIT)
        with connect(f"{new.url}?topic=news") as client:
            assert "subscribed" in str(client.recv(timeout=WAIT))
            entry_id = pubsub.publish("news", "after the reopen")
            assert entry_id in str(client.recv(timeout=WAIT))
    finally:
        deaf.close()
        new.shutdown()


def test_a_send_in_open_is_refused_before_the_101_and_the_session_gets_1011(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """open() runs before the 101: a frame there would come before it. conn.send raises; 1011 follows."""

    def greeting_too_early(conn: Connection) -> Opening:
        conn.send("welcome")
        return Opening()

    server = serve(extensions=[Recorder(opening=greeting_too_early)])
    with connect(server.url) as client, pytest.raises(ConnectionClosed) as closed:  # a clean 101 first
        client.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert any("no send before the 101" in r.getMessage() for r in caplog.records)


def test_a_request_that_shutdown_overtakes_in_open_gets_503_not_an_eof(serve: Serve) -> None:
    """Shutdown begins while an extension opens the session: the client gets the 503 that a request
    arriving a moment later gets, and the extension's end runs."""
    holding, waiting = threading.Event(), threading.Event()

    def slow(conn: Connection) -> Opening:
        if holding.is_set():  # the second request: held until shutdown has begun
            waiting.set()
            wait_until(lambda: not server.app.accepting)
        return Opening()

    extension = Recorder(opening=slow)
    server = serve(extensions=[extension])
    status, _, sock = upgrade(server.port)
    sock.close()
    assert status == "HTTP/1.1 101 Switching Protocols"  # the first goes through
    holding.set()
    answers: list[str] = []
    threading.Thread(target=lambda: answers.append(upgrade(server.port)[0]), name="test-client").start()
    assert waiting.wait(WAIT)
    assert server.app.shutdown(timeout=2.0)
    assert wait_until(lambda: bool(answers))
    assert answers == ["HTTP/1.1 503 Service Unavailable"]
    assert extension.events.count("end") == 2


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (
            {"broker": b"redis://localhost"},
            TypeError,
            "broker is a redis://HOST:PORT/DB URL, a broker object",
        ),
        ({"broker": 123}, TypeError, "broker is a redis://HOST:PORT/DB URL, a broker object"),
        ({"broker": "redis://localhost:6379/notadb"}, ValueError, "the database is a number"),
        ({"may_subscribe": "yes"}, TypeError, "may_subscribe is a function"),
    ],
)
def test_a_pubsub_refuses_settings_that_cannot_work_when_made(
    settings: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        wsthreads.PubSub(**settings)


def test_an_app_takes_one_pubsub() -> None:
    """Two would each subscribe every client: every message twice, two Wsthreads-Last-Id headers."""
    with pytest.raises(ValueError, match="an app takes one PubSub"):
        wsthreads.create_app(extensions=[wsthreads.PubSub(), wsthreads.PubSub()])
