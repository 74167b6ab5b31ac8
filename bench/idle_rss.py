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

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from memory import held_connections

from bench import Server, serving, status_kib

SERVERS = {
    "ours": Server("ours", [sys.executable, "sync_server.py", "--port", "0", "--echo", "--quiet"]),
    "werkzeug": Server("werkzeug", [sys.executable, "bench/werkzeug_floor.py"]),
}


def held_by_server(server: Server, count: int) -> tuple[int, int]:
    """The server's RssAnon idle, and holding ``count`` connections."""
    logs = tempfile.TemporaryDirectory(prefix="wsthreads-idle-rss-")
    with logs, serving(server, Path(logs.name)) as process:
        time.sleep(0.5)
        idle = process.memory_kib("RssAnon")
        with held_connections(urlsplit(process.url).port or 0, count):
            time.sleep(1)
            held = process.memory_kib("RssAnon")
    return idle, held


def held_by_bare_threads(count: int) -> tuple[int, int]:
    """Idle and held figures of this process with ``count`` threads blocked in recv."""
    pairs = [socket.socketpair() for _ in range(count)]
    idle = status_kib("self", "RssAnon")
    threads = [threading.Thread(target=a.recv, args=(1,), name=f"bare-{i}") for i, (a, _) in enumerate(pairs)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    held = status_kib("self", "RssAnon")
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
    idle, held = held_by_bare_threads(count) if name == "bare" else held_by_server(SERVERS[name], count)
    print(f"{name}: {(held - idle) / count:.1f} KiB per idle connection ({count}, RssAnon held minus idle)")


if __name__ == "__main__":
    main()
