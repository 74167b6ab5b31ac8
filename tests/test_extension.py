"""Extensions (wsthreads.extension): headers on the 101, a first step, an end, a close at once.

The app's generic hooks, which pub/sub (wsthreads.pubsub.PubSub) is one user
of. Peers are websockets' synchronous client; servers are real, on port 0.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import wait_until
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


def test_a_failing_first_step_is_the_handlers_1011_and_a_failing_end_leaves_the_rest(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """first() raising closes with 1011, as a handler's error; an end raising is logged, and the
    other ends, and the session's admission, still end."""

    def fail() -> None:
        raise RuntimeError("first step failed")

    def fail_end() -> None:
        raise RuntimeError("end failed")

    ends: list[str] = []
    outer = Recorder("outer", lambda conn: Opening(end=lambda: ends.append("outer")))
    inner = Recorder("inner", lambda conn: Opening(first=fail, end=fail_end))
    server = serve(handler=greet, extensions=[outer, inner], max_connections=1)
    for _ in range(2):  # max_connections=1: the second session needs the first one's admission back
        with connect(server.url) as client, pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert wait_until(lambda: len(ends) == 1 + _)  # noqa: B023
    assert ends == ["outer", "outer"]
    assert any("an extension's end failed" in r.getMessage() for r in caplog.records)


def test_start_and_stop_follow_the_apps_life(serve: Serve) -> None:
    """Started when the app is made, stopped once its shutdown is over, started again on reopen."""
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
    ],
)
def test_an_opening_refuses_what_cannot_go_on_the_wire(opening: dict[str, Any], message: str) -> None:
    """No header injection, no handshake header overridden, no close code that cannot be sent."""
    with pytest.raises(ValueError, match=message):
        Opening(**opening)


def test_extensions_must_be_a_sequence_of_extensions() -> None:
    extension = Recorder()
    with pytest.raises(TypeError, match=r"e\.g\. \["):
        wsthreads.create_app(extensions=extension)
    with pytest.raises(TypeError, match="it needs start, open and stop"):
        wsthreads.create_app(extensions=[lambda conn: None])
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
