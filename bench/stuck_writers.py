"""What peers that stop reading cost while they wait for their write deadline.

    python bench/stuck_writers.py            # N = 100, 1000
    python bench/stuck_writers.py 2000       # other N

A server (``create_app()``, in this process) holds N connections whose peers
never read (raw sockets with a small receive buffer, in this process too). A
broadcast of 8 MiB fills every socket (more than the 4 MiB a loopback socket
buffers), so each connection's writer thread waits for room; such a wait
looks for a close every ``WRITE_LOOK`` (0.1 s) until ``write_timeout`` drops
the peer (30 s here, to outlast the window). Printed, for a window of 3 s in
that wait: the process's CPU time over the wall time, and its threads; the
same window with the N connections idle is the baseline.
"""

from __future__ import annotations

import resource
import socket
import sys
import threading
import time

import wsthreads
from wsthreads.connection import WRITE_LOOK

#: Seconds each measurement lasts.
WINDOW = 3.0
#: The broadcast that fills every socket: more than a loopback socket buffers (tcp_wmem: 4 MiB).
MESSAGE = "x" * (8 << 20)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_share(window: float) -> float:
    """The process's CPU time over ``window`` seconds of wall time."""
    used, started = cpu_seconds(), time.monotonic()
    time.sleep(window)
    return (cpu_seconds() - used) / (time.monotonic() - started)


def open_peer(port: int) -> socket.socket:
    """A raw client that does the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)  # the head only: what follows is left unread
    return sock


def measure(n: int) -> None:
    app = wsthreads.create_app(
        ping_interval=None, write_timeout=30.0, max_connections=n + 10, outbound_limit=16 << 20
    )
    server = wsthreads.start_server(app, "127.0.0.1", 0)
    peers = [open_peer(server.port) for _ in range(n)]
    try:
        while len(app.connections()) < n:
            time.sleep(0.05)
        idle = cpu_share(WINDOW)
        app.broadcast(MESSAGE)
        time.sleep(1.0)  # the writers take over what the sockets did not
        stuck = cpu_share(WINDOW)
        threads = threading.active_count()
        print(
            f"| {n} | {idle:.1%} | {stuck:.1%} | {threads} | {n / WRITE_LOOK:,.0f} |",
            flush=True,
        )
    finally:
        server.shutdown()
        for peer in peers:
            peer.close()


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [100, 1000]
    print(f"peers that never read, an 8 MiB broadcast, {WINDOW:g} s windows, WRITE_LOOK {WRITE_LOOK} s\n")
    print("| N | CPU idle | CPU while the writers wait | threads | looks a second (N / WRITE_LOOK) |")
    print("|---|---|---|---|---|")
    for n in sizes:
        measure(n)


if __name__ == "__main__":
    main()
