"""Benchmark: each side alone, our server and our client against their peers, in one run.

    python bench/bench.py            # full run: medians of 5 (servers) and 3 (clients), ~15 minutes
    python bench/bench.py --quick    # a few minutes
    python bench/bench.py --json bench/results.json --plot docs/performance.png

**Servers**, measured by one load client: a Go gorilla program (``interop/go/bench``),
the same binary for every server, pinned to core 0, each server pinned to core 1,
one server after the other in every run:

* ``ours``: ``sync_server.py --echo --quiet`` (Werkzeug);
* ``ours+log``: ``sync_server.py --echo``, a line per message (to a file): what the line costs;
* ``ours-pure``: ``ours`` with ``WSTHREADS_MASKING=python``: unmasking in pure Python, as
  without the ``speedups`` extra;
* ``gunicorn``: the same app under gunicorn, 2 gthread workers, not pinned;
* ``websockets``: ``websockets.sync.server`` (``bench/websockets_echo.py``);
* ``gorilla``: the article's Go server, ``-echo -quiet``;
* ``tcp``: a plain TCP echo in Python (``bench/tcp_echo.py``), the floor of a Python server.

Then each server, started afresh, holds 1000 connections making 20 round trips each
at once: its memory per connection is its peak RSS (VmHWM) minus its idle RSS, over N.
This case has one more server, ``werkzeug`` (``bench/werkzeug_floor.py``): Werkzeug's
threaded server with an app that answers the upgrade itself and echoes small frames, the
floor of what a connection costs under Werkzeug before any WebSocket code.

**Clients**, in this process on core 0, against one gorilla echo server on core 1:
``ours`` (``wsthreads.dial`` and the connection's reader, the transport of
``sync_client.py``), ``ours-api`` (``wsthreads.WebSocketClient``), ``websockets``
(``websockets.sync.client``), ``websocket-client`` (its own ``create_connection``), and
``tcp``: plain sockets against a Go TCP echo, the floor.

**Broadcast**: ``bench/broadcast.py``'s measure at 1000 connections.

Every echo is checked. Each figure is the median of the runs (min to max); ratios are
X/peer, computed run by run, turned round for times: above 1 means X is better.
Nothing here is a test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wsthreads  # noqa: E402

SERVER_CPU, CLIENT_CPU = 1, 0
Message = str | bytes
Figures = dict[str, list[float]]  # metric -> one value per run


# --- Clients (the client table) ------------------------------------------------


class Client(Protocol):
    """One connected benchmark client: send a message, receive the next one."""

    def send(self, message: Message) -> None: ...
    def recv(self, size: int) -> Message: ...
    def close(self) -> None: ...


class OurClient:
    """Our transport as sync_client.py runs it: dial, then the connection's reader hands messages over."""

    def __init__(self, url: str) -> None:
        self.conn = wsthreads.dial(url, wsthreads.ClientConfig(timeout=30, max_message_size=None))
        self.received: queue.Queue[Message] = queue.Queue()
        self.conn.start(self.received.put)

    def send(self, message: Message) -> None:
        self.conn.send(message)

    def recv(self, size: int) -> Message:
        return self.received.get(timeout=30)

    def close(self) -> None:
        self.conn.close()
        self.conn.wait_closed()


class OurApiClient:
    """The embedding API: WebSocketClient's send() and recv()."""

    def __init__(self, url: str) -> None:
        self.client = wsthreads.WebSocketClient(url, timeout=30, max_message_size=None).connect()

    def send(self, message: Message) -> None:
        self.client.send(message)

    def recv(self, size: int) -> Message:
        return self.client.recv(timeout=30)

    def close(self) -> None:
        self.client.close()


class WebsocketsClient:
    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, compression=None, max_size=None, open_timeout=30)

    def send(self, message: Message) -> None:
        self.ws.send(message)

    def recv(self, size: int) -> Message:
        return self.ws.recv(timeout=30)

    def close(self) -> None:
        self.ws.close()


class WebsocketClientClient:
    """websocket-client's own API, as its README shows it (it sets TCP_NODELAY itself)."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=30)

    def send(self, message: Message) -> None:
        if isinstance(message, str):
            self.ws.send(message)
        else:
            self.ws.send_bytes(message)

    def recv(self, size: int) -> Message:
        return self.ws.recv()

    def close(self) -> None:
        self.ws.close()


class TcpClient:
    """The floor: the same bytes over plain TCP, no framing at all."""

    def __init__(self, url: str) -> None:
        import socket

        host, port = url.removeprefix("tcp://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, message: Message) -> None:
        self.sock.sendall(message.encode() if isinstance(message, str) else message)

    def recv(self, size: int) -> Message:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(min(size - len(data), 1 << 20))
            if not chunk:
                raise EOFError("server closed")
            data += chunk
        return bytes(data)

    def close(self) -> None:
        self.sock.close()


CLIENTS: dict[str, Callable[[str], Client]] = {
    "ours": OurClient,
    "ours-api": OurApiClient,
    "websockets": WebsocketsClient,
    "websocket-client": WebsocketClientClient,
    "tcp": TcpClient,
}


def expect(client: Client, expected: Message) -> None:
    """Receive the next message and check it is the one sent (plain TCP gives bytes back)."""
    got = client.recv(len(expected))
    if isinstance(expected, str) and isinstance(got, bytes):
        got = got.decode()
    if got != expected:
        raise RuntimeError(f"expected {expected[:70]!r}, got {got[:70]!r}")


def rtt(client: Client, rounds: int) -> dict[str, float]:
    """Sequential round trips of a 32-byte text message: p50 and p99 in µs."""
    message = "x" * 32
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        client.send(message)
        expect(client, message)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"rtt_p50_us": times[len(times) // 2] * 1e6, "rtt_p99_us": times[int(len(times) * 0.99)] * 1e6}


def back_to_back(client: Client, rounds: int) -> dict[str, float]:
    """Two messages sent back to back: the second one's round trip, p50 in µs (Nagle shows here)."""
    times = []
    for _ in range(rounds):
        client.send("first message...")
        start = time.perf_counter()
        client.send("second message..")
        expect(client, "first message...")
        expect(client, "second message..")
        times.append(time.perf_counter() - start)
    return {"second_rtt_p50_us": statistics.median(times) * 1e6}


def pipelined(client: Client, count: int) -> dict[str, float]:
    """``count`` 64-byte text messages, a reader thread receiving while we send: messages/s."""
    messages = [f"{i:064d}" for i in range(count)]
    failures: list[BaseException] = []

    def read() -> None:
        try:
            for message in messages:
                expect(client, message)
        except Exception as error:
            failures.append(error)

    reader = threading.Thread(target=read, name="bench-reader")
    start = time.perf_counter()
    reader.start()
    if isinstance(client, TcpClient):
        client.send("".join(messages))
    else:
        for message in messages:
            client.send(message)
    reader.join(120)
    elapsed = time.perf_counter() - start
    if failures or reader.is_alive():
        raise RuntimeError(f"pipelined: {failures[0] if failures else 'no echo within 120 s'}")
    return {"msgs_per_s": count / elapsed}


def large(client: Client, count: int, size: int = 1 << 20) -> dict[str, float]:
    """``count`` binary messages of 1 MiB, one at a time, each checked byte for byte: MB/s."""
    data = os.urandom(size)
    start = time.perf_counter()
    for _ in range(count):
        client.send(data)
        expect(client, data)
    return {"mb_per_s": count * size / (time.perf_counter() - start) / 1e6}


def measure_client(make: Callable[[str], Client], url: str, plan: Plan) -> dict[str, float]:
    """The four workloads, each on a connection of its own."""
    results: dict[str, float] = {}
    for workload, count in (
        (rtt, plan.rounds),
        (back_to_back, plan.back_to_back),
        (pipelined, plan.messages),
        (large, plan.large),
    ):
        client = make(url)
        try:
            results |= workload(client, count)
        finally:
            client.close()
    return results


# --- Servers (the server table) ------------------------------------------------


@dataclass
class Server:
    name: str
    command: list[str]
    pinned: bool = True  # False: gunicorn's two workers are meant to share both cores
    env: dict[str, str] | None = None
    processes: int = 1  # gunicorn: the arbiter and its workers
    connections_only: bool = False  # a floor that can only hold the 1000 connections' round trips


def status_kib(pid: int | str, field: str) -> int:
    """A memory figure of ``/proc/PID/status`` in KiB: VmRSS, VmHWM, RssAnon."""
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1])


class ServerProcess:
    """An echo server in its own process, its output in a file (no pipe for us to drain).

    Its URL is the first one its output names; for gunicorn, it is ready once
    all its workers are up.
    """

    def __init__(self, server: Server, log: Path) -> None:
        self.server = server
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                server.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(server.env or {})},
            )
        if server.pinned:
            pin(self.proc.pid, SERVER_CPU)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = re.search(r"((?:ws|tcp)://\S+)|Listening at: http://(\S+)", log.read_text())
            if match and len(self.pids()) >= server.processes:
                self.url = match.group(1) or f"ws://{match.group(2)}/ws"
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{server.name} did not start: {log.read_text()[-500:]}")

    def pids(self) -> list[int]:
        """The server's process and its children (gunicorn's workers)."""
        children = []
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{task}/children") as listed:
                    children += [int(pid) for pid in listed.read().split()]
            except FileNotFoundError:
                continue  # that thread has just ended
        return [self.proc.pid, *children]

    def threads(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/task")) for pid in self.pids())

    def memory_kib(self, field: str) -> int:
        """VmRSS (now) or VmHWM (peak) from /proc, summed over its processes."""
        return sum(status_kib(pid, field) for pid in self.pids())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def serving(server: Server, logs: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(server, logs / f"{server.name}.log")
    try:
        yield process
    finally:
        process.stop()


def go_client(binary: str, url: str, *args: str) -> dict[str, float]:
    """Run the Go load client, pinned to the client core; its JSON figures."""
    proc = subprocess.Popen([binary, "-url", url, *args], stdout=subprocess.PIPE, text=True)
    pin(proc.pid, CLIENT_CPU)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"the Go load client failed against {url} (exit {proc.returncode})")
    figures: dict[str, float] = json.loads(out)
    return figures


def measure_server(process: ServerProcess, binary: str, plan: Plan) -> dict[str, float]:
    """The four workloads from the Go client, one connection each."""
    return go_client(
        binary,
        process.url,
        *("-only", "rtt,backtoback,pipelined,large"),
        *("-rounds", str(plan.rounds), "-backtoback", str(plan.back_to_back)),
        *("-messages", str(plan.messages), "-large", str(plan.large)),
    )


def measure_connections(process: ServerProcess, binary: str, conns: int, settle: float) -> dict[str, float]:
    """``conns`` connections at once, 20 round trips each, on a server that has served nothing yet.

    Memory per connection: peak RSS (VmHWM) minus idle RSS, over ``conns``;
    threads: the most seen (sampled every 20 ms), and how many remain once all have closed
    (waiting up to ``settle`` seconds for them to end).
    """
    idle_kib, idle_threads = process.memory_kib("VmRSS"), process.threads()
    peak_threads = idle_threads
    sampled = threading.Event()

    def sample() -> None:
        nonlocal peak_threads
        while not sampled.wait(0.02):
            peak_threads = max(peak_threads, process.threads())

    sampler = threading.Thread(target=sample, name="thread-sampler")
    sampler.start()
    try:
        results = go_client(binary, process.url, "-only", "conns", "-conns", str(conns))
    finally:
        sampled.set()
        sampler.join()
    deadline = time.monotonic() + settle
    while process.threads() > idle_threads and time.monotonic() < deadline:
        time.sleep(0.05)
    prefix = f"c{conns}_"
    return results | {
        prefix + "kib_per_conn": (process.memory_kib("VmHWM") - idle_kib) / conns,
        prefix + "peak_threads": peak_threads,
        prefix + "threads_left": process.threads() - idle_threads,
    }


def pin(pid: int, cpu: int) -> None:
    """Pin a process to one core, where the machine has more than one."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > max(SERVER_CPU, CLIENT_CPU):
        os.sched_setaffinity(pid, {cpu})


def servers(go: dict[str, str]) -> list[Server]:
    python = sys.executable
    ours = [python, "sync_server.py", "--port", "0", "--echo"]
    gunicorn = [str(Path(python).parent / "gunicorn"), "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0"]
    # Connections do not spread evenly over the workers, and each open session holds
    # a thread: 2 x 500 threads served 0 of 1000 here.
    gunicorn += ["--workers", "2", "--threads", "1000", "sync_server:create_app(echo=True)"]
    return [
        Server("ours", [*ours, "--quiet"]),
        Server("ours+log", ours),
        # The same without websockets' C masking (the speedups extra): what pure Python costs.
        Server("ours-pure", [*ours, "--quiet"], env={"WSTHREADS_MASKING": "python"}),
        Server("gunicorn", gunicorn, pinned=False, env={"WSTHREADS_QUIET": "1"}, processes=3),
        Server("websockets", [python, "bench/websockets_echo.py"]),
        Server("gorilla", [go["server"], "-addr", "127.0.0.1:0", "-echo", "-quiet"]),
        Server("tcp", [python, "bench/tcp_echo.py"]),
        Server("werkzeug", [python, "bench/werkzeug_floor.py"], connections_only=True),
    ]


GORILLA = Path("/usr/share/gocode/src/github.com/gorilla/websocket")


def build_go(out: Path, names: tuple[str, ...] = ("server", "bench")) -> dict[str, str]:
    """Build Go programs of interop/go (the echo server and load client), or exit with what to install."""
    if not shutil.which("go") or not GORILLA.is_dir():
        install = "apt-get install golang-go golang-github-gorilla-websocket-dev"
        sys.exit(f"bench.py needs Go and gorilla/websocket: {install}")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="")
    binaries = {}
    for name in names:
        binaries[name] = str(out / f"go-{name}")
        subprocess.run(
            ["go", "build", "-o", binaries[name], "."],
            cwd=ROOT / "interop" / "go" / name,
            env=env,
            check=True,
            timeout=300,
        )
    return binaries


# --- Runs ------------------------------------------------------------------------


@dataclass
class Plan:
    rounds: int
    back_to_back: int
    messages: int
    large: int
    conns: int
    conns_runs: int
    server_runs: int
    client_runs: int
    broadcasts: int
    #: Seconds to wait for the threads to come back to their idle count after a connections run.
    settle: float = 20.0


FULL = Plan(2000, 200, 20000, 50, conns=1000, conns_runs=3, server_runs=5, client_runs=3, broadcasts=1000)
QUICK = Plan(500, 100, 5000, 10, conns=1000, conns_runs=1, server_runs=3, client_runs=3, broadcasts=200)
#: Only checks that the script still works (tests/test_bench.py); its figures mean nothing.
SMOKE = Plan(20, 5, 200, 2, conns=10, conns_runs=1, server_runs=1, client_runs=1, broadcasts=10, settle=0.5)


def add(figures: dict[str, Figures], name: str, results: dict[str, float]) -> None:
    for metric, value in results.items():
        figures.setdefault(name, {}).setdefault(metric, []).append(value)


def run_servers(chosen: list[Server], go: dict[str, str], plan: Plan, logs: Path) -> dict[str, Figures]:
    """Every server in turn, ``plan.server_runs`` times; then, ``plan.conns_runs`` times, each afresh
    with ``plan.conns`` connections."""
    figures: dict[str, Figures] = {}
    for run in range(plan.server_runs):
        for server in (s for s in chosen if not s.connections_only):
            progress(f"server {server.name}, run {run + 1} of {plan.server_runs}")
            with serving(server, logs) as process:
                add(figures, server.name, measure_server(process, go["bench"], plan))
    for run in range(plan.conns_runs):
        for server in chosen:
            progress(f"server {server.name}, {plan.conns} connections, run {run + 1} of {plan.conns_runs}")
            with serving(server, logs) as process:
                add(figures, server.name, measure_connections(process, go["bench"], plan.conns, plan.settle))
    return figures


def run_clients(chosen: list[str], go: dict[str, str], plan: Plan, logs: Path) -> dict[str, Figures]:
    """Every client in turn, ``plan.client_runs`` times, against one gorilla echo (and one Go TCP echo)."""
    figures: dict[str, Figures] = {}
    gorilla = Server("gorilla", [go["server"], "-addr", "127.0.0.1:0", "-echo", "-quiet"])
    tcp = Server("go-tcp", [go["bench"], "-serve-tcp", "127.0.0.1:0"])
    with serving(gorilla, logs) as ws_echo, serving(tcp, logs) as tcp_echo:
        for run in range(plan.client_runs):
            for name in chosen:
                progress(f"client {name}, run {run + 1} of {plan.client_runs}")
                url = tcp_echo.url if name == "tcp" else ws_echo.url
                add(figures, name, measure_client(CLIENTS[name], url, plan))
    return figures


def run_broadcast(plan: Plan) -> dict[str, float]:
    """bench/broadcast.py's measure: app.broadcast to ``plan.conns`` connections."""
    from broadcast import measure

    progress(f"broadcast to {plan.conns} connections")
    logging.getLogger().setLevel(logging.ERROR)  # each run's end drops every connection: no line each
    return measure("broadcast", plan.conns, plan.broadcasts)


def progress(what: str) -> None:
    print(f"measuring {what} ...", file=sys.stderr, flush=True)


# --- Report ----------------------------------------------------------------------

HIGHER_IS_BETTER = ("msgs_per_s", "mb_per_s", "completed")
WORKLOADS = [
    ("rtt_p50_us", "round trip p50, 32 B (µs)"),
    ("rtt_p99_us", "round trip p99, 32 B (µs)"),
    ("second_rtt_p50_us", "second of two back-to-back, p50 (µs)"),
    ("msgs_per_s", "64 B pipelined (msg/s)"),
    ("mb_per_s", "1 MiB echo (MB/s)"),
]
TARGETS = ["rtt_p50_us", "second_rtt_p50_us", "msgs_per_s", "mb_per_s"]


def connection_rows(conns: int) -> list[tuple[str, str]]:
    return [
        (f"c{conns}_completed", f"{conns} conns: completed"),
        (f"c{conns}_seconds", f"{conns} conns: total s"),
        (f"c{conns}_kib_per_conn", f"{conns} conns: KiB/conn (peak - idle RSS)"),
        (f"c{conns}_peak_threads", f"{conns} conns: peak threads"),
        (f"c{conns}_threads_left", f"{conns} conns: threads left after"),
    ]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(ours: list[float], peer: list[float], metric: str) -> dict[str, float] | None:
    """ours/peer run by run (turned round for times, so above 1 always means ours is better)."""
    if not ours or not peer or len(ours) != len(peer):
        return None
    better_high = metric.endswith(HIGHER_IS_BETTER)
    ratios = [(o / p if better_high else p / o) for o, p in zip(ours, peer, strict=False) if o and p]
    return summary(ratios) if ratios else None


def fmt(stats: dict[str, float] | None, unit: str = "") -> str:
    if not stats:
        return "-"
    median, low, high = stats["median"], stats["min"], stats["max"]
    digits = 2 if abs(median) < 10 else 0
    return f"{median:,.{digits}f}{unit} ({low:,.{digits}f} to {high:,.{digits}f})"


def markdown(rows: list[list[str]]) -> str:
    lines = [rows[0], ["---"] * len(rows[0]), *rows[1:]]
    return "\n".join("| " + " | ".join(row) + " |" for row in lines)


def table(
    figures: dict[str, Figures], metrics: list[tuple[str, str]], pairs: list[tuple[str, str]]
) -> tuple[str, dict[str, Any]]:
    """Figures per stack, then the ratios of each (ours, peer) pair; the JSON alongside."""
    stacks = list(figures)
    pairs = [(o, p) for o, p in pairs if o in figures and p in figures]
    rows = [["workload", *stacks, *[f"{o}/{p}" for o, p in pairs]]]
    data: dict[str, Any] = {"figures": {}, "ratios": {}}
    for metric, label in metrics:
        row = [label]
        for stack in stacks:
            values = figures[stack].get(metric, [])
            stats = summary(values) if values else None
            data["figures"].setdefault(stack, {})[metric] = {"runs": values, **(stats or {})}
            row.append(fmt(stats))
        for ours, peer in pairs:
            r = ratio(figures[ours].get(metric, []), figures[peer].get(metric, []), metric)
            data["ratios"].setdefault(f"{ours}/{peer}", {})[metric] = r
            row.append(fmt(r, "x"))
        rows.append(row)
    return markdown(rows), data


def log_cost(figures: dict[str, Figures]) -> dict[str, dict[str, float]] | None:
    """What the per-message log line costs: ours+log minus ours, run by run."""
    if "ours" not in figures or "ours+log" not in figures:
        return None
    quiet, logged = figures["ours"], figures["ours+log"]
    per_rtt = [b - a for a, b in zip(quiet["rtt_p50_us"], logged["rtt_p50_us"], strict=False)]
    per_message = [1e6 / b - 1e6 / a for a, b in zip(quiet["msgs_per_s"], logged["msgs_per_s"], strict=False)]
    return {"us_per_round_trip": summary(per_rtt), "us_per_pipelined_message": summary(per_message)}


def plot(server: dict[str, Any], client: dict[str, Any], path: str) -> None:
    """Bar charts of the target ratios, servers and clients (above 1: ours is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for metric, label in WORKLOADS if metric in TARGETS]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, data, title in (
        (axes[0], server, "servers, one Go load client"),
        (axes[1], client, "clients, one Go echo server"),
    ):
        pairs = list(data["ratios"])
        width = 0.8 / max(len(pairs), 1)
        for i, pair in enumerate(pairs):
            values = [(data["ratios"][pair].get(m) or {}).get("median", 0) for m in TARGETS]
            ax.bar([x + i * width for x in range(len(labels))], values, width, label=pair)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + width * (len(pairs) - 1) / 2 for x in range(len(labels))])
        ax.set_xticklabels([label.replace(" (", "\n(") for label in labels], fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("ratio (above 1: ours is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    for package in ("websocket-client", "simple-websocket", "Werkzeug", "gunicorn", "websockets"):
        found[package] = version(package)
    found["go"] = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
    return found


def main() -> None:
    # At 1000 connections websockets' threads log every failure; the table counts them.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", r"connect\(\) must be used", DeprecationWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, fewer runs: a few minutes")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts, one run: only checks the script works"
    )
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--plot", help="write a PNG of the ratios here (needs matplotlib)")
    parser.add_argument(
        "--servers", default="ours,ours+log,ours-pure,gunicorn,websockets,gorilla,tcp,werkzeug"
    )
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--no-broadcast", action="store_true", help="leave out the broadcast row")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="wsthreads-bench-") as scratch:
        go = build_go(Path(scratch))
        chosen = [s for s in servers(go) if s.name in args.servers.split(",")]
        unknown = set(args.clients.split(",")) - set(CLIENTS)
        if unknown:
            parser.error(f"unknown client {sorted(unknown)[0]!r} (one of {', '.join(CLIENTS)})")
        pin(os.getpid(), CLIENT_CPU)
        server_figures = run_servers(chosen, go, plan, Path(scratch))
        client_figures = run_clients(args.clients.split(","), go, plan, Path(scratch))
    broadcast = None if args.no_broadcast else run_broadcast(plan)

    peers = ["websockets", "gorilla", "tcp", "werkzeug"]
    server_table, server_data = table(
        server_figures,
        WORKLOADS + connection_rows(plan.conns),
        [("ours", p) for p in peers] + [("gunicorn", "websockets"), ("ours-pure", "ours")],
    )
    client_table, client_data = table(
        client_figures,
        WORKLOADS,
        [("ours", "websockets"), ("ours-api", "websockets"), ("ours", "websocket-client"), ("ours", "tcp")],
    )
    cost = log_cost(server_figures)
    print(
        f"Servers: one Go gorilla load client; medians of {plan.server_runs} runs (min to max),"
        f" {plan.conns} connections: of {plan.conns_runs}.\n"
    )
    print(server_table)
    if cost:
        print(
            f"\nThe per-message log line (ours+log - ours, run by run): "
            f"{fmt(cost['us_per_round_trip'], ' µs')} per round trip, "
            f"{fmt(cost['us_per_pipelined_message'], ' µs')} per pipelined message."
        )
    print(f"\nClients: against one Go gorilla echo server; medians of {plan.client_runs} runs.\n")
    print(client_table)
    if broadcast:
        print(
            f"\nBroadcast: {plan.broadcasts} messages to {plan.conns} connections, app.broadcast: "
            f"{broadcast['msgs_per_s']:,.0f} deliveries/s, p50 {broadcast['p50_ms']:.1f} ms, "
            f"slowest {broadcast['max_ms']:.1f} ms."
        )
    data = {
        "server": server_data,
        "client": client_data,
        "log_cost": cost,
        "broadcast": broadcast,
        "versions": versions(),
        "plan": asdict(plan),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    if args.plot:
        plot(server_data, client_data, args.plot)


if __name__ == "__main__":
    main()
