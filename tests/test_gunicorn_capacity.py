"""gunicorn.conf.py under load: ``workers x threads`` sessions at once, and a prompt 503 beyond.

The load client is one thread with a selector over raw sockets: it opens
every connection at once, sends each a WebSocket handshake and notes what
answers, and when. Run by hand, this module prints the figures of
docs/deployment.md (gunicorn options after ``--`` override the config file's)::

    python tests/test_gunicorn_capacity.py 1000 --runs 3
    python tests/test_gunicorn_capacity.py 1000 -- --worker-class gthread   # gunicorn's own worker
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import selectors
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import wait_until
from test_gunicorn import SHIPPED, Gunicorn

from wsthreads.pool import REQUEST_THREADS

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

#: The app under load: an echo server whose sessions last until the client closes, each holding
#: its thread (the article's reader thread, not the netpoller).
APP = "sync_server:create_app(echo=True)"
#: The same, parked in the netpoller: a session holds no thread once it has begun.
PARKED_APP = "sync_server:create_app(echo=True, netpoller=True, max_connections=20)"
#: Parked, and as many as a burst opens.
BURST_APP = "sync_server:create_app(echo=True, netpoller=True, max_connections=1000)"
#: Seconds within which a connection beyond capacity must have its 503 (LOOK_INTERVAL is 0.1 s).
PROMPT = 1.0


@dataclass
class Answer:
    """What one connection got: the status (None: no answer), after how long, the reason given."""

    status: int | None
    seconds: float
    reason: str = ""


class Dial:
    """One connection of the load client: its handshake going out, then its answer coming in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.started = time.monotonic()
        self.request = handshake(port)
        self.received = b""
        self.answer: Answer | None = None

    def step(self) -> None:
        """Send what is left of the handshake, or read the answer: a 101 ends at its blank line,
        anything else at EOF (each answer but a 101 closes the connection)."""
        if self.request:
            self.request = self.request[self.sock.send(self.request) :]
            return
        data = self.sock.recv(65536)
        self.received += data
        head, blank, body = self.received.partition(b"\r\n\r\n")
        if blank and head.startswith(b"HTTP/1.1 101 "):
            self.answer = Answer(101, time.monotonic() - self.started)
        elif not data:
            status = int(head.split(b" ", 2)[1]) if blank else None
            self.answer = Answer(status, time.monotonic() - self.started, body.decode().strip() or "closed")


def handshake(port: int) -> bytes:
    """A WebSocket opening handshake for ``/ws``."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@contextlib.contextmanager
def sessions(port: int, count: int, within: float = 20.0) -> Iterator[list[Answer]]:
    """Open ``count`` WebSocket connections at once; what each got within ``within`` seconds.

    The sessions stay open until the ``with`` ends, so they all hold a
    server thread at the same moment; then every connection is closed.
    """
    dials: list[Dial] = []
    try:
        with selectors.DefaultSelector() as selector:
            for _ in range(count):
                dials.append(Dial(port))
                dials[-1].sock.setblocking(False)
                dials[-1].sock.connect_ex(("127.0.0.1", port))
                selector.register(dials[-1].sock, selectors.EVENT_WRITE, dials[-1])
            deadline = time.monotonic() + within
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(deadline - time.monotonic()):
                    step(selector, key.data)
        yield [dial.answer or Answer(None, within, "no answer") for dial in dials]
    finally:
        for dial in dials:
            dial.sock.close()


def step(selector: selectors.BaseSelector, dial: Dial) -> None:
    """Move ``dial`` on by one event; once it has its answer, stop watching it."""
    try:
        dial.step()
    except OSError as error:
        dial.answer = Answer(None, time.monotonic() - dial.started, error.strerror or str(error))
    if dial.answer is not None:
        selector.unregister(dial.sock)
    elif not dial.request:
        selector.modify(dial.sock, selectors.EVENT_READ, dial)


def summary(answers: Sequence[Answer]) -> str:
    """``998 x 101 (slowest 1.20 s), 2 x 503 (slowest 0.61 s); server full (1000 sessions)``."""
    counts = Counter(answer.status for answer in answers)
    parts = []
    for status, number in sorted(counts.items(), key=lambda item: item[0] or 0):
        slowest = max(answer.seconds for answer in answers if answer.status == status)
        parts.append(f"{number} x {status or 'no answer'} (slowest {slowest:.2f} s)")
    reasons = sorted({answer.reason for answer in answers if answer.reason})
    return ", ".join(parts) + (f"; {' / '.join(reasons)}" if reasons else "")


def workers_with_a_thread_free(server: Gunicorn) -> int:
    """How many workers hold the "thread free" lock on the listening socket (Linux: /proc/locks)."""
    pids = set(re.findall(r"Booting worker with pid: (\d+)", "\n".join(server.stderr)))
    locks = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    return sum(1 for lock in locks if lock[1:4] == ["POSIX", "ADVISORY", "READ"] and lock[4] in pids)


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No log line for every message: a thousand sessions are logged enough by their connects."""
    monkeypatch.setenv("WSTHREADS_QUIET", "1")


def test_the_shipped_config_serves_workers_times_threads_sessions() -> None:
    """2 workers x 500 threads, 1000 connections at once: 1000 sessions, though the workers
    do not share them evenly (a full worker leaves the rest to the other)."""
    capacity = SHIPPED["workers"] * SHIPPED["threads"]
    with Gunicorn(APP) as server, sessions(server.port, capacity) as answers:
        assert [answer.status for answer in answers] == [101] * capacity, summary(answers)
        assert server.problems() == []


def test_connections_beyond_capacity_get_a_prompt_503() -> None:
    """2 x 5 threads: 10 sessions; 10 more connections meanwhile each get 503 with the reason
    within PROMPT seconds; once the 10 end, 15 new ones get 10 sessions and 5 refusals (a
    session is counted off once: no worker takes more than its 5 and leaves one unanswered)."""
    with Gunicorn(APP, workers=2, threads=5) as server:
        with sessions(server.port, 10) as first:
            assert [answer.status for answer in first] == [101] * 10, summary(first)
            assert wait_until(lambda: workers_with_a_thread_free(server) == 0)
            with sessions(server.port, 10, within=PROMPT) as extra:
                refusals = {(answer.status, answer.reason) for answer in extra}
                assert refusals == {(503, "server full (10 sessions)")}, summary(extra)
        assert wait_until(lambda: sum("connection lost" in line for line in server.stderr) == 10)
        assert wait_until(lambda: workers_with_a_thread_free(server) == 2)
        with sessions(server.port, 15) as again:
            assert Counter(answer.status for answer in again) == {101: 10, 503: 5}, summary(again)
        assert server.problems() == []


def test_a_burst_beyond_capacity_is_answered_at_once() -> None:
    """2 x 5 threads, 15 connections at once: 10 sessions, and 5 refusals within PROMPT seconds."""
    with Gunicorn(APP, workers=2, threads=5) as server, sessions(server.port, 15) as answers:
        assert Counter(answer.status for answer in answers) == {101: 10, 503: 5}, summary(answers)
        assert max(answer.seconds for answer in answers if answer.status == 503) < PROMPT
        assert server.problems() == []


def test_parked_sessions_hold_no_thread_and_max_connections_bounds_them() -> None:
    """1 worker x 5 threads, 25 echo connections at once: 20 sessions (max_connections), far more
    than the threads, each echoing; the 5 beyond get the app's 503 with its reason."""
    with Gunicorn(PARKED_APP, workers=1, threads=5) as server, sessions(server.port, 25) as answers:
        assert Counter(answer.status for answer in answers) == {101: 20, 503: 5}, summary(answers)
        assert {answer.reason for answer in answers if answer.status == 503} == {
            "too many connections (limit 20)"
        }
        assert server.problems() == []


def test_a_burst_of_handshakes_is_served_by_a_few_request_threads() -> None:
    """1 worker x 300 threads, 200 parked sessions opened at once: gthread's pool would have
    started a thread for nearly each; ours serves them with REQUEST_THREADS at most, reused."""
    with Gunicorn(BURST_APP, workers=1, threads=300) as server, sessions(server.port, 200) as answers:
        assert [answer.status for answer in answers] == [101] * 200, summary(answers)
        (worker,) = re.findall(r"Booting worker with pid: (\d+)", "\n".join(server.stderr))
        status = Path(f"/proc/{worker}/status").read_text()
        threads = int(re.findall(r"Threads:\s+(\d+)", status)[0])
        # Besides the request threads: the main one, the deadlines', the netpoller's (4 and its monitor).
        assert threads <= REQUEST_THREADS + 10, threads
        assert server.problems() == []


def main(argv: Sequence[str] | None = None) -> int:
    """Measure by hand: gunicorn.conf.py (options after -- override it), N connections, several runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("connections", type=int)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--within", type=float, default=20.0, help="seconds to wait for the answers")
    parser.add_argument("overrides", nargs="*", help="gunicorn options, after --")
    args = parser.parse_intermixed_args(argv)
    os.environ["WSTHREADS_QUIET"] = "1"
    for run in range(1, args.runs + 1):
        with Gunicorn(APP, *args.overrides) as server:
            began = time.monotonic()
            with sessions(server.port, args.connections, args.within) as answers:
                took = time.monotonic() - began
            print(f"run {run}: {args.connections} connections: {summary(answers)}; {took:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
