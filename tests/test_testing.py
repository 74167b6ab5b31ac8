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


def test_a_module_level_app_serves_test_after_test_topics_too() -> None:
    """Each test's server shuts the app down; the next one serves it anew, its fan-out too."""
    app = wsthreads.create_app()
    for round_ in range(2):
        with TestServer(app) as server:
            client = server.connect({"topic": "news"})
            assert (
                json.loads(str(client.expect(lambda message: "subscribed" in str(message))))["note"]
                == "subscribed"
            )
            app.publish("news", f"round {round_}")
            assert (
                json.loads(str(client.expect(lambda message: "round" in str(message))))["data"]
                == f"round {round_}"
            )
