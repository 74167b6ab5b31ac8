"""The scale run: thousands of connections in one process, ours beside gorilla, websockets and the floor.

    python bench/scale.py                                  # N = 1000, 3000, 6000, 9000
    python bench/scale.py --sizes 1000 3000 --servers ours,gorilla
    python bench/scale.py --smoke                          # N = 20: seconds, for the tests
    python bench/scale.py --json bench/scale.json

Two workloads; for each N every server is started afresh, pinned to core 1, and the
Go peer (``interop/go``) runs pinned to core 0:

* **push**: a raw subscriber that never reads connects first, then N gorilla subscribers
  that only read; the server broadcasts 20 small messages, one every 0.5 s, each
  ``SEQ UNIX_NANOS`` (its clock at the broadcast call). Every delivery is checked once
  and in order; its latency is the read time minus that clock. Then SIGINT: the
  subscribers report how each connection was closed (1001 expected). Servers:
  ``ours`` (``bench/push_server.py``: ``create_app()``, Werkzeug, ``app.broadcast``),
  ``ours-gunicorn`` (the same app under our gunicorn worker, one worker),
  ``websockets`` (``websockets.sync``, a ``send`` loop) and ``gorilla`` (the chat
  example's hub: ``interop/go/push -serve``).
* **busy**: N connections opened at once, then 20 round trips of 32 bytes on each, all
  together (``interop/go/bench -only conns``). Servers: ``ours``
  (``sync_server.py --echo --quiet``), ``ours-gunicorn``, ``websockets``
  (``bench/websockets_echo.py``), ``gorilla`` (``interop/go/server -echo``) and ``tcp``
  (``bench/tcp_echo.py``: a thread per connection, at our switch interval), the floor.

Each run's figures: completion, delivery p50/p99 (push), seconds (busy), KiB per
connection (peak minus idle RSS, over the connections), the peak of threads and of
descriptors (sampled every 0.1 s), and the seconds from SIGINT to exit; for busy, also the
seconds until every connection was open (the handshakes), before the round trips began. Ratios are
ours/gorilla. One run per cell, not a median: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import CLIENT_CPU, ROOT, Server, ServerProcess, build_go, pin

sys.path.insert(0, str(ROOT / "tests"))

from wsthreads.settings import SWITCH_INTERVAL

SIZES = (1000, 3000, 6000, 9000)
#: The push workload's broadcasts and the time between two: (20, 0.5 s); --smoke: (3, 0.1 s).
MESSAGES = 20
INTERVAL = 0.5
SMOKE_PUSH = (3, 0.1)
#: Seconds the Go peer may take for its part of one run.
PEER_TIMEOUT = 180


@dataclass
class Sample:
    """Peaks of threads and descriptors of a server's processes, sampled in a thread."""

    process: ServerProcess
    threads: int = 0
    fds: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while True:
            try:
                self.threads = max(self.threads, self.process.threads())
                self.fds = max(
                    self.fds, sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.process.pids())
                )
            except FileNotFoundError:
                return  # it is exiting
            if self.stop.wait(0.1):
                return


@contextmanager
def sampled(process: ServerProcess) -> Iterator[Sample]:
    sample = Sample(process)
    thread = threading.Thread(target=sample.run, name="sampler", daemon=True)
    thread.start()
    try:
        yield sample
    finally:
        sample.stop.set()
        thread.join()


def seconds_to_exit(process: ServerProcess, timeout: float = 30) -> float:
    """Send SIGINT, wait for the process to exit (killed after ``timeout``); the seconds it took."""
    started = time.monotonic()
    process.proc.send_signal(signal.SIGINT)
    try:
        process.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        process.proc.kill()
        process.proc.wait()
        return float("inf")
    return time.monotonic() - started


def peer(binary: str, *args: str) -> subprocess.Popen[str]:
    """A Go peer process, pinned to the client core, its output a pipe."""
    proc = subprocess.Popen([binary, *args], stdout=subprocess.PIPE, text=True)
    pin(proc.pid, CLIENT_CPU)
    return proc


def stuck_subscriber(url: str) -> socket.socket:
    """A subscriber that completes the handshake and never reads again."""
    from helpers import open_client

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return open_client(port, receive_buffer=4096)


#: gunicorn threads for the scale run: sessions are parked in the netpoller and hold none,
#: so threads serve only the burst of handshakes (more only add switching).
GUNICORN_THREADS = 1000


def one_worker(n: int) -> list[str]:
    """gunicorn options for one worker: threads for the handshakes; sessions hold none."""
    room = str(min(n + 100, GUNICORN_THREADS))
    return ["-w", "1", "--threads", room, "--worker-connections", room]


def push_servers(go: dict[str, str], n: int, messages: int, interval: float) -> list[Server]:
    python = sys.executable
    push = [
        python, "bench/push_server.py", "--wait-for", str(n + 1),
        "--messages", str(messages), "--interval", str(interval),
    ]  # fmt: skip
    gunicorn = [str(Path(python).parent / "gunicorn"), "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0"]
    app = f"push_server:gunicorn_app({n + 1}, {messages}, {interval})"
    return [
        Server("ours", [*push, "--stack", "ours"]),
        Server(
            "ours-gunicorn",
            [*gunicorn, *one_worker(n), "--pythonpath", "bench", app],
            env={"WSTHREADS_QUIET": "1"},
            processes=2,
        ),
        Server("websockets", [*push, "--stack", "websockets"]),
        Server(
            "gorilla",
            [
                go["push"],
                "-serve",
                "127.0.0.1:0",
                "-wait-for",
                str(n + 1),
                "-messages",
                str(messages),
                "-interval",
                f"{interval}s",
            ],
        ),
    ]


#: sync_server.py's option for more sessions than the run opens.
MAX_CONNECTIONS = ["--max-connections", "20000"]
#: The same for sessions that hold threads (without --netpoller).
UNCAPPED = [*MAX_CONNECTIONS, "--max-session-threads", "20000"]


def busy_servers(go: dict[str, str], n: int) -> list[Server]:
    python = sys.executable
    gunicorn = [str(Path(python).parent / "gunicorn"), "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0"]
    app = "sync_server:create_app(echo=True, netpoller=True, max_connections=20000, ping_interval=None)"
    return [
        Server(
            "ours",
            [python, "sync_server.py", "--echo", "--netpoller", "--quiet", "--port", "0", *MAX_CONNECTIONS],
        ),
        # A reader thread per session, as the article's goroutine: the cliff the cap keeps away.
        Server("ours-threads", [python, "sync_server.py", "--echo", "--quiet", "--port", "0", *UNCAPPED]),
        Server(
            "ours-gunicorn",
            [*gunicorn, *one_worker(n), app],
            env={"WSTHREADS_QUIET": "1"},
            processes=2,
        ),
        Server("websockets", [python, "bench/websockets_echo.py"]),
        Server("gorilla", [go["server"], "-addr", "127.0.0.1:0", "-echo", "-quiet"]),
        Server("tcp", [python, "bench/tcp_echo.py", "0", str(SWITCH_INTERVAL)]),
    ]


def kib_per_connection(process: ServerProcess, idle: int, n: int) -> float:
    return (process.memory_kib("VmHWM") - idle) / n


def run_push(go: dict[str, str], server: Server, n: int, logs: Path, messages: int) -> dict[str, float]:
    process = ServerProcess(server, logs / f"push-{server.name}-{n}.log")
    try:
        idle = process.memory_kib("VmRSS")
        stuck = stuck_subscriber(process.url)
        with sampled(process) as sample:
            subscribers = peer(
                go["push"], "-url", process.url, "-conns", str(n), "-messages", str(messages),
                "-timeout", f"{PEER_TIMEOUT}s", "-hold",
            )  # fmt: skip
            assert subscribers.stdout is not None
            subscribers.stdout.readline()  # "connected N"
            figures: dict[str, float] = json.loads(subscribers.stdout.readline() or "{}")
            figures["kib_per_conn"] = kib_per_connection(process, idle, n + 1)
            figures["exit_s"] = seconds_to_exit(process)
        closes = json.loads(subscribers.stdout.readline() or "{}")
        subscribers.kill()  # it has said all it has to say
        stuck.close()
        figures |= {"threads": sample.threads, "fds": sample.fds}
        figures["closed_1001"] = closes.get("1001", 0)
        return figures
    finally:
        process.stop()


def run_busy(go: dict[str, str], server: Server, n: int, logs: Path) -> dict[str, float]:
    process = ServerProcess(server, logs / f"busy-{server.name}-{n}.log")
    try:
        idle = process.memory_kib("VmRSS")
        url = process.url
        with sampled(process) as sample:
            load = peer(go["bench"], "-url", url, "-only", "conns", "-conns", str(n))
            try:
                out, _ = load.communicate(timeout=PEER_TIMEOUT)
            except subprocess.TimeoutExpired:
                load.kill()
                out, _ = load.communicate()
            raw = json.loads(out or "{}")
            figures = {
                "completed": raw.get(f"c{n}_completed", 0),
                "seconds": raw.get(f"c{n}_seconds", float("inf")),
                "dial_seconds": raw.get(f"c{n}_dial_seconds", float("inf")),
                "kib_per_conn": kib_per_connection(process, idle, n),
            }
        figures |= {"threads": sample.threads, "fds": sample.fds}
        return figures
    finally:
        process.stop()


def table(title: str, results: dict[str, dict[str, dict[str, float]]], columns: list[tuple[str, str]]) -> str:
    """A markdown table: a row per (N, server), a column per figure."""
    lines = [f"\n{title}\n", "| N | server | " + " | ".join(label for label, _ in columns) + " |"]
    lines.append("|---|---|" + "---|" * len(columns))
    for n, servers in results.items():
        for name, figures in servers.items():
            cells = [format_figure(figures.get(key)) for _, key in columns]
            lines.append(f"| {n} | {name} | " + " | ".join(cells) + " |")
        ours, gorilla = servers.get("ours"), servers.get("gorilla")
        if ours and gorilla:
            cells = [
                format_figure(ratio(ours.get(key), gorilla.get(key)) if key in RATIOS else None)
                for _, key in columns
            ]
            lines.append(f"| {n} | ours/gorilla | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def format_figure(value: float | None) -> str:
    if value is None:
        return "—"
    if value == float("inf"):
        return "did not end"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


#: The figures compared in the ours/gorilla row.
RATIOS = {"p50_ms", "p99_ms", "kib_per_conn", "threads", "fds", "seconds", "dial_seconds"}
PUSH_COLUMNS = [
    ("connected", "connected"),
    ("complete", "complete"),
    ("wrong", "wrong"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("KiB/conn", "kib_per_conn"),
    ("threads", "threads"),
    ("fds", "fds"),
    ("SIGINT→exit s", "exit_s"),
    ("closed 1001", "closed_1001"),
]
BUSY_COLUMNS = [
    ("completed", "completed"),
    ("seconds", "seconds"),
    ("of which dialing s", "dial_seconds"),
    ("KiB/conn", "kib_per_conn"),
    ("threads", "threads"),
    ("fds", "fds"),
]


SERVERS = ("ours", "ours-gunicorn", "ours-threads", "websockets", "gorilla", "tcp")
WORKLOADS = ("push", "busy")


def names_of(known: tuple[str, ...]) -> Callable[[str], set[str]]:
    """argparse type: comma-separated names, each one of ``known``."""

    def parse(text: str) -> set[str]:
        names = set(text.split(","))
        if not names <= set(known):
            unknown = ", ".join(sorted(names - set(known)))
            raise argparse.ArgumentTypeError(f"unknown: {unknown} (known: {', '.join(known)})")
        return names

    return parse


def main() -> None:
    # A shell starts a background job with SIGINT ignored, and the servers would inherit that:
    # gorilla's would not end on SIGINT at all. They get the default, as from a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--servers", type=names_of(SERVERS), default=",".join(SERVERS))
    parser.add_argument("--workloads", type=names_of(WORKLOADS), default=",".join(WORKLOADS))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="N = 20, 3 broadcasts: a check that everything runs (its figures mean nothing)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    sizes = [20] if args.smoke else args.sizes
    messages, interval = SMOKE_PUSH if args.smoke else (MESSAGES, INTERVAL)
    wanted = args.servers
    results: dict[str, Any] = {"push": {}, "busy": {}}
    with tempfile.TemporaryDirectory() as scratch:
        go = build_go(Path(scratch), ("server", "bench", "push"))
        logs = Path(scratch)
        for n in sizes:
            for workload, servers, run in (
                (
                    "push",
                    push_servers(go, n, messages, interval),
                    functools.partial(run_push, messages=messages),
                ),
                ("busy", busy_servers(go, n), run_busy),
            ):
                if workload not in args.workloads:  # a set of names
                    continue
                for server in servers:
                    if server.name in wanted:
                        print(f"{workload}, {n} connections: {server.name} ...", file=sys.stderr, flush=True)
                        results[workload].setdefault(n, {})[server.name] = run(go, server, n, logs)
    print(
        table(
            f"Push: N idle subscribers (and one stuck), {messages} broadcasts, one every {interval:g} s",
            results["push"],
            PUSH_COLUMNS,
        )
    )
    print(table("Busy: N connections x 20 round trips, all at once", results["busy"], BUSY_COLUMNS))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
