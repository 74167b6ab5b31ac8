"""Resident memory per idle connection: ours, Werkzeug's floor, and a bare thread.

    python bench/idle_rss.py ours        # sync_server.py --echo --quiet
    python bench/idle_rss.py werkzeug    # bench/werkzeug_floor.py: Werkzeug, no WebSocket code
    python bench/idle_rss.py bare        # bare Python threads blocked in recv on socketpairs
    python bench/idle_rss.py ours 200    # N connections (default 1000)

A server is started, N connections are opened on it with one round trip each
(``bench/memory.py``'s holder) and held; printed is its anonymous resident
memory (``RssAnon``: thread stacks, Python's objects, malloc's heap and
arenas), held minus idle, over N. The connections are idle, so the figure is
below the benchmark's peak-minus-idle one, which counts round trips in flight.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from memory import HOLDER, ROOT

SERVERS = {
    "ours": [sys.executable, "sync_server.py", "--port", "0", "--echo", "--quiet"],
    "werkzeug": [sys.executable, "bench/werkzeug_floor.py"],
}


def resident_kib(pid: int | str) -> int:
    """The process's anonymous resident memory in KiB."""
    found = re.search(r"^RssAnon:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert found, "no RssAnon in /proc/PID/status"
    return int(found.group(1))


def held_by_server(name: str, count: int) -> tuple[int, int]:
    """Idle and held figures of a server program holding ``count`` connections."""
    log = Path(f"/tmp/idle_rss_{name}.log")
    with log.open("w") as out:
        server = subprocess.Popen(SERVERS[name], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"ws://[\d.]+:(\d+)", log.read_text())):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"{name} did not start: {log.read_text()[-300:]}")
            time.sleep(0.05)
        time.sleep(0.5)
        idle = resident_kib(server.pid)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, found.group(1), str(count), str(ROOT / "tests")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline().strip() != "ready":
            raise SystemExit("the connections did not open")
        time.sleep(1)
        held = resident_kib(server.pid)
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
        return idle, held
    finally:
        server.terminate()
        server.wait(10)


def held_by_bare_threads(count: int) -> tuple[int, int]:
    """Idle and held figures of this process with ``count`` threads blocked in recv."""
    pairs = [socket.socketpair() for _ in range(count)]
    idle = resident_kib("self")
    threads = [threading.Thread(target=a.recv, args=(1,), name=f"bare-{i}") for i, (a, _) in enumerate(pairs)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    held = resident_kib("self")
    for _, b in pairs:
        b.sendall(b"x")
    for thread in threads:
        thread.join()
    return idle, held


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "ours"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    if name not in (*SERVERS, "bare"):
        raise SystemExit(f"usage: idle_rss.py [{'|'.join([*SERVERS, 'bare'])}] [N]")
    idle, held = held_by_bare_threads(count) if name == "bare" else held_by_server(name, count)
    print(f"{name}: {(held - idle) / count:.1f} KiB per idle connection ({count}, RssAnon held minus idle)")


if __name__ == "__main__":
    main()
