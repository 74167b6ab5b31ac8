"""The embedding API, server side: the request, authentication, subprotocols, the path, pull style.

Peers are websockets' synchronous client (an independent implementation) and
raw sockets; servers are real, on port 0.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import ServerProgram, run_client, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import wsthreads
from wsthreads import Closed, Connection, Reject, Request

Serve = Callable[..., wsthreads.RunningServer]


def describe_request(conn: Connection) -> None:
    """A handler that tells the client what it saw of the request."""
    request = conn.request
    assert request is not None
    conn.send(
        json.dumps(
            {
                "path": request.path,
                "rooms": request.query.getlist("room"),
                "token": request.headers.get("authorization"),
                "cookie": request.cookies.get("session"),
                "remote": request.remote_addr,
                "offered": list(request.subprotocols),
                "subprotocol": conn.subprotocol,
                "user": conn.user,
            }
        )
    )


def test_the_handler_sees_path_query_headers_cookies_address_and_subprotocol(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    server = serve(handler=describe_request, subprotocols=("chat.v1", "chat.v2"))
    with connect(
        f"{server.url}?room=a&room=b",
        additional_headers={"Authorization": "Bearer t0k", "Cookie": "session=s1; other=x"},
        subprotocols=["chat.v2", "chat.v1"],  # type: ignore[list-item]
    ) as ws:
        seen = json.loads(ws.recv(timeout=5))
        assert ws.subprotocol == "chat.v2"
    assert seen == {
        "path": "/ws",
        "rooms": ["a", "b"],
        "token": "Bearer t0k",
        "cookie": "s1",
        "remote": "127.0.0.1",
        "offered": ["chat.v2", "chat.v1"],
        "subprotocol": "chat.v2",  # the client's first preference that the server speaks
        "user": None,
    }


def test_a_client_offering_none_of_our_subprotocols_gets_a_session_without_one(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    server = serve(handler=describe_request, subprotocols=("chat.v1",))
    with connect(server.url, subprotocols=["other"]) as ws:  # type: ignore[list-item]
        assert json.loads(ws.recv(timeout=5))["subprotocol"] is None
        assert ws.subprotocol is None
    with connect(server.url) as ws:
        assert json.loads(ws.recv(timeout=5))["subprotocol"] is None


def bearer_auth(request: Request) -> str:
    """Tokens of two users; no token 401, an unknown one 403."""
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        raise Reject(401, "missing bearer token")
    user = {"t-alice": "alice", "t-bob": "bob"}.get(header.removeprefix("Bearer "))
    if user is None:
        raise Reject(403, "unknown token")
    return user


def raw_handshake(port: int, *headers: str) -> bytes:
    """Send an upgrade request with extra header lines; the whole answer."""
    request = (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + "".join(f"{h}\r\n" for h in headers)
        + "\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(4096):  # the server closes after a refusal of an upgrade
            answer += chunk
    return answer


def test_authentication_refuses_with_401_or_403_and_a_one_line_reason(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    sessions: list[Connection] = []
    server = serve(handler=sessions.append, authenticate=bearer_auth)
    answer = raw_handshake(server.port)
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"WWW-Authenticate: Bearer" in answer
    assert answer.endswith(b"\r\n\r\nmissing bearer token\n")
    answer = raw_handshake(server.port, "Authorization: Bearer stolen")
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert answer.endswith(b"\r\n\r\nunknown token\n")
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url, additional_headers={"Authorization": "Bearer nope"})
    assert refused.value.response.status_code == 403
    assert sessions == [] and server.app.connections() == []  # rejected requests never became sessions


def test_the_user_the_hook_returns_is_on_the_connection(serve: Serve) -> None:
    server = serve(handler=describe_request, authenticate=bearer_auth)
    with connect(server.url, additional_headers={"Authorization": "Bearer t-bob"}) as ws:
        assert json.loads(ws.recv(timeout=5))["user"] == "bob"


def test_a_hook_returning_none_refuses_and_a_failing_hook_gives_500_without_a_traceback(
    serve: Callable[..., wsthreads.RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(authenticate=lambda request: None)
    assert raw_handshake(server.port).startswith(b"HTTP/1.1 401 Unauthorized\r\n")

    def broken(request: Request) -> str:
        raise KeyError("users table")

    server = serve(authenticate=broken)
    answer = raw_handshake(server.port)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert answer.endswith(b"\r\n\r\ninternal error while authenticating\n")
    assert b"KeyError" not in answer
    assert any("the authenticate hook failed: KeyError('users table')" in r.message for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)


def test_the_endpoint_path_is_configurable(serve: Serve) -> None:
    server = serve(echo=True, path="/live/updates")
    assert server.url.endswith("/live/updates")
    with connect(server.url) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url.replace("/live/updates", "/ws"))
    assert refused.value.response.status_code == 404
    assert b"the WebSocket endpoint is /live/updates" in refused.value.response.body
    with pytest.raises(ValueError, match="the endpoint path must be"):
        wsthreads.create_app(path="ws")


def test_cli_path_and_subprotocol(start_server: Callable[..., ServerProgram]) -> None:
    server = start_server("--echo", "--path", "/feed", "--subprotocol", "v2", "--subprotocol", "v1")
    assert server.url.endswith("/feed")
    with connect(server.url, subprotocols=["v1", "v2"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "v1"
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
    bad = run_client("--url", server.url.replace("/feed", "/ws"), "--timeout", "5")
    assert "404" in bad.stderr and "/feed" in bad.stderr


def test_a_function_handler_pulls_with_recv_and_iteration(serve: Serve) -> None:
    ended: list[Closed] = []

    def handler(conn: Connection) -> None:
        with pytest.raises(TimeoutError):
            conn.recv(timeout=0.2)  # nothing yet: the client waits for our prompt
        conn.send("ready")
        first = conn.recv(timeout=5)
        assert isinstance(first, str)
        conn.send(f"first: {first}")
        for message in conn:  # until the client closes
            assert isinstance(message, str)
            conn.send(f"then: {message}")
        assert conn.closed is None or conn.closed.code == 1000
        conn.wait_closed()
        assert conn.closed is not None
        ended.append(conn.closed)
        with pytest.raises(Closed) as after:
            conn.recv(timeout=1)  # the end stays readable, and recv says it at once
        assert after.value.code == 1000

    server = serve(handler=handler)
    with connect(server.url) as ws:
        assert ws.recv(timeout=5) == "ready"
        for text in ("a", "b", "c"):
            ws.send(text)
        assert [ws.recv(timeout=5) for _ in range(3)] == ["first: a", "then: b", "then: c"]
    assert wait_until(lambda: bool(ended))
    assert (ended[0].code, ended[0].by_peer) == (1000, True)


def test_a_function_handler_returning_closes_with_1000_after_what_it_queued(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    def handler(conn: Connection) -> None:
        for i in range(100):
            assert conn.send_nowait(f"queued {i}")

    server = serve(handler=handler)
    with connect(server.url) as ws:
        received = [ws.recv(timeout=5) for _ in range(100)]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert received == [f"queued {i}" for i in range(100)]  # written before the close, in order
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_a_function_handler_that_raises_closes_with_1011(serve: Serve) -> None:
    def handler(conn: Connection) -> None:
        conn.recv(timeout=5)
        raise RuntimeError("bug")

    server = serve(handler=handler)
    with connect(server.url) as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


def test_a_handler_that_stops_reading_stops_the_reader_and_a_close_still_ends_it(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    """max_queue messages wait; then TCP pushes back; close() from elsewhere ends it within close_timeout."""
    conns: list[Connection] = []
    release = threading.Event()

    def handler(conn: Connection) -> None:
        conns.append(conn)
        release.wait(30)  # reads nothing

    server = serve(handler=handler, max_queue=4)
    with connect(server.url) as ws:
        try:
            assert wait_until(lambda: bool(conns))
            for i in range(20):
                ws.send(f"m{i}")
            assert wait_until(lambda: conns[0].inbox.qsize() == 4)
            time.sleep(0.3)
            assert conns[0].inbox.qsize() == 4  # the reader waits for room instead of queueing more
            started = time.monotonic()
            conns[0].close(1001, "bye")
            assert conns[0].wait_closed()
            assert time.monotonic() - started < conns[0].close_timeout + 0.5
            assert conns[0].closed is not None and conns[0].closed.code == 1001
            # What was received before the end can still be read.
            assert [conns[0].recv(timeout=1) for _ in range(4)] == ["m0", "m1", "m2", "m3"]
        finally:
            release.set()


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
def test_a_hook_raising_systemexit_or_keyboardinterrupt_still_gets_500(
    serve: Serve, error: BaseException
) -> None:
    def hook(request: Request) -> str:
        raise error

    server = serve(authenticate=hook)
    assert raw_handshake(server.port).startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert server.app.connections() == []


@pytest.mark.parametrize(
    "make",
    [
        lambda: Reject(403, "no", {"X-Test": "a\r\nSet-Cookie: evil=1"}),
        lambda: Reject(403, "no", {"X Bad": "a"}),
        lambda: Reject(403, "no", {"X-Euro": "€"}),
        lambda: Reject(403, "no", {"Content-Length": "3"}),
        lambda: Reject(403.5, "no"),  # type: ignore[arg-type]
    ],
)
def test_a_refusal_that_cannot_be_sent_as_given_is_a_500_never_an_injected_header(
    serve: Serve, make: Callable[[], Reject]
) -> None:
    def hook(request: Request) -> str:
        raise make()

    answer = raw_handshake(serve(authenticate=hook).port)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"evil" not in answer and b"X Bad" not in answer


def test_a_401_keeps_the_hooks_own_challenge() -> None:
    assert Reject(401, "log in", {"www-authenticate": "Basic"}).headers == {"www-authenticate": "Basic"}


@pytest.mark.slow
def test_a_hook_slower_than_the_handshake_deadline_starts_no_session() -> None:
    started: list[Connection] = []

    def slow(request: Request) -> str:
        time.sleep(1.5)
        return "late user"

    app = wsthreads.create_app(handler=started.append, authenticate=slow)
    with wsthreads.start_server(app, "127.0.0.1", 0, handshake_timeout=0.5) as server:
        assert raw_handshake(server.port) == b""  # cut by the deadline: no answer
        time.sleep(1.5)
        assert started == [] and app.connections() == []


def test_messages_queued_before_close_go_out_before_the_close_frame(serve: Serve) -> None:
    def handler(conn: Connection) -> None:
        for i in range(5):
            conn.send_nowait(f"msg {i}")
        conn.close(1000, "bye")
        assert conn.flush(5)  # written, not discarded

    with connect(serve(handler=handler).url) as ws:
        got = [ws.recv(timeout=5) for _ in range(5)]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert got == [f"msg {i}" for i in range(5)]
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        1000,
        "bye",
    )


def test_head_of_the_page_has_no_body(serve: Serve) -> None:
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b""


@pytest.mark.parametrize("path", ["ws", "/ü", "/a%20b", "/a b", "//", "/a?b"])
def test_a_path_the_server_could_never_match_is_refused_at_once(path: str) -> None:
    with pytest.raises(ValueError, match="the endpoint path must be"):
        wsthreads.create_app(path=path)


def test_recv_on_a_connection_that_delivers_to_a_callback_says_so(serve: Serve) -> None:
    errors: list[BaseException] = []

    class Pusher:
        def on_message(self, conn: Connection, message: object) -> None:
            pass

        def run(self, conn: Connection) -> None:
            try:
                conn.recv(timeout=1)
            except RuntimeError as error:
                errors.append(error)

    with connect(serve(handler=Pusher()).url):
        assert wait_until(lambda: bool(errors))
    assert "on_message" in str(errors[0])


def test_send_after_the_peer_closed_raises_the_peers_code(serve: Serve) -> None:
    raised: list[Closed] = []

    def handler(conn: Connection) -> None:
        conn.recv(timeout=5)
        conn.wait_closed()  # the client closes; the session is over
        try:
            conn.send("too late")
        except Closed as closed:
            raised.append(closed)

    with connect(serve(handler=handler).url) as ws:
        ws.send("go")
        ws.close(4001, "custom")
    assert wait_until(lambda: bool(raised))
    assert (raised[0].code, raised[0].reason, raised[0].by_peer) == (4001, "custom", True)


def test_a_refusal_changed_after_it_was_made_is_checked_when_sent(serve: Serve) -> None:
    def hook(request: Request) -> str:
        refusal = Reject(403, "no")
        refusal.headers["X-Evil"] = "a\r\nSet-Cookie: evil=1"
        raise refusal

    answer = raw_handshake(serve(authenticate=hook).port)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and b"evil" not in answer


@pytest.mark.parametrize(
    "settings",
    [
        {"write_timeout": float("inf")},
        {"close_timeout": 1e300},
        {"ping_interval": float("inf")},
        {"max_message_size": -5},
        {"max_message_size": "1M"},
        {"max_queue": "16"},
        {"outbound_limit": True},
        {"path": "/a/../b"},
        {"path": "/."},
    ],
)
def test_settings_that_could_not_work_are_one_line_errors(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as error:
        wsthreads.create_app(**settings)
    assert "\n" not in str(error.value)


def test_client_settings_that_could_not_work_are_one_line_errors() -> None:
    for settings in ({"timeout": float("inf")}, {"max_message_size": 0}, {"write_timeout": "10"}):
        with pytest.raises(ValueError):
            wsthreads.ClientConfig(**settings)


class LongRun:
    """A parked session whose run() goes on for a while: its request thread is still busy."""

    def __init__(self) -> None:
        self.stop = threading.Event()

    def on_message(self, conn: Connection, message: Any) -> None:
        conn.send(message)

    def run(self, conn: Connection) -> None:
        self.stop.wait(10)


@pytest.mark.parametrize("handler", [LongRun, wsthreads.Echo], ids=["run-still-running", "parked"])
@pytest.mark.slow
def test_max_connections_counts_each_open_session_once(serve: Serve, handler: type) -> None:
    """max_connections=2: two sessions open, whether their run() still runs or they wait parked;
    the third gets 503; once one ends, a new one is admitted."""
    session_code = handler()
    url = serve(handler=session_code, max_connections=2).url
    with connect(url) as second:
        with connect(url):
            with pytest.raises(InvalidStatus) as refused:
                connect(url)
            assert refused.value.response.status_code == 503
        time.sleep(0.2)  # the first has ended
        with connect(url) as third:
            third.send("still echoing")
            assert third.recv(timeout=5) == "still echoing"
        second.send("and this one")
        assert second.recv(timeout=5) == "and this one"
    if isinstance(session_code, LongRun):
        session_code.stop.set()


def test_create_app_given_a_handler_in_place_of_a_config_says_how_to_pass_it() -> None:
    with pytest.raises(TypeError, match=r"create_app takes a ServerConfig .* create_app\(handler=\.\.\.\)"):
        wsthreads.create_app(wsthreads.Echo)  # type: ignore[arg-type]


def test_a_handshake_whose_authenticate_outlasts_the_start_of_shutdown_gets_a_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shutdown began while the hook ran: the client hears why (503), and nothing is logged as lost."""
    import websocket

    hook_running = threading.Event()

    def authenticate(request: Request) -> str:
        hook_running.set()
        time.sleep(0.3)  # shutdown begins meanwhile
        return "late"

    server = wsthreads.start_server(wsthreads.create_app(authenticate=authenticate), port=0)
    answers: list[object] = []

    def dial() -> None:
        try:
            websocket.create_connection(server.url, timeout=5).close()
            answers.append("opened")
        except websocket.WebSocketBadStatusException as error:
            answers.append((error.status_code, error.resp_body))

    client = threading.Thread(target=dial)
    with caplog.at_level("INFO", logger="wsthreads"):
        client.start()
        assert hook_running.wait(5)
        assert server.shutdown()
        client.join(5)
    assert answers == [(503, b"the server is shutting down\n")]
    assert not [r for r in caplog.records if "connection lost" in r.getMessage()]


def hold_until_closed(conn: Connection) -> None:
    """A handler function: it holds its thread until the client goes."""
    for _ in conn:
        pass


@pytest.mark.parametrize(
    ("settings", "holds"),
    [
        ({"handler": hold_until_closed}, True),
        ({"echo": True, "netpoller": False}, True),
        ({"echo": True}, False),
    ],
    ids=["handler-function", "object-without-netpoller", "parked-object"],
)
def test_sessions_that_hold_a_thread_are_capped_below_max_connections(
    serve: Serve, settings: dict[str, Any], holds: bool
) -> None:
    """max_session_threads: the thread cliff is a 503 with its reason, not thousands of threads;
    sessions parked in the netpoller hold no thread and only max_connections counts them."""
    server = serve(max_connections=3, max_session_threads=2, **settings)
    with contextlib.ExitStack() as clients:
        for _ in range(2):
            clients.enter_context(connect(server.url))
        if holds:
            with pytest.raises(InvalidStatus) as refused:
                clients.enter_context(connect(server.url))
            assert refused.value.response.status_code == 503
            assert refused.value.response.body == b"too many connections (limit 2: each holds a thread)\n"
            assert server.app.config.session_limit == 2
        else:
            clients.enter_context(connect(server.url))
            assert server.app.config.session_limit == 3


def test_the_default_caps_thread_held_sessions_at_a_thousand() -> None:
    """What was measured to keep every bound (docs/performance.md); parked sessions: 9,000."""
    assert wsthreads.create_app(handler=hold_until_closed).config.session_limit == 1000
    assert wsthreads.create_app(echo=True).config.session_limit == 9000
    assert (
        wsthreads.create_app(handler=hold_until_closed, max_session_threads=None).config.session_limit == 9000
    )
    with pytest.raises(ValueError, match="max_session_threads must be a whole number of at least 0"):
        wsthreads.create_app(max_session_threads=-1)


class Lingering:
    """A Handler object whose run() holds its thread for the whole session."""

    def on_message(self, conn: Connection, message: Any) -> None:
        pass

    def run(self, conn: Connection) -> None:
        conn.stop.wait()


def test_a_handler_whose_run_lasts_counts_against_the_thread_cap(serve: Serve) -> None:
    """Parked sessions are not capped by max_session_threads, but those running code in their
    thread are: a run() that lasts the whole session holds one, as a handler function does."""
    server = serve(handler=Lingering(), max_connections=10, max_session_threads=2)
    assert server.app.config.session_limit == 10
    with contextlib.ExitStack() as clients:
        for _ in range(2):
            clients.enter_context(connect(server.url))
        assert wait_until(lambda: server.app.threads_in_sessions() == 2)
        with pytest.raises(InvalidStatus) as refused:
            clients.enter_context(connect(server.url))
        assert refused.value.response.body == b"too many connections (limit 2: each holds a thread)\n"


def test_a_server_with_fewer_threads_lowers_the_limit_in_force_for_thread_held_sessions() -> None:
    """gunicorn's --threads (the worker calls serve_with_threads): the limit, and the metrics' gauge,
    say what can really be open; parked sessions need no thread and keep max_connections."""
    held = wsthreads.create_app(handler=hold_until_closed)
    held.serve_with_threads(500)
    assert held.session_limit == 500
    parked = wsthreads.create_app(echo=True)
    parked.serve_with_threads(500)
    assert parked.session_limit == 9000
