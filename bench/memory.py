"""Where a connection's memory goes: tracemalloc on our echo server holding N idle connections.

    python bench/memory.py          # N = 1000
    python bench/memory.py 200

The server (``sync_server.create_app(echo=True)`` under ``wsthreads.start_server``)
runs in this process with tracemalloc on; another process opens N raw connections,
makes one round trip on each and holds them. Printed: the Python objects allocated
per connection, by the line that allocated them, largest first. RSS is not shown:
tracemalloc's own records inflate it (``bench/bench.py`` measures RSS without it).
"""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOLDER = """
import socket, sys, zlib
sys.path.insert(0, sys.argv[3])
from helpers import upgrade
offer = sys.argv[4] == "compressed"
headers = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\\r\\n" if offer else ""
socks = [upgrade(int(sys.argv[1]), headers=headers)[2] for _ in range(int(sys.argv[2]))]
payload = b"x" * 32
if offer:
    deflate = zlib.compressobj(6, zlib.DEFLATED, -12)
    payload = (deflate.compress(payload) + deflate.flush(zlib.Z_SYNC_FLUSH))[:-4]
frame = bytes([0xC1 if offer else 0x81, 0x80 | len(payload)]) + bytes(4) + payload  # masked, zero key
for sock in socks:
    sock.sendall(frame)
for sock in socks:
    head = sock.recv(2, socket.MSG_WAITALL)
    sock.recv(head[1] & 0x7F, socket.MSG_WAITALL)
print("ready", flush=True)
sys.stdin.readline()
"""


@contextmanager
def held_connections(port: int, count: int, compressed: bool = False) -> Iterator[None]:
    """``count`` connections to ``port``, one round trip each, held by another process until the end.

    ``compressed``: each offers permessage-deflate as a browser does, and its message goes compressed.
    """
    kind = "compressed" if compressed else "plain"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(port), str(count), str(ROOT / "tests"), kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline().strip() != "ready":
            raise SystemExit("the connections did not open")
        yield
        holder.stdin.write("\n")
        holder.stdin.flush()
    finally:
        try:
            holder.wait(30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def short_path(filename: str) -> str:
    """A traceback's file name without the venv's or this checkout's prefix."""
    for marker in ("site-packages/", f"python{sys.version_info[0]}.{sys.version_info[1]}/"):
        filename = filename.split(marker)[-1]
    return filename.replace(str(ROOT) + "/", "")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tracemalloc.start()
    import logging

    import sync_server
    import wsthreads

    logging.basicConfig(level=logging.ERROR)  # the holder's exit drops every connection
    server = wsthreads.start_server(sync_server.create_app(echo=True), "127.0.0.1", 0)
    try:
        time.sleep(0.5)
        before = tracemalloc.take_snapshot()
        with held_connections(server.port, count):
            time.sleep(0.5)
            after = tracemalloc.take_snapshot()
    finally:
        server.shutdown()
    diff = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in diff)
    print(f"{count} connections: {total / count / 1024:.1f} KiB of Python objects per connection\n")
    print("| bytes per connection | objects per connection | allocated at |")
    print("|---|---|---|")
    for stat in diff[:15]:
        frame = stat.traceback[0]
        where = short_path(frame.filename)
        print(f"| {stat.size_diff / count:,.0f} | {stat.count_diff / count:.1f} | {where}:{frame.lineno} |")


if __name__ == "__main__":
    main()
