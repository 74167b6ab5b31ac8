"""Fan-out: publish→deliver latency and deliveries/s to N subscribers of one topic, Redis and in-process.

    python bench/fanout.py            # N = 1000; one run of the 4 rows, about 2 min; own redis-server
    python bench/fanout.py --quick    # N = 50, a few messages: a smoke run of about 10 s
    python bench/fanout.py --runs 3 --json bench/fanout.json   # how bench/fanout.json was made
    python bench/fanout.py --redis redis://127.0.0.1:6379/0   # a Redis of yours (own streams, deleted)

Each row is one server (gunicorn with our gthread worker and ``gunicorn.conf.py``,
serving ``bench/fanout_server.py``) with N subscribers of one topic
(``/ws?topic=fanout``), and one publisher:

* ``redis-2w-publish``: Redis broker (a ``redis-server`` on this machine),
  two workers, the subscribers spread over both; the publisher is this
  process, another one than the servers', calling
  ``wsthreads.publish(topic, data, broker=URL)`` (the issue's case);
* ``redis-2w-ws``: the same, but the publisher is a WebSocket connection
  to the server, whose handler calls ``pubsub.publish`` for each message it
  sends (the way the in-process row has to publish);
* ``redis-1w-ws``: Redis, one worker, publisher connection: the Redis row
  with the in-process row's process count, to tell the broker's cost from
  the second worker's;
* ``memory-1w-ws``: the in-process broker, one worker (it lives in that
  one process), publisher connection.

The N subscribers are raw sockets in one other process, read with one
selector. Each checks that its first message is the ``subscribed`` note,
then that it gets every published message once, in order (the sequence
number in the data, and growing ids), of the right topic; anything else
ends the run with an error. Every message carries its publisher's
``time.monotonic()`` (one clock for every process on Linux), so the
subscribers see how long each delivery took: from just before the
publish call (or the publisher's send) to the moment the subscriber's
process had read it from its socket.

Two phases per row, on the same connections, after a short warm-up:

* paced: M messages at R per second (R x N deliveries per second). Per
  delivery (each subscriber x message): p50, p99 and the slowest; per
  message, the time until the last of the N subscribers had it ("all N"):
  p50 and p99;
* burst: B messages published back to back. Deliveries per second: N x B
  over the time from the first publish to the last delivery; publishes
  per second: the rate of the publisher's calls (``publish()`` returns once
  Redis has the message; a publisher connection's send once the frame is
  in its socket, before the server calls ``pubsub.publish``); per delivery
  p50, p99, slowest.

Pinned as bench/broadcast.py pins (``--no-pin``: left to the scheduler):
worker i, every thread of it, on CPU i, the subscribers' process on the
last CPU; Redis and the publisher are not pinned. Unpinned, the hundreds
of threads of one worker contend for its GIL from both cores, and
everything is several times slower (up to 10x in our tries). Servers,
Redis and the subscribers' process each run in a session of their own
(so the kernel's autogroup shares the CPUs between processes, not between
their threads).

Also recorded: the CPU seconds the server's workers and the subscribers'
process used in each phase (the subscribers' process runs Python too: if
it is near one CPU second per second, it is the limit, not the server).
Nothing here is a test: no figure is asserted, but every message is checked.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import platform
import queue
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from fanout_server import TOPIC  # noqa: E402

import wsthreads  # noqa: E402

#: Seconds without any message before the subscribers' process gives up.
STALL = 30.0
#: Bound for starting a server, connecting the subscribers, and most other waits (seconds).
WAIT = 60.0
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass(frozen=True)
class Row:
    """One server set-up and its publisher."""

    key: str
    broker: str  # "redis" or "memory"
    workers: int
    publisher: str  # "publish()": wsthreads.publish from this process; "ws": a publisher connection

    @property
    def label(self) -> str:
        broker = "Redis" if self.broker == "redis" else "in-process"
        workers = f"{self.workers} worker{'s' if self.workers > 1 else ''}"
        publisher = (
            "publish() from another process"
            if self.publisher == "publish()"
            else "publisher WS → pubsub.publish"
        )
        return f"{broker}, {workers}, {publisher}"


ROWS = [
    Row("redis-2w-publish", "redis", 2, "publish()"),
    Row("redis-2w-ws", "redis", 2, "ws"),
    Row("redis-1w-ws", "redis", 1, "ws"),
    Row("memory-1w-ws", "memory", 1, "ws"),
]


@dataclass(frozen=True)
class Size:
    """How much one row does: N subscribers; warm-up, paced (M at R/s) and burst (B) messages."""

    subscribers: int
    warmup: int
    paced: int
    rate: float
    burst: int

    def plan(self) -> list[tuple[str, int]]:
        return [("warmup", self.warmup), ("paced", self.paced), ("burst", self.burst)]


FULL = Size(subscribers=1000, warmup=4, paced=20, rate=2.0, burst=300)
QUICK = Size(subscribers=50, warmup=4, paced=20, rate=40.0, burst=100)


# --- the subscribers' process --------------------------------------------------


def fail(text: str) -> None:
    """End the subscribers' process with one line on stderr (exit status 1)."""
    raise SystemExit(f"fanout subscribers: {text}")


def handshake(port: int, path: str) -> tuple[socket.socket, bytes]:
    """A raw WebSocket client on ``path``, handshake done; the bytes read past the 101's end."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            fail(f"the server closed during the handshake: {answer[:200]!r}")
        answer += chunk
    head, rest = answer.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        fail(f"the handshake was refused: {head.splitlines()[0].decode(errors='replace')}")
    return sock, rest


def split_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole server frames at the front of ``data`` as (opcode, payload), and the rest."""
    found = []
    pos, size = 0, len(data)
    while size - pos >= 2:
        first, second = data[pos], data[pos + 1]
        if second & 0x80 or not first & 0x80:
            fail("a masked or fragmented frame from the server")
        length, header = second & 0x7F, 2
        if length == 126:
            length, header = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            length, header = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
        end = pos + header + length
        if size < end:
            break
        found.append((first & 0x0F, data[pos + header : end]))
        pos = end
    return found, data[pos:]


def id_pair(entry_id: str) -> tuple[int, int]:
    milliseconds, sequence = entry_id.split("-")
    return int(milliseconds), int(sequence)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest rank: the value that ``fraction`` of ``ordered`` (sorted) is at or below."""
    return ordered[min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.5) - 1))]


class Phase:
    """What the subscribers saw of one phase's messages (sequence numbers start .. start+messages-1)."""

    def __init__(self, name: str, start: int, messages: int) -> None:
        self.name, self.start, self.messages = name, start, messages
        self.end = start + messages
        self.latencies = array("d")  # one per delivery
        self.slowest = array("d", [0.0] * messages)  # per message: its latest delivery
        self.first_sent = self.last_sent = 0.0
        self.last_delivery = 0.0
        self.finished = 0  # subscribers that have got all of it

    def report(self, count: int, cpu: float) -> dict[str, Any]:
        ordered, everyone = sorted(self.latencies), sorted(self.slowest)
        elapsed = self.last_delivery - self.first_sent
        return {
            "phase": self.name,
            "messages": self.messages,
            "deliveries": len(ordered),
            "p50_ms": percentile(ordered, 0.5) * 1000,
            "p99_ms": percentile(ordered, 0.99) * 1000,
            "max_ms": ordered[-1] * 1000,
            "all_p50_ms": percentile(everyone, 0.5) * 1000,
            "all_p99_ms": percentile(everyone, 0.99) * 1000,
            "deliveries_per_s": count * self.messages / elapsed if elapsed > 0 else 0.0,
            "published_per_s": (self.messages - 1) / (self.last_sent - self.first_sent)
            if self.messages > 1 and self.last_sent > self.first_sent
            else 0.0,
            "subscribers_cpu_s": cpu,
        }


def run_subscribers(port: int, count: int, plan: list[tuple[str, int]]) -> None:
    """The subscribers' process: ``count`` subscriptions; one JSON line per phase on stdout.

    Prints ``ready`` once every subscriber has its ``subscribed`` note, then
    a line for each phase once every subscriber has all of its messages.
    """
    phases, start = [], 0
    for name, messages in plan:
        phases.append(Phase(name, start, messages))
        start += messages
    total = start
    phase_of = [phase for phase in phases for _ in range(phase.messages)]
    socks, buffers = [], []
    for _ in range(count):
        sock, rest = handshake(port, f"/ws?topic={TOPIC}")
        socks.append(sock)
        buffers.append(rest)
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    expected = [-1] * count  # the next sequence number due; -1: the note first
    last_ids = [(0, 0)] * count
    subscribed = 0
    current = 0  # the phase being received
    cpu = time.process_time()

    def handle(index: int, payload: bytes, now: float) -> None:
        nonlocal subscribed
        message = json.loads(payload)
        if expected[index] < 0:
            if message.get("note") != "subscribed":
                fail(f"subscriber {index}: the first message is not the subscribed note: {message}")
            expected[index], last_ids[index] = 0, id_pair(message["last_id"])
            subscribed += 1
            if subscribed == count:
                print("ready", flush=True)
            return
        if message.get("topic") != TOPIC or "note" in message:
            fail(f"subscriber {index}: not a message of {TOPIC!r}: {message}")
        number, sent_text = message["data"].split()
        seq, sent = int(number), float(sent_text)
        if seq != expected[index]:
            fail(f"subscriber {index}: message {seq} arrived when {expected[index]} was due")
        position = id_pair(message["id"])
        if position <= last_ids[index]:
            fail(f"subscriber {index}: id {message['id']} after {last_ids[index]}: not in order")
        if seq >= total:
            fail(f"subscriber {index}: message {seq}, but only {total} were to be published")
        expected[index], last_ids[index] = seq + 1, position
        phase = phase_of[seq]
        latency = now - sent
        phase.latencies.append(latency)
        slot = seq - phase.start
        if latency > phase.slowest[slot]:
            phase.slowest[slot] = latency
        if seq == phase.start:
            phase.first_sent = sent
        elif seq == phase.end - 1:
            phase.last_sent = sent
        if seq + 1 == phase.end:
            phase.finished += 1
            phase.last_delivery = max(phase.last_delivery, now)

    for index, rest in enumerate(buffers):  # frames that came with the 101
        found, buffers[index] = split_frames(rest)
        for _, payload in found:
            handle(index, payload, time.monotonic())
    while current < len(phases):
        events = selector.select(STALL)
        if not events:
            due = statistics.median(expected)
            fail(
                f"nothing arrived for {STALL:g} s; {subscribed}/{count} subscribed, median message due {due}"
            )
        for key, _ in events:
            index = key.data
            try:
                data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            if not data:
                fail(f"the server closed subscriber {index}'s connection")
            now = time.monotonic()
            found, buffers[index] = split_frames(buffers[index] + data)
            for opcode, payload in found:
                if opcode != 1:
                    fail(f"subscriber {index}: a frame with opcode {opcode}: {payload[:100]!r}")
                handle(index, payload, now)
        while current < len(phases) and phases[current].finished == count:
            used, cpu = time.process_time() - cpu, time.process_time()
            print(json.dumps(phases[current].report(count, used)), flush=True)
            current += 1
    # Nothing more may come: a message twice at the very end would show here.
    for key, _ in selector.select(0.3):
        data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
        if data:
            fail(f"subscriber {key.data}: more than the {total} messages published: {data[:100]!r}")
    for sock in socks:
        sock.close()


# --- the servers -----------------------------------------------------------------


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill a process started with ``start_new_session`` and all of its group; reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # it has gone already
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass  # killed; the kernel reaps it once we exit


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of process ``pid`` to ``cpu`` (threads it starts later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), {cpu})
        except (ProcessLookupError, OSError):
            pass  # that thread has ended meanwhile


def wait_until(condition: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return bool(condition())
        time.sleep(step)
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A private ``redis-server`` on a free port, nothing saved; its URL. Killed at the end."""
    import redis

    proc = None
    try:
        for _ in range(3):  # the free port may be taken meanwhile: another one
            port = free_port()
            command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
            command += ["--dir", str(directory), "--save", "", "--appendonly", "no"]
            command += ["--logfile", str(directory / "redis.log")]
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
            client = redis.Redis(port=port, socket_timeout=1)

            def answers(proc: subprocess.Popen[bytes] = proc, client: redis.Redis = client) -> bool:
                """True once it answers PING; also (to stop waiting) once it has exited."""
                if proc.poll() is not None:
                    return True
                try:
                    return bool(client.ping())
                except redis.RedisError:
                    return False

            if wait_until(answers, 10) and proc.poll() is None:
                break
            kill_group(proc)
        else:
            raise SystemExit(f"redis-server did not start; see {directory / 'redis.log'}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if proc is not None:
            kill_group(proc)


def with_stream(url: str, stream: str) -> str:
    """``url`` with its broker query's ``stream`` set."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True), stream=stream)
    return urlunsplit(parts._replace(query=urlencode(query)))


def delete_stream(url: str) -> None:
    """Delete the broker's stream (a best effort: the run's figures are in already)."""
    import redis

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    stream = query.pop("stream")
    try:
        with redis.Redis.from_url(urlunsplit(parts._replace(query="")), socket_timeout=5) as client:
            client.delete(stream)
    except redis.RedisError as error:
        print(f"(could not delete the Redis stream {stream}: {error})", file=sys.stderr)


class Gunicorn:
    """``gunicorn -c gunicorn.conf.py`` serving fanout_server on a free port, every worker ready."""

    def __init__(self, broker: str | None, workers: int, threads: int, log: Path) -> None:
        self.log = log
        command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]
        command += ["-b", "127.0.0.1:0", "--pythonpath", str(BENCH), "-w", str(workers)]
        command += ["--threads", str(threads), "--worker-connections", str(threads)]
        command += [f"fanout_server:create_app(broker={broker!r})"]
        env = dict(os.environ, WSTHREADS_QUIET="1")
        env.pop("WSTHREADS_TRACE", None)
        with log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            listening = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
            ready = wait_until(
                lambda: (
                    self.proc.poll() is not None
                    or (
                        listening.search(self.output()) is not None
                        and self.output().count("worker ready") >= workers
                    )
                ),
                WAIT,
            )
            match = listening.search(self.output())
            if not ready or match is None or self.proc.poll() is not None:
                raise SystemExit(f"gunicorn did not start {workers} workers:\n{self.output()[-3000:]}")
            self.port = int(match.group(1))
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The pids of its living workers (its children), from /proc."""
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                state, ppid = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            except OSError:
                continue  # gone meanwhile
            if int(ppid) == self.proc.pid and state != "Z":
                found.append(int(name))
        return sorted(found)

    def sessions(self) -> dict[int, int]:
        """How many established connections to our port each worker holds: {pid: count}."""
        inodes: dict[str, int] = {}
        for pid in self.workers():
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes[target[8:-1]] = pid
            except OSError:
                continue  # it has gone
        counts = dict.fromkeys(self.workers(), 0)
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            holder = inodes.get(fields[9])
            if holder is not None and fields[3] == "01" and int(fields[1].split(":")[1], 16) == self.port:
                counts[holder] = counts.get(holder, 0) + 1
        return counts

    def pin(self) -> list[int]:
        """Pin worker i, every thread of it, to CPU i (mod the CPUs); the CPUs, worker by worker."""
        cpus = sorted(os.sched_getaffinity(0))
        chosen = []
        for index, pid in enumerate(self.workers()):
            cpu = cpus[index % len(cpus)]
            pin_process(pid, cpu)
            chosen.append(cpu)
        return chosen

    def cpu_seconds(self) -> float:
        """CPU time (user + system) its workers have used so far."""
        ticks = 0
        for pid in self.workers():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        kill_group(self.proc)


# --- publishers and one row ------------------------------------------------------


class Publisher(Protocol):
    def publish(self, data: str) -> None: ...
    def close(self) -> None: ...


class BrokerPublisher:
    """``wsthreads.publish(TOPIC, data, broker=URL)`` from this process: not a server's."""

    def __init__(self, url: str) -> None:
        self.url = url

    def publish(self, data: str) -> None:
        wsthreads.publish(TOPIC, data, broker=self.url)

    def close(self) -> None:
        """Nothing: the shared broker's pool goes with the process."""


class SocketPublisher:
    """A WebSocket connection without a topic: the server's handler publishes what it sends."""

    def __init__(self, port: int) -> None:
        self.conn = wsthreads.dial(f"ws://127.0.0.1:{port}/ws", wsthreads.ClientConfig(timeout=WAIT))
        self.conn.start()

    def publish(self, data: str) -> None:
        self.conn.send(data)

    def close(self) -> None:
        self.conn.close()
        self.conn.wait_closed()


class Subscribers:
    """The subscribers' process, and its output lines read by a thread (so every wait is bounded)."""

    def __init__(self, port: int, size: Size) -> None:
        plan = ",".join(f"{name}:{messages}" for name, messages in size.plan())
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--subscribers", str(port), str(size.subscribers), plan],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.errors.append), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str], put: Any) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def next_line(self, timeout: float, what: str) -> str:
        """Its next line on stdout within ``timeout`` s, else SystemExit saying what it was waiting for."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            self.proc.poll()
            time.sleep(0.2)  # its last words on stderr
            errors = " ".join(e for e in self.errors if e) or f"exit status {self.proc.returncode}"
            raise SystemExit(f"the subscribers' process failed while waiting for {what}: {errors}")
        return line

    def stop(self) -> None:
        kill_group(self.proc)


def publish_phase(publisher: Publisher, first: int, messages: int, rate: float | None) -> float:
    """Publish sequence numbers ``first`` .. ``first + messages - 1``, each with its send time,
    at ``rate`` per second (None: back to back); the seconds the calls took."""
    started = time.monotonic()
    for i in range(messages):
        if rate is not None:
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        publisher.publish(f"{first + i} {time.monotonic():.6f}")
    return time.monotonic() - started


def measure(row: Row, size: Size, redis_url: str | None, directory: Path, pin: bool) -> dict[str, Any]:
    """One run of one row: its subscribers per worker, and each phase's figures."""
    broker = None
    if row.broker == "redis":
        assert redis_url is not None
        broker = with_stream(redis_url, f"wsthreads-bench-fanout-{uuid.uuid4().hex[:12]}")
    # Threads (sessions) per worker: room for all with one worker; with two, each can take at most
    # N/2 + 100, so both get some (gunicorn's accepts decide the spread).
    threads = size.subscribers + 100 if row.workers == 1 else size.subscribers // 2 + 100
    server: Gunicorn | None = None
    subscribers: Subscribers | None = None
    publisher: Publisher | None = None
    try:
        server = Gunicorn(broker, row.workers, threads, directory / f"gunicorn-{row.key}.log")
        pinned = server.pin() if pin else []
        subscribers = Subscribers(server.port, size)
        if pin:  # the subscribers on the last CPU: with one worker, the one it does not use
            pin_process(subscribers.proc.pid, sorted(os.sched_getaffinity(0))[-1])
        subscribers.next_line(WAIT, f"{size.subscribers} subscriptions")
        running = server
        wait_until(lambda: sum(running.sessions().values()) >= size.subscribers, 10)
        spread = sorted(server.sessions().values(), reverse=True)
        if row.publisher == "publish()":
            assert broker is not None
            publisher = BrokerPublisher(broker)
        else:
            publisher = SocketPublisher(server.port)
        figures: dict[str, Any] = {"subscribers_per_worker": spread, "worker_cpus": pinned}
        first = 0
        for name, messages in size.plan():
            cpu = server.cpu_seconds()
            rate = None if name == "burst" else size.rate
            calls = publish_phase(publisher, first, messages, rate)
            bound = WAIT + messages * size.subscribers / 2000  # generous: a slow spell may last
            result = json.loads(subscribers.next_line(bound, f"the {name} phase's messages"))
            result["publish_calls_s"] = calls
            result["server_cpu_s"] = server.cpu_seconds() - cpu
            figures[name] = result
            first += messages
        if subscribers.proc.wait(WAIT) != 0:
            raise SystemExit(f"the subscribers' process failed: {' '.join(subscribers.errors)}")
        problems = [line for line in server.output().splitlines() if "Traceback" in line or "ERROR" in line]
        if problems:
            raise SystemExit(f"the server logged errors ({row.key}):\n" + "\n".join(problems[:10]))
        return figures
    finally:
        if publisher is not None:
            publisher.close()
        if subscribers is not None:
            subscribers.stop()
        if server is not None:
            server.stop()
        if broker is not None:
            delete_stream(broker)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each phase's figures: the median over the runs (the spread of every run kept)."""
    result: dict[str, Any] = {
        "subscribers_per_worker": [run["subscribers_per_worker"] for run in runs],
        "worker_cpus": runs[0]["worker_cpus"],
    }
    for phase in ("warmup", "paced", "burst"):
        keys = [key for key, value in runs[0][phase].items() if isinstance(value, (int, float))]
        result[phase] = {key: statistics.median(run[phase][key] for run in runs) for key in keys}
    return result


def spread_text(spreads: list[list[int]]) -> str:
    return " / ".join("+".join(str(n) for n in spread) for spread in spreads)


def print_tables(
    size: Size, rows: list[Row], figures: dict[str, dict[str, Any]], runs: int, pinned: bool
) -> None:
    n = size.subscribers
    print(
        f"\n{n} subscribers of one topic, in one other process; medians of {runs} run(s); times in ms;"
        f" {'workers pinned, one per CPU' if pinned else 'not pinned'}"
        f"\npaced: {size.paced} messages at {size.rate:g}/s ({size.rate * n:,.0f} deliveries/s);"
        f" per delivery (subscriber x message), and 'all {n}': until the last subscriber had a message"
    )
    print(f"| row | subscribers per worker | p50 | p99 | slowest | all {n} p50 | all {n} p99 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        f, p = figures[row.key], figures[row.key]["paced"]
        print(
            f"| {row.label} | {spread_text(f['subscribers_per_worker'])} | {p['p50_ms']:.1f} |"
            f" {p['p99_ms']:.1f} | {p['max_ms']:.1f} | {p['all_p50_ms']:.1f} | {p['all_p99_ms']:.1f} |"
        )
    print(
        f"\nburst: {size.burst} messages back to back; deliveries/s = {n} x {size.burst} over first publish"
        " to last delivery; CPU s used by the server's workers / the subscribers' process"
    )
    print("| row | deliveries/s | publishes/s | p50 | p99 | slowest | CPU s server / subscribers |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        b = figures[row.key]["burst"]
        print(
            f"| {row.label} | {b['deliveries_per_s']:,.0f} | {b['published_per_s']:,.0f} |"
            f" {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['max_ms']:.1f} |"
            f" {b['server_cpu_s']:.1f} / {b['subscribers_cpu_s']:.1f} |"
        )


def main() -> None:
    """Measure every row, print the tables, optionally write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 50, a few messages: a smoke run")
    parser.add_argument("--runs", type=int, default=1, help="runs per row; the figures are medians (1)")
    parser.add_argument(
        "--rows", default=",".join(row.key for row in ROWS), help="comma-separated rows (default: all)"
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("WSTHREADS_REDIS_URL"),
        help="a running Redis to use (default: $WSTHREADS_REDIS_URL, else a private redis-server)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin worker i to CPU i and the subscribers to the last"
    )
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--subscribers", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscribers:
        port, count, plan = args.subscribers
        steps = [(name, int(messages)) for name, messages in (step.split(":") for step in plan.split(","))]
        run_subscribers(int(port), int(count), steps)
        return
    logging.basicConfig(level=logging.ERROR)  # the publisher connection's close: no line
    size = QUICK if args.quick else FULL
    known = {row.key: row for row in ROWS}
    unknown = [key for key in args.rows.split(",") if key not in known]
    if unknown:
        parser.error(f"no such row: {', '.join(unknown)} (rows: {', '.join(known)})")
    rows = [known[key] for key in args.rows.split(",")]
    pin = not args.no_pin and len(os.sched_getaffinity(0)) > 1
    samples: dict[str, list[dict[str, Any]]] = {row.key: [] for row in rows}
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as temp:
        needed = any(row.broker == "redis" for row in rows)
        with redis_to_use(args.redis, needed, Path(temp)) as redis_url:
            for run in range(args.runs):  # row after row, run after run: slow spells hit every row
                for row in rows:
                    started = time.monotonic()
                    samples[row.key].append(measure(row, size, redis_url, Path(temp), pin))
                    took = time.monotonic() - started
                    print(f"(run {run + 1}, {row.key}: {took:.1f} s)", file=sys.stderr, flush=True)
    figures = {
        row.key: {
            "label": row.label,
            "broker": row.broker,
            "workers": row.workers,
            "publisher": row.publisher,
            **median_of(samples[row.key]),
        }
        for row in rows
    }
    print_tables(size, rows, figures, args.runs, pin)
    if args.json:
        document = {
            "subscribers": size.subscribers,
            "warmup": size.warmup,
            "paced": {"messages": size.paced, "rate_per_s": size.rate},
            "burst": {"messages": size.burst},
            "runs": args.runs,
            "pinned": pin,
            "redis": "given" if args.redis else "private redis-server",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "rows": figures,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")


@contextmanager
def redis_to_use(url: str | None, needed: bool, directory: Path) -> Iterator[str | None]:
    """The Redis to use: ``url``, else a private redis-server (None when no row needs one)."""
    if url or not needed:
        yield url
        return
    if not os.access(REDIS_SERVER, os.X_OK):
        raise SystemExit(
            "redis-server is not installed (apt-get install -y redis-server): pass --redis URL,"
            " or --rows memory-1w-ws"
        )
    with redis_server(directory) as started:
        yield started


if __name__ == "__main__":
    main()
