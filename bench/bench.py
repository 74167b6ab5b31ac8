"""Benchmark: our stack against websockets.sync, Go gorilla and plain TCP, in one run.

    python bench/bench.py            # full run: medians of 3 runs, a few minutes
    python bench/bench.py --quick    # under a minute, for a smoke check
    python bench/bench.py --json bench/results.json --plot docs/performance.png

Every stack is an echo server in its own process, pinned to one core, with
its own client pinned to the other:

* ``ours``: ``sync_server.py --echo --quiet`` and websocket-client, configured
  as ``sync_client.py`` runs it (``wsthreads.dial`` and the connection's reader);
* ``gunicorn``: the same app under gunicorn, 2 gthread workers, not pinned
  (the workers are meant to share both cores with the client);
* ``websockets``: the websockets package's threading server and client;
* ``go``: gorilla's echo server and a gorilla client (``interop/go``), when
  ``go`` is installed;
* ``tcp``: a plain TCP echo in Python, the floor.

Each figure is the median of the runs, with min-max; ratios are ours/peer,
computed run by run. Nothing here is a test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import queue  # noqa: E402

from wsthreads import ClientConfig, dial  # noqa: E402

SERVER_CPU, CLIENT_CPU = 1, 0
Message = Union[str, bytes]


class Client(Protocol):
    """One connected benchmark client: send a message, receive the next one."""

    def send(self, message: Message) -> None: ...
    def recv(self, size: int) -> Message: ...
    def close(self) -> None: ...


class OurClient:
    """Our client as sync_client.py drives it: dial, the connection's reader hands messages over."""

    def __init__(self, url: str) -> None:
        self.conn = dial(url, ClientConfig(timeout=30, max_message_size=None))
        self.received: queue.Queue[Message] = queue.Queue()
        self.conn.start(self.received.put)

    def send(self, message: Message) -> None:
        self.conn.send(message)

    def recv(self, size: int) -> Message:
        return self.received.get(timeout=30)

    def close(self) -> None:
        self.conn.close()
        self.conn.wait_closed()


class WebsocketsClient:
    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect as ws_connect

        self.ws = ws_connect(url, compression=None, max_size=None, open_timeout=30)

    def send(self, message: Message) -> None:
        self.ws.send(message)

    def recv(self, size: int) -> Message:
        return self.ws.recv()

    def close(self) -> None:
        self.ws.close()


class TcpClient:
    """The floor: the same bytes over plain TCP, no framing at all."""

    def __init__(self, url: str) -> None:
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


# --- Workloads: each returns {metric: value} for one run ---------------------


def rtt(new_client: Callable[[], Client], rounds: int) -> dict[str, float]:
    """Sequential round trips of a 32-byte text message: p50 and p99 in µs."""
    client = new_client()
    message = "x" * 32
    times = []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            client.send(message)
            client.recv(32)
            times.append(time.perf_counter() - start)
    finally:
        client.close()
    times.sort()
    return {"rtt_p50_us": times[len(times) // 2] * 1e6, "rtt_p99_us": times[int(len(times) * 0.99)] * 1e6}


def back_to_back(new_client: Callable[[], Client], rounds: int) -> dict[str, float]:
    """Two messages sent back to back: the second one's round trip, p50 in µs.

    This is where Nagle's algorithm shows: without TCP_NODELAY the second
    small write waits for the first one's ACK (tens of milliseconds).
    """
    client = new_client()
    times = []
    try:
        for _ in range(rounds):
            client.send("first message...")
            start = time.perf_counter()
            client.send("second message..")
            client.recv(16)
            client.recv(16)
            times.append(time.perf_counter() - start)
    finally:
        client.close()
    return {"second_rtt_p50_us": statistics.median(times) * 1e6}


def throughput(new_client: Callable[[], Client], count: int) -> dict[str, float]:
    """``count`` 64-byte text messages pipelined: a reader thread receives while we send.

    Every echo is checked complete and in order. Returns messages per second.
    """
    client = new_client()
    messages = [f"{i:064d}" for i in range(count)]
    failures: list[str] = []

    def read() -> None:
        for expected in messages:
            got = client.recv(64)
            if (got.decode() if isinstance(got, bytes) else got) != expected:
                failures.append(f"expected {expected}, got {got[:70]!r}")
                return

    reader = threading.Thread(target=read, name="bench-reader")
    start = time.perf_counter()
    reader.start()
    if isinstance(client, TcpClient):
        client.send("".join(messages))
    else:
        for message in messages:
            client.send(message)
    reader.join()
    elapsed = time.perf_counter() - start
    client.close()
    if failures:
        raise RuntimeError(failures[0])
    return {"msgs_per_s": count / elapsed}


def large(new_client: Callable[[], Client], count: int, size: int = 1 << 20) -> dict[str, float]:
    """``count`` binary messages of 1 MiB, one at a time, each checked byte for byte: MB/s."""
    client = new_client()
    data = os.urandom(size)
    try:
        start = time.perf_counter()
        for _ in range(count):
            client.send(data)
            if client.recv(size) != data:
                raise RuntimeError("1 MiB echo differs")
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    return {"mb_per_s": count * size / elapsed / 1e6}


def concurrency(new_client: Callable[[], Client], server: ServerProcess, conns: int) -> dict[str, float]:
    """``conns`` connections held open at once, 20 round trips each.

    Reports how many completed, the total time, and the server's peak RSS and
    thread count (sampled from /proc), and its threads once all have closed.
    """
    baseline_threads = server.threads()
    peak = {"rss_kib": 0, "threads": 0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.02):
            peak["rss_kib"] = max(peak["rss_kib"], server.rss_kib())
            peak["threads"] = max(peak["threads"], server.threads())

    all_open = threading.Barrier(conns, timeout=60)

    def one(_: int) -> bool:
        try:
            client = new_client()
        except Exception:
            all_open.abort()
            return False
        try:
            all_open.wait()
            for _ in range(20):
                client.send("x" * 32)
                client.recv(32)
            return True
        except Exception:
            return False
        finally:
            client.close()

    rss_before = server.rss_kib()
    sampler = threading.Thread(target=sample, name="proc-sampler")
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=conns) as pool:
        done = sum(pool.map(one, range(conns)))
    elapsed = time.perf_counter() - start
    sampling.set()
    sampler.join()
    deadline = time.monotonic() + 20
    while server.threads() > baseline_threads and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        f"c{conns}_completed": done,
        f"c{conns}_seconds": elapsed,
        f"c{conns}_peak_rss_kib_per_conn": (peak["rss_kib"] - rss_before) / conns,
        f"c{conns}_peak_threads": peak["threads"],
        f"c{conns}_threads_after_minus_baseline": server.threads() - baseline_threads,
    }


# --- Servers -------------------------------------------------------------------


class ServerProcess:
    """An echo server in its own process (and its worker processes, for gunicorn).

    Pinned to SERVER_CPU unless ``pinned`` is False (gunicorn's two workers
    are meant to use both cores). Its URL is read from the first line of its
    output that names one.
    """

    def __init__(self, command: list[str], pinned: bool = True, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        if pinned:
            pin(self.proc.pid, SERVER_CPU)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = re.search(r"((?:ws|tcp)://\S+)|Listening at: http://(\S+)", line)
            if match:
                self.url = match.group(1) or f"ws://{match.group(2)}/ws"
                break
        else:
            raise RuntimeError(f"{command[0]} did not start")
        # Keep reading its output so it never blocks on a full pipe.
        threading.Thread(
            target=lambda: [None for _ in self.proc.stdout or []], name="server-output", daemon=True
        ).start()

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

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            with open(f"/proc/{pid}/status") as status:
                total += int(next(x for x in status if x.startswith("VmRSS:")).split()[1])
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def pin(pid: int, cpu: int) -> None:
    """Pin a process to one core, where the machine has more than one."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > max(SERVER_CPU, CLIENT_CPU):
        os.sched_setaffinity(pid, {cpu})


@dataclass
class Stack:
    name: str
    server: list[str]
    client: Callable[[str], Client] | None  # None: the stack brings its own client (Go)
    pinned: bool = True
    env: dict[str, str] | None = None


def build_go(out: Path) -> dict[str, str] | None:
    """Build the Go echo server and benchmark client, or None without Go."""
    if not shutil.which("go") or not Path("/usr/share/gocode/src/github.com/gorilla/websocket").is_dir():
        return None
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode")
    binaries = {}
    for name in ("server", "bench"):
        binaries[name] = str(out / f"go-{name}")
        subprocess.run(
            ["go", "build", "-o", binaries[name], "."],
            cwd=ROOT / "interop" / "go" / name,
            env=env,
            check=True,
        )
    return binaries


@dataclass
class Plan:
    rounds: int
    back_to_back: int
    messages: int
    large: int
    conns: tuple[int, ...]
    runs: int


FULL = Plan(rounds=2000, back_to_back=200, messages=20000, large=50, conns=(100, 500, 1000), runs=3)
QUICK = Plan(rounds=300, back_to_back=50, messages=3000, large=8, conns=(100,), runs=3)
#: Only checks that the script still works (tests/test_bench.py); its figures mean nothing.
SMOKE = Plan(rounds=20, back_to_back=5, messages=200, large=2, conns=(10,), runs=1)


def run_python_stack(stack: Stack, plan: Plan) -> dict[str, list[float]]:
    """Every workload against one stack, ``plan.runs`` times; figures per metric."""
    assert stack.client is not None
    figures: dict[str, list[float]] = {}
    server = ServerProcess(stack.server, stack.pinned, stack.env)
    try:
        make = stack.client

        def new_client() -> Client:
            return make(server.url)

        for _ in range(plan.runs):
            results: dict[str, float] = {}
            results |= rtt(new_client, plan.rounds)
            results |= back_to_back(new_client, plan.back_to_back)
            results |= throughput(new_client, plan.messages)
            results |= large(new_client, plan.large)
            for conns in plan.conns:
                results |= concurrency(new_client, server, conns)
            for metric, value in results.items():
                figures.setdefault(metric, []).append(value)
    finally:
        server.stop()
    return figures


def run_go_stack(binaries: dict[str, str], plan: Plan) -> dict[str, list[float]]:
    """The Go server with the Go client: the client runs the same workloads, prints JSON."""
    figures: dict[str, list[float]] = {}
    server = ServerProcess([binaries["server"], "-addr", "127.0.0.1:0", "-echo", "-quiet"])
    try:
        for _ in range(plan.runs):
            args = [
                binaries["bench"],
                "-url",
                server.url,
                "-rounds",
                str(plan.rounds),
                "-backtoback",
                str(plan.back_to_back),
                "-messages",
                str(plan.messages),
                "-large",
                str(plan.large),
            ]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
            pin(proc.pid, CLIENT_CPU)
            out, _ = proc.communicate(timeout=600)
            for metric, value in json.loads(out).items():
                figures.setdefault(metric, []).append(value)
    finally:
        server.stop()
    return figures


# --- Report --------------------------------------------------------------------

HIGHER_IS_BETTER = ("msgs_per_s", "mb_per_s", "completed")
SHOWN = [
    ("rtt_p50_us", "RTT p50 (µs)"),
    ("rtt_p99_us", "RTT p99 (µs)"),
    ("second_rtt_p50_us", "2nd of two back-to-back, p50 (µs)"),
    ("msgs_per_s", "64 B messages pipelined (msgs/s)"),
    ("mb_per_s", "1 MiB binary echo (MB/s)"),
]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(ours: list[float], peer: list[float], metric: str) -> dict[str, float] | None:
    """ours/peer run by run (inverted for times, so above 1 always means we are better)."""
    if not ours or not peer or len(ours) != len(peer):
        return None
    better_high = any(metric.endswith(h) for h in HIGHER_IS_BETTER)
    ratios = [(o / p if better_high else p / o) for o, p in zip(ours, peer) if o and p]
    return summary(ratios) if ratios else None


def fmt(stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    median, low, high = stats["median"], stats["min"], stats["max"]
    digits = 2 if median < 10 else 0
    return f"{median:,.{digits}f} ({low:,.{digits}f} to {high:,.{digits}f})"


def report(figures: dict[str, dict[str, list[float]]], plan: Plan) -> tuple[str, dict[str, Any]]:
    stacks = list(figures)
    peers = [s for s in stacks if s != "ours"]
    metrics = SHOWN + [
        (f"c{n}_{m}", f"{n} conns: {label}")
        for n in plan.conns
        for m, label in (
            ("completed", "completed"),
            ("seconds", "total s"),
            ("peak_rss_kib_per_conn", "server KiB/conn"),
            ("peak_threads", "server peak threads"),
            ("threads_after_minus_baseline", "threads left after"),
        )
    ]
    header = ["metric", *stacks, *[f"ours/{p}" for p in peers]]
    rows = [header, ["---"] * len(header)]
    data: dict[str, Any] = {"figures": {}, "ratios": {}}
    for metric, label in metrics:
        row = [label]
        for stack in stacks:
            values = figures[stack].get(metric, [])
            stats = summary(values) if values else None
            data["figures"].setdefault(stack, {})[metric] = {"runs": values, **(stats or {})}
            row.append(fmt(stats))
        for peer in peers:
            r = ratio(figures["ours"].get(metric, []), figures[peer].get(metric, []), metric)
            data["ratios"].setdefault(peer, {})[metric] = r
            row.append(f"{fmt(r)}x" if r else "-")
        rows.append(row)
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    return table, data


def plot(data: dict[str, Any], path: str) -> None:
    """Bar chart of ours/peer ratios per metric (above 1: ours is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = list(data["ratios"])
    labels = [label for _, label in SHOWN]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(len(peers), 1)
    for i, peer in enumerate(peers):
        values = [(data["ratios"][peer].get(m) or {}).get("median", 0) for m, _ in SHOWN]
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=f"ours / {peer}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels([label.replace(" (", "\n(") for label in labels], fontsize=8)
    ax.set_ylabel("ratio (above 1: ours is better)")
    ax.set_title("sync_server + websocket-client against the peers (medians)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@contextmanager
def pinned_to_client_cpu() -> Iterator[None]:
    pin(os.getpid(), CLIENT_CPU)
    yield


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    for package in ("websocket-client", "simple-websocket", "Werkzeug", "wsproto", "websockets"):
        found[package] = version(package)
    if shutil.which("go"):
        found["go"] = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
    return found


def main() -> None:
    # At 1000 connections websockets' client threads log every failure; the table counts them.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    # websockets 17.4 warns when connect() is not used as a context manager; the client
    # objects here close it themselves.
    warnings.filterwarnings("ignore", r"connect\(\) must be used", DeprecationWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: under a minute")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts, one run: only checks the script works"
    )
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--plot", help="write a PNG of the ratios here (needs matplotlib)")
    parser.add_argument("--stacks", default="ours,gunicorn,websockets,go,tcp", help="comma-separated subset")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    wanted = args.stacks.split(",")
    python = sys.executable
    stacks = [
        Stack("ours", [python, "sync_server.py", "--port", "0", "--echo", "--quiet"], OurClient),
        Stack(
            "gunicorn",
            [
                str(Path(python).parent / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "-b",
                "127.0.0.1:0",
                # Connections do not spread evenly over the workers, and each open
                # session holds a thread: 2 x 500 threads served 0 of 1000 here.
                "--workers",
                "2",
                "--threads",
                "1000",
                "sync_server:create_app(echo=True)",
            ],
            OurClient,
            pinned=False,
            env={"WSDEMO_QUIET": "1"},  # as --quiet
        ),
        Stack("websockets", [python, "bench/websockets_echo.py"], WebsocketsClient),
        Stack("tcp", [python, "bench/tcp_echo.py"], TcpClient),
    ]
    figures: dict[str, dict[str, list[float]]] = {}
    with pinned_to_client_cpu():
        for stack in stacks:
            if stack.name in wanted:
                print(f"measuring {stack.name} ...", file=sys.stderr, flush=True)
                figures[stack.name] = run_python_stack(stack, plan)
        if "go" in wanted:
            out = Path(os.environ.get("TMPDIR", "/tmp")) / "wsdemo-bench"
            out.mkdir(exist_ok=True)
            binaries = build_go(out)
            if binaries is None:
                print("go: skipped (install golang-go golang-github-gorilla-websocket-dev)", file=sys.stderr)
            else:
                print("measuring go ...", file=sys.stderr, flush=True)
                figures["go"] = run_go_stack(binaries, plan)
    order = [s for s in ("ours", "gunicorn", "websockets", "go", "tcp") if s in figures]
    table, data = report({s: figures[s] for s in order}, plan)
    data["versions"] = versions()
    data["plan"] = plan.__dict__
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    if args.plot:
        plot(data, args.plot)


if __name__ == "__main__":
    main()
