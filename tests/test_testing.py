"""wsthreads/testing.py: the test kit, run as a user's pytest would run it (pytester)."""

from __future__ import annotations

import json

import pytest

import wsthreads
from wsthreads.testing import TestServer

pytest_plugins = ["pytester"]

HEADER = """
import socket, threading, time
import pytest
import wsthreads

def echo(conn):
    for message in conn:
        conn.send(message)
"""


def run(pytester: pytest.Pytester, tests: str) -> pytest.RunResult:
    pytester.makepyfile(HEADER + tests)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)


@pytest.mark.slow
def test_a_clean_test_passes_and_its_failures_say_what_came(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
def test_clean(ws_serve):
    client = ws_serve(wsthreads.create_app(handler=echo)).connect(headers={"X-Test": "1"})
    client.send("a")
    client.expect("a")
    client.send("b")
    client.expect(lambda message: message in ("b", "c"))
    client.expect_nothing(within=0.1)

def test_wrong(ws_serve):
    client = ws_serve(wsthreads.create_app(handler=echo)).connect()
    client.send("pong")
    client.expect("PING")

def test_silent(ws_serve):
    ws_serve(wsthreads.create_app(handler=echo)).connect().expect("x", timeout=0.2)

def test_closed(ws_serve):
    server = ws_serve(wsthreads.create_app(handler=lambda conn: conn.close(4000, "bye")))
    assert server.connect().expect_close(4000).reason == "bye"
""",
    )
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: received 'pong'; expected 'PING'",
            "*AssertionError: nothing arrived within 0.2 s; expected 'x'",
        ]
    )


@pytest.mark.slow
def test_a_thread_or_a_socket_the_test_left_behind_fails_it(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
stop = threading.Event()
sockets = []

def test_a_stuck_thread(ws_serve):
    ws_serve(wsthreads.create_app(handler=echo))
    threading.Thread(target=stop.wait, args=(30,), name="stuck", daemon=True).start()

def test_an_open_socket(ws_serve):
    ws_serve(wsthreads.create_app(handler=echo))
    sockets.append(socket.socket())
""",
    )
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        ["*left behind after the test: thread stuck*", "*left behind after the test: 1 socket(s)*"]
    )


@pytest.mark.slow
def test_a_module_level_app_serves_test_after_test_topics_too() -> None:
    """Each test's server shuts the app down; the next one serves it anew, its fan-out too."""
    pubsub = wsthreads.PubSub()
    app = wsthreads.create_app(extensions=[pubsub])
    for round_ in range(2):
        with TestServer(app) as server:
            client = server.connect({"topic": "news"})
            assert (
                json.loads(str(client.expect(lambda message: "subscribed" in str(message))))["note"]
                == "subscribed"
            )
            pubsub.publish("news", f"round {round_}")
            assert (
                json.loads(str(client.expect(lambda message: "round" in str(message))))["data"]
                == f"round {round_}"
            )


def test_a_check_that_raises_says_what_came_and_cookies_cannot_smuggle_another() -> None:
    from wsthreads.testing import cookie_header

    seen: list[str] = []

    def echo_cookie(conn: wsthreads.Connection) -> None:
        seen.append(conn.request.headers.get("Cookie", "") if conn.request else "")
        conn.send("hello")
        for _ in conn:
            pass

    with TestServer(wsthreads.create_app(handler=echo_cookie)) as server:
        client = server.connect(cookies={"session": "abc"}, headers={"cookie": "theme=dark"})
        with pytest.raises(AssertionError, match=r"received 'hello'; the check raised KeyError\('x'\)"):
            client.expect(lambda message: {"y": True}["x"])
    assert seen == ["theme=dark; session=abc"]  # one Cookie header, the given one kept
    with pytest.raises(ValueError, match="cannot go in a Cookie header as it is"):
        cookie_header({"session": "x; admin=1"})


def test_start_server_says_what_it_serves() -> None:
    with pytest.raises(TypeError, match="start_server serves a WebSocketApp, or one mounted outermost"):
        wsthreads.start_server(lambda environ, start_response: [], "127.0.0.1", 0)  # type: ignore[arg-type]
