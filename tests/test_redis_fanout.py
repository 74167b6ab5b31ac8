"""Publish from anywhere, against a real Redis: every subscriber on every worker gets every message,
once, in order, and nothing is lost when a worker, the broker or the connection goes away.

Every check compares what a subscriber received with what was published, exactly: the same
messages with the same ids, in the same order, none twice. Messages come from other processes
than the servers': ``python -m wsthreads publish`` (which prints the id), or this test process.
Each test has a Redis stream of its own (see the ``redis_url`` fixture in conftest.py).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from helpers import (
    ROOT,
    SERVER,
    WAIT,
    Program,
    RedisServer,
    ServerProgram,
    free_port,
    wait_until,
    with_query,
)
from helpers import websocket_client as connect

import wsthreads
from wsthreads import Message, WebSocketClient, open_broker
from wsthreads.pubsub import Resume

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

#: Bound for a message that crosses Redis and a follower that may be backing off (up to 5 s).
LONG = 30.0
#: One published message as a subscriber sees it: (topic, id, data).
Published = tuple[str, str, str]
#: A subscriber's next message within a timeout (seconds).
Receive = Callable[[float], Message]
ID = re.compile(r"[0-9]+-[0-9]+")


def publish_cli(url: str, topic: str, message: str) -> Published:
    """``python -m wsthreads publish`` in a process of its own; the message with the id it printed."""
    done = run_publish_cli(url, topic, message)
    assert done.returncode == 0 and done.stderr == "", done
    entry_id = done.stdout.strip()
    assert ID.fullmatch(entry_id), done.stdout
    return topic, entry_id, message


def run_publish_cli(url: str, topic: str, message: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsthreads", "publish", "--broker", url, "--topic", topic, message],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        timeout=LONG,
        env=dict(os.environ, PYTHONIOENCODING="utf-8"),
    )


def publish_here(url: str, topic: str, message: str) -> Published:
    """Publish from this test process (another process than the servers')."""
    return topic, wsthreads.publish(topic, message, broker=url), message


def subscribe_raw(url: str) -> Any:
    """A websocket-client connection (an independent client) to ``url``."""
    return connect(url)


def raw_receive(ws: Any) -> Receive:
    def receive(timeout: float) -> Message:
        ws.settimeout(timeout)
        message: Message = ws.recv()
        return message

    return receive


def client_receive(client: WebSocketClient) -> Receive:
    return client.recv


def entries(messages: Sequence[Message]) -> list[Published]:
    """The published messages among ``messages``, as (topic, id, data); notes may only come first."""
    parsed = [json.loads(m) for m in messages]
    leading = next((i for i, m in enumerate(parsed) if "note" not in m), len(parsed))
    assert all("note" not in m for m in parsed[leading:]), f"a note among the messages: {messages}"
    return [(m["topic"], m["id"], m["data"]) for m in parsed[leading:]]


def notes(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The notes (``{"note": ...}``) among ``messages``."""
    return [m for m in map(json.loads, messages) if "note" in m]


def assert_subscribed_note(messages: Sequence[Message], published: Sequence[Published]) -> None:
    """A subscription without last_id begins with one ``subscribed`` note, whose ``last_id`` is
    before the first message published since."""
    (first,) = notes(messages)
    assert first["note"] == "subscribed" and ID.fullmatch(first["last_id"]), first
    assert id_pair(first["last_id"]) < id_pair(published[0][1]), (first, published[0])


def id_pair(entry_id: str) -> tuple[int, int]:
    milliseconds, sequence = entry_id.split("-")
    return int(milliseconds), int(sequence)


def receive_until(receive: Receive, last_id: str, timeout: float = LONG) -> list[Message]:
    """Every message up to the one with ``last_id``, each within what is left of ``timeout``."""
    deadline = time.monotonic() + timeout
    got: list[Message] = []
    while not got or json.loads(got[-1]).get("id") != last_id:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            got.append(receive(left))
        except Exception as error:
            raise AssertionError(
                f"{type(error).__name__} {error} before the message {last_id}; got {len(got)}: {got[-3:]}"
            ) from None
    return got


def assert_ids_increase(published: Sequence[Published]) -> None:
    ids = [id_pair(entry_id) for _, entry_id, _ in published]
    assert ids == sorted(set(ids)), published


# --- gunicorn, and its workers as /proc shows them ---------------------------


class Gunicorn(Program):
    """``gunicorn -c gunicorn.conf.py -w WORKERS APP`` on a free port, every worker ready."""

    def __init__(self, app: str, workers: int = 2) -> None:
        conf = str(ROOT / "gunicorn.conf.py")
        super().__init__(
            "gunicorn", "-c", conf, "-b", "127.0.0.1:0", "--chdir", str(ROOT), "-w", str(workers), app
        )
        try:
            match = self.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+)", stream="stderr")
            assert self.wait_ready(workers), f"not every worker got ready:\n{self.output()}"
        except BaseException:
            self.kill()
            raise
        self.port = int(match.group(1))
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def wait_ready(self, count: int, timeout: float = LONG) -> bool:
        """Wait until ``count`` workers in all have got ready since the start (restarts count too)."""
        return wait_until(lambda: sum("worker ready" in line for line in self.stderr) >= count, timeout, 0.05)

    def workers(self) -> list[int]:
        """The pids of its living workers (its children)."""
        return children(self.proc.pid)

    def sessions(self) -> dict[int, int]:
        """How many connections each living worker holds: {pid: count}."""
        return {pid: len(established(pid, self.port)) for pid in self.workers()}

    def kill(self) -> None:
        """Kill the workers, then the master (killed alone, it leaves them to notice on their own)."""
        if self.proc.poll() is None:
            for pid in self.workers():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it has just exited
        super().kill()


def children(parent: int) -> list[int]:
    """The pids of ``parent``'s living children (not zombies), from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            found.append(int(name))
    return sorted(found)


def established(pid: int, port: int) -> set[int]:
    """The client ports of the established connections to ``port`` that process ``pid`` holds."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()  # it has gone
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and inode in inodes and int(local.split(":")[1], 16) == port:
            ports.add(int(remote.split(":")[1], 16))
    return ports


def gone(pid: int) -> bool:
    """True once process ``pid`` has exited (and been reaped, or is a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def gunicorn(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Gunicorn]]:
    """Start gunicorn with our config (no line per message); killed at the end."""
    monkeypatch.setenv("WSTHREADS_QUIET", "1")
    servers: list[Gunicorn] = []

    def start(app: str, workers: int = 2) -> Gunicorn:
        servers.append(Gunicorn(app, workers))
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


def app_with_broker(url: str) -> str:
    """The demo app (echo) for gunicorn, reading ``url``."""
    return f"sync_server:create_app(echo=True, broker={url!r})"


class Collector:
    """A reconnecting, resuming WebSocketClient that keeps every message it receives, in order."""

    def __init__(self, url: str) -> None:
        self.messages: list[Message] = []
        self.client = WebSocketClient(
            url, on_message=self.messages.append, reconnect=True, backoff=(0.1, 0.5), resume=Resume
        )

    def received(self) -> list[Published]:
        """The published messages received so far."""
        return entries(list(self.messages))

    def got(self, published: Sequence[Published]) -> bool:
        """True once it has received the last of ``published``."""
        return bool(self.messages) and json.loads(self.messages[-1]).get("id") == published[-1][1]


class Publisher:
    """A thread publishing ``message N`` to ``topic`` every ``interval`` s from this process, till stopped."""

    def __init__(self, url: str, topic: str, interval: float = 0.02) -> None:
        self.url, self.topic, self.interval = url, topic, interval
        self.published: list[Published] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.published.append(
                    publish_here(self.url, self.topic, f"message {len(self.published) + 1}")
                )
        except BaseException as error:
            self.errors.append(error)

    def stop(self) -> list[Published]:
        """Stop publishing; what was published (``errors`` says if publishing failed)."""
        self._stop.set()
        self._thread.join(WAIT)
        return self.published


# --- the tests ---------------------------------------------------------------


def test_two_servers_deliver_what_another_process_publishes(
    redis_url: str, start_server: Callable[..., ServerProgram]
) -> None:
    """Two server processes on one broker: every subscriber of the topic, on either, gets every
    message published by ``python -m wsthreads publish`` once, in order, with the id it printed;
    a subscriber of another topic gets none of them, one of both topics all of either."""
    one = start_server("--broker", redis_url, "--echo", "--quiet")
    two = start_server("--broker", redis_url, "--echo", "--quiet")
    clients = [
        WebSocketClient(f"{one.url}?topic=news").connect(),
        WebSocketClient(f"{two.url}?topic=news").connect(),
    ]
    raws = [subscribe_raw(f"{one.url}?topic=news"), subscribe_raw(f"{two.url}?topic=news")]
    others = [subscribe_raw(f"{one.url}?topic=sport"), subscribe_raw(f"{two.url}?topic=sport")]
    both = WebSocketClient(f"{two.url}?topic=sport&topic=news").connect()
    try:
        texts = ["first", "héllo, мир ✓", '{"not": "a topic"}', "last one"]
        published = [publish_cli(redis_url, "news", text) for text in texts]
        assert_ids_increase(published)
        subscribers = [client_receive(c) for c in clients] + [raw_receive(ws) for ws in raws]
        for receive in subscribers:
            got = receive_until(receive, published[-1][1])
            assert entries(got) == published
            assert_subscribed_note(got, published)
        marker = publish_here(redis_url, "sport", "sport only")
        for ws in others:  # the log is in order: anything of "news" would have come before this
            assert entries(receive_until(raw_receive(ws), marker[1])) == [marker]
        assert entries(receive_until(client_receive(both), marker[1])) == [*published, marker]
    finally:
        for client in [*clients, both]:
            client.close()
        for ws in raws + others:
            ws.close()
    assert one.proc.poll() is None and two.proc.poll() is None
    assert "Traceback" not in one.output() + two.output()


def test_gunicorn_workers_all_deliver_every_message(
    redis_url: str, gunicorn: Callable[..., Gunicorn]
) -> None:
    """Two gunicorn workers, 20 subscribers spread over both: each gets every message once, in order."""
    server = gunicorn(app_with_broker(redis_url))
    clients = [WebSocketClient(f"{server.url}?topic=news").connect() for _ in range(20)]
    try:
        assert wait_until(lambda: sum(server.sessions().values()) == 20), server.sessions()
        spread = server.sessions()
        assert len(spread) == 2 and all(spread.values()), f"both workers should hold sessions: {spread}"
        published = [publish_cli(redis_url, "news", f"message {i}") for i in range(1, 4)]
        published += [publish_here(redis_url, "news", f"message {i}") for i in range(4, 51)]
        for client in clients:
            assert entries(receive_until(client.recv, published[-1][1])) == published
    finally:
        for client in clients:
            client.close()
    assert not [line for line in server.stderr if "Traceback" in line or "ERROR" in line], server.output()


@pytest.mark.timeout(120)
def test_worker_restarts_lose_nothing(redis_url: str, gunicorn: Callable[..., Gunicorn]) -> None:
    """While messages are published continuously, one worker stops gracefully (SIGTERM, 1001) and
    another is killed (SIGKILL, the connections drop): gunicorn starts new workers, the clients
    reconnect with their last id, and each has every message once, in order."""
    server = gunicorn(app_with_broker(redis_url))
    collectors = [Collector(f"{server.url}?topic=news") for _ in range(10)]
    for collector in collectors:
        collector.client.connect()
    publisher = Publisher(redis_url, "news")
    try:
        assert wait_until(lambda: all(c.received() for c in collectors), LONG), "no message came"
        restart_a_worker(server, signal.SIGTERM, len(collectors), publisher, ready=3)
        restart_a_worker(server, signal.SIGKILL, len(collectors), publisher, ready=4)
        published = publisher.stop()
        for collector in collectors:
            done = functools.partial(collector.got, published)
            assert wait_until(done, LONG), (len(collector.messages), len(published))
        for collector in collectors:
            assert entries(collector.messages) == published
    finally:
        publisher.stop()
        for collector in collectors:
            collector.client.close()
    assert not publisher.errors and len(published) > 20, publisher.errors


def restart_a_worker(server: Gunicorn, signum: int, clients: int, publisher: Publisher, ready: int) -> None:
    """Stop the worker holding most sessions with ``signum``; wait until gunicorn has started the
    ``ready``-th worker, every client is connected again and more messages were published."""

    def all_connected() -> bool:
        return sum(server.sessions().values()) == clients

    assert wait_until(all_connected, LONG), server.sessions()
    victim = max(server.sessions().items(), key=lambda item: item[1])[0]
    before = len(publisher.published)
    os.kill(victim, signum)
    assert wait_until(functools.partial(gone, victim), LONG), f"worker {victim} did not exit"
    assert server.wait_ready(ready), f"no new worker after {signum!r}:\n{server.output()}"
    assert wait_until(all_connected, LONG), server.sessions()  # on the new worker or the other one
    assert victim not in server.sessions()
    assert wait_until(lambda: len(publisher.published) > before + 10, LONG), "publishing stopped"


@pytest.mark.timeout(120)
def test_broker_restart_keeps_sessions_and_loses_nothing(
    private_redis: Callable[..., RedisServer], start_server: Callable[..., ServerProgram]
) -> None:
    """Redis stops (SIGTERM: it writes its append-only file) and starts again on the same port:
    the WebSocket sessions stay open meanwhile, a publish fails with one line, and once Redis is
    back the server's follower finds it (it retries with backoff) and every subscriber gets every
    message published, once, in order."""
    redis_server = private_redis(persistent=True)
    url = with_query(redis_server.url, stream="restart")
    server = start_server("--broker", url, "--echo", "--quiet")
    raws = [subscribe_raw(f"{server.url}?topic=news") for _ in range(2)]
    client = WebSocketClient(f"{server.url}?topic=news").connect()
    receivers = [raw_receive(ws) for ws in raws] + [client_receive(client)]
    try:
        published = [publish_cli(url, "news", f"before {i}") for i in (1, 2)]
        for receive in receivers:
            assert entries(receive_until(receive, published[-1][1])) == published

        assert redis_server.stop() == 0, redis_server.log()
        server.wait_for(r"cannot reach the broker .*; retrying", timeout=LONG, stream="stderr")
        failed = run_publish_cli(url, "news", "lost")
        assert failed.returncode != 0 and failed.stdout == "", failed
        assert len(failed.stderr.splitlines()) == 1 and "cannot reach the broker" in failed.stderr, failed
        for ws in raws:  # the sessions are still open, and still answer (the server echoes)
            assert ws.connected
            ws.send("still there?")
            assert raw_receive(ws)(WAIT) == "still there?"
        assert client.connected
        client.send("still there?")
        assert client.recv(WAIT) == "still there?"

        redis_server.start()
        assert open_broker(url).bounds().newest == published[-1][1], "Redis lost its data"
        more = [publish_cli(url, "news", f"after {i}") for i in (1, 2)]
        published += more
        assert_ids_increase(published)
        for receive in receivers:
            assert entries(receive_until(receive, more[-1][1])) == more
        server.wait_for(r"answers again", timeout=LONG)
        resumed = subscribe_raw(f"{server.url}?topic=news&last_id={published[0][1]}")
        try:
            assert entries(receive_until(raw_receive(resumed), more[-1][1])) == published[1:]
        finally:
            resumed.close()
        for ws in raws:
            assert ws.connected
    finally:
        client.close()
        for ws in raws:
            ws.close()
    assert server.proc.poll() is None
    assert "Traceback" not in server.output()


def test_a_trimmed_or_future_last_id_gets_a_note(
    redis_url: str, start_server: Callable[..., ServerProgram]
) -> None:
    """With ``?keep=5`` Redis trims (approximately): a last_id older than what is kept gets a note
    saying where the replay starts, then everything kept; one newer than any id gets a note too,
    then only new messages."""
    url = with_query(redis_url, keep="5")
    server = start_server("--broker", url, "--echo", "--quiet")
    published = [publish_here(url, "news", f"news {i}") for i in range(500)]
    bounds = open_broker(url).bounds()
    assert bounds.first is not None and bounds.first != published[0][1], bounds
    start = [entry_id for _, entry_id, _ in published].index(bounds.first)
    assert start > 0 and len(published) - start >= 5
    ws = subscribe_raw(f"{server.url}?topic=news&last_id={published[0][1]}")
    try:
        got = receive_until(raw_receive(ws), published[-1][1])
        note = json.loads(got[0])
        assert note["note"] == "gap" and note["first_id"] == bounds.first and bounds.first in note["text"], (
            note
        )
        assert note["last_id"] == published[0][1], note
        assert entries(got) == published[start:] and len(notes(got)) == 1
    finally:
        ws.close()
    future = f"{int(published[-1][1].split('-')[0]) + 10**9}-0"
    ws = subscribe_raw(f"{server.url}?topic=news&last_id={future}")
    try:
        note = json.loads(raw_receive(ws)(WAIT))
        assert note["note"] == "ahead" and note["last_id"] == published[-1][1], note
        live = publish_here(url, "news", "live")
        assert entries(receive_until(raw_receive(ws), live[1])) == [live]
    finally:
        ws.close()


def test_an_unreachable_broker_at_start_is_one_line() -> None:
    """``sync_server.py --broker`` naming a port nobody listens on exits 1 with one line on stderr,
    before it listens; ``python -m wsthreads publish`` to it too."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [sys.executable, SERVER, "--port", "0", "--broker", closed],
        capture_output=True,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        timeout=LONG,
    )
    assert done.returncode == 1 and "listening" not in done.stdout, done
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("sync_server.py: error: cannot reach the broker at redis://127.0.0.1:")
    failed = run_publish_cli(closed, "news", "hello")
    assert failed.returncode == 1 and failed.stdout == "", failed
    assert failed.stderr.startswith("python -m wsthreads publish: error: cannot reach the broker at ")
    assert len(failed.stderr.splitlines()) == 1, failed.stderr


def test_reconnect_before_any_message_loses_nothing(
    redis_url: str, start_server: Callable[..., ServerProgram]
) -> None:
    """A WebSocketClient(reconnect=True) subscribes; before anything is published its server
    restarts; a message is published while it is away: after the redial it gets it (the
    ``subscribed`` note gave it a last_id to resume after)."""
    port = free_port()
    server = start_server("--port", str(port), "--broker", redis_url, "--echo", "--quiet")
    client = WebSocketClient(f"{server.url}?topic=news", reconnect=True, backoff=(0.1, 0.5), resume=Resume)
    client.connect()
    try:
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        assert wait_until(lambda: not client.connected)
        away = publish_here(redis_url, "news", "while away")
        start_server("--port", str(port), "--broker", redis_url, "--echo", "--quiet")
        assert wait_until(lambda: client.connected, LONG)
        back = publish_here(redis_url, "news", "after the redial")
        assert entries(receive_until(client.recv, back[1])) == [away, back]
    finally:
        client.close()


def test_an_entry_that_is_not_utf8_cannot_stop_delivery(redis_url: str) -> None:
    """Another program may XADD anything: its bytes arrive replaced (U+FFFD), and the follower goes on."""
    import redis

    pubsub = wsthreads.PubSub(redis_url)
    server = wsthreads.start_server(wsthreads.create_app(extensions=[pubsub]), "127.0.0.1", 0)
    try:
        with WebSocketClient(f"{server.url}?topic=news") as client:
            start = json.loads(client.recv(timeout=WAIT))["last_id"]
            stream = dict(parse_qsl(urlsplit(redis_url).query))["stream"]
            with redis.Redis.from_url(redis_url.split("?")[0]) as raw:
                raw.xadd(stream, {b"topic": b"news", b"data": b"\xff\xfe not UTF-8"})
            after = pubsub.publish("news", "after it")
            got = [json.loads(client.recv(timeout=WAIT)) for _ in range(2)]
            assert [m["data"] for m in got] == ["\ufffd\ufffd not UTF-8", "after it"]
            assert got[1]["id"] == after
        with WebSocketClient(f"{server.url}?topic=news&last_id={start}") as resumed:  # the replay too
            assert [json.loads(resumed.recv(timeout=WAIT))["data"] for _ in range(2)][1] == "after it"
    finally:
        server.shutdown()


def test_retention_is_the_servers_and_a_publisher_without_keep_trims_nothing(redis_url: str) -> None:
    """The followers trim to their ?keep= (at least that many kept); a publisher's URL without keep
    leaves the stream alone, so one script with another URL cannot shorten what clients resume from."""
    import redis

    stream = dict(parse_qsl(urlsplit(redis_url).query))["stream"]
    plain = redis.Redis.from_url(redis_url.split("?")[0])
    try:
        for i in range(300):
            wsthreads.publish("news", f"kept {i}", broker=redis_url)
        assert plain.xlen(stream) == 300
        app = wsthreads.create_app(extensions=[wsthreads.PubSub(with_query(redis_url, keep="50"))])
        server = wsthreads.start_server(app, "127.0.0.1", 0)
        try:
            with WebSocketClient(f"{server.url}?topic=news") as client:
                client.recv(timeout=WAIT)
                wsthreads.publish("news", "one more", broker=redis_url)  # the follower reads it and trims
                assert wait_until(lambda: plain.xlen(stream) < 300, WAIT)
                assert plain.xlen(stream) >= 50
        finally:
            server.shutdown()
    finally:
        plain.close()


def test_a_long_age_retention_publishes(redis_url: str) -> None:
    """keep=36500d reaches back before 1970: trimming starts at 0, publishing still works."""
    url = with_query(redis_url, keep="36500d")
    assert id_pair(wsthreads.publish("news", "kept for a century", broker=url)) > (0, 0)
