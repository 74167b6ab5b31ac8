"""A test kit for applications that embed wsthreads: a pytest plugin, and the pieces it is made of.

Installing wsthreads registers the plugin (the ``pytest11`` entry point), so a
project's tests have the ``ws_serve`` fixture with no import::

    def test_the_page_notifies(ws_serve):
        server = ws_serve(my_app)                      # in this process, on a free port
        client = server.connect(cookies={"session": "..."}, headers={"X-Trace": "1"})
        client.expect("hello")                         # the next message, within 5 s
        client.expect(lambda message: "id" in message)
        client.expect_nothing(within=0.2)

``my_app`` is a :class:`~wsthreads.WebSocketApp`, or one mounted in a Flask or
Django application (``ws.mount(flask_app)``): the whole WSGI application is
served, so a client can log in through the host app's own pages first. At the
end of the test every client is closed, the server shut down (sessions get
1001), and the kit checks that nothing is left behind: a thread the test
started that still runs, or a socket it opened that is still open, is an
error at the test's teardown, naming them. Every wait is bounded.

Outside pytest, :class:`TestServer` works as a context manager, and
:class:`LeakCheck` on its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import pytest

from .app import Mounted, WebSocketApp
from .client import WebSocketClient
from .closing import Closed
from .connection import Message
from .handshake import is_token
from .serving import RunningServer, start_server

#: Seconds a kit wait takes at most, unless told.
WAIT = 5.0
#: Threads every process shares, which end by themselves when idle: not a test's leak.
SHARED_THREADS = ("netpoller", "deadlines")


class TestClient(WebSocketClient):
    """A :class:`~wsthreads.WebSocketClient` with assertions that wait, each for a bounded time."""

    __test__ = False  # not a test class, for pytest

    def expect(self, expected: Message | Callable[[Message], bool], timeout: float = WAIT) -> Message:
        """The next message, which must be ``expected`` (or make it return True); AssertionError if not.

        Also an AssertionError when nothing arrives within ``timeout`` or the
        session ends first, saying what was expected.
        """
        try:
            message = self.recv(timeout=timeout)
        except TimeoutError:
            raise AssertionError(
                f"nothing arrived within {timeout:g} s; expected {describe(expected)}"
            ) from None
        except Closed as closed:
            raise AssertionError(f"the session ended ({closed}); expected {describe(expected)}") from None
        try:
            matches = expected(message) if callable(expected) else message == expected
        except Exception as error:  # the check itself failed on what came: say what came
            raise AssertionError(f"received {message!r}; the check raised {error!r}") from None
        if not matches:
            raise AssertionError(f"received {message!r}; expected {describe(expected)}")
        return message

    def expect_nothing(self, within: float = 0.3) -> None:
        """No message arrives for ``within`` seconds; AssertionError naming the one that did."""
        try:
            message = self.recv(timeout=within)
        except (TimeoutError, Closed):
            return
        raise AssertionError(f"received {message!r}; expected nothing within {within:g} s")

    def expect_close(self, code: int | None = None, timeout: float = WAIT) -> Closed:
        """The session ends within ``timeout`` (with ``code``, if given); how it ended."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.recv(timeout=max(deadline - time.monotonic(), 0.001))
            except Closed as closed:
                if code is not None and closed.code != code:
                    raise AssertionError(
                        f"the session ended with {closed}; expected close code {code}"
                    ) from None
                return closed
            except TimeoutError:
                raise AssertionError(f"the session was still open after {timeout:g} s") from None
            if time.monotonic() >= deadline:
                raise AssertionError(f"the session was still open after {timeout:g} s (last: {message!r})")


def describe(expected: object) -> str:
    """What an assertion expected, in its message."""
    if not callable(expected):
        return repr(expected)
    name = getattr(expected, "__name__", "")
    return (
        "a message that the check accepts" if name in ("", "<lambda>") else f"a message that {name} accepts"
    )


class TestServer:
    """A WSGI application served in this process on a free port, and the clients of a test.

    ``app`` is a :class:`~wsthreads.WebSocketApp` or one mounted in a host
    application (:meth:`~wsthreads.WebSocketApp.mount`). :meth:`close`, or
    the end of a ``with`` block, closes the clients and shuts the server down.
    """

    __test__ = False  # not a test class, for pytest

    def __init__(self, app: WebSocketApp | Mounted, **options: Any) -> None:
        self.app = app
        self.running: RunningServer = start_server(app, "127.0.0.1", 0, **options)
        self.port = self.running.port
        #: The WebSocket endpoint, e.g. ``ws://127.0.0.1:41234/ws``.
        self.url = self.running.url
        #: The host application's root, e.g. ``http://127.0.0.1:41234/``, for logging in first.
        self.page_url = self.running.page_url
        self.clients: list[TestClient] = []

    def connect(
        self,
        query: Mapping[str, str] | None = None,
        *,
        cookies: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> TestClient:
        """A client, connected, on the endpoint (with ``?query``), sending ``cookies`` and ``headers``.

        ``settings`` are :class:`~wsthreads.WebSocketClient`'s (``reconnect``,
        ``on_message``, ``max_queue``, ...). Raises ConnectError if the server
        refuses, e.g. ``... HTTP 401 Unauthorized: authentication required``.
        """
        url = self.url + (f"?{urlencode(query)}" if query else "")
        sent = {name: value for name, value in (headers or {}).items() if name.lower() != "cookie"}
        given = [value for name, value in (headers or {}).items() if name.lower() == "cookie"]
        if cookies:
            given.append(cookie_header(cookies))
        if given:
            sent["Cookie"] = "; ".join(given)
        client = TestClient(url, headers=sent, **settings)
        self.clients.append(client)
        client.connect()
        return client

    def close(self) -> None:
        """Close every client, then shut the server down (bounded)."""
        for client in self.clients:
            client.close()
        self.running.shutdown()

    def __enter__(self) -> TestServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def cookie_header(cookies: Mapping[str, str]) -> str:
    """``name=value; ...``; ValueError for a value that would end the cookie early or add one."""
    for name, value in cookies.items():
        if any(c in value for c in ';, "\\') or not value.isprintable() or not is_token(name):
            raise ValueError(
                f"cookie {name!r}: {value!r} cannot go in a Cookie header as it is; encode it first"
            )
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


class LeakCheck:
    """What a test leaves behind: threads it started that still run, sockets it opened still open."""

    def __init__(self) -> None:
        self.threads = set(threading.enumerate())
        self.sockets = open_sockets()

    def left(self, timeout: float = WAIT) -> list[str]:
        """What is still there after waiting up to ``timeout`` for it to go: ``thread conn-3-reader``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._found()
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.02)

    def _found(self) -> list[str]:
        threads = [
            f"thread {thread.name}"
            for thread in threading.enumerate()
            if thread not in self.threads and thread.is_alive() and not thread.name.startswith(SHARED_THREADS)
        ]
        sockets = len(open_sockets() - self.sockets)
        return threads + ([f"{sockets} socket(s)"] if sockets else [])


def open_sockets() -> set[str]:
    """The sockets this process has open (``socket:[inode]``); empty where /proc does not say."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    found = set()
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.fixture
def ws_serve() -> Iterator[Callable[..., TestServer]]:
    """``ws_serve(app)``: serve ``app`` in this process for this test (a :class:`TestServer`).

    At the end: every client closed, every server shut down, and the test
    fails if a thread or a socket it started is still there.
    """
    check = LeakCheck()
    servers: list[TestServer] = []

    def serve(app: WebSocketApp | Mounted, **options: Any) -> TestServer:
        server = TestServer(app, **options)
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.close()
    left = check.left()
    if left:
        pytest.fail(f"left behind after the test: {', '.join(left)}", pytrace=False)
