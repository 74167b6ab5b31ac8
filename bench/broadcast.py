"""Broadcast rate: one server, N connections, M back-to-back broadcasts; every message checked.

    python bench/broadcast.py            # N = 100, 500, 1000; M = 1000; medians of 3
    python bench/broadcast.py --quick    # N = 100, 500; M = 200; one run

The server (ours, in this process) broadcasts M messages as fast as it can
call ``app.broadcast``; the clients run in another process, pinned to the
other core, read all N sockets with one selector and check that each gets
every message, in order. Each message carries the ``time.monotonic()`` of
its broadcast (one clock for both processes on Linux), so the clients see
how long every delivery took. The reference, in the same run: the loop an
application writes without ``broadcast``, ``for conn in app.connections():
conn.send(message)`` (it has no stuck client here; with one, every message
would wait for its write deadline).

Printed per N and per way: messages delivered per second (N x M over the
time to the last delivery), the p50 and the slowest delivery.
``bench/compression.py`` runs the same measure with compression (:data:`COMPRESSION`).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import wsthreads  # noqa: E402
from wsthreads import Connection  # noqa: E402
from wsthreads.deflate import Deflate  # noqa: E402

#: The server's compression in a run: off; deflate with context takeover (each connection
#: compresses each broadcast through its own history); deflate without (compressed once for all).
COMPRESSION = {"off": None, "deflate": Deflate(), "no-takeover": Deflate(context_takeover=False)}
#: What the clients offer when the server compresses: a browser's offer.
OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def broadcast(app: wsthreads.WebSocketApp, message: str) -> None:
    """Ours: queue for every connection's writer."""
    app.broadcast(message)


def send_loop(app: wsthreads.WebSocketApp, message: str) -> None:
    """The reference: one send() after the other, each waiting for its socket."""
    conn: Connection
    for conn in app.connections():
        conn.send(message)


WAYS = {"broadcast": broadcast, "send loop": send_loop}


def run_clients(port: int, count: int, messages: int, compression: str = "off") -> None:
    """The client process: connect ``count`` times, read everything, print one JSON line.

    With ``compression``, each offers permessage-deflate and inflates what comes.
    """
    from helpers import upgrade
    from test_broadcast import split_frames

    headers = "" if compression == "off" else OFFER
    socks = [upgrade(port, headers=headers)[2] for _ in range(count)]
    inflaters = {sock: zlib.decompressobj(-15) for sock in socks}
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    received: dict[socket.socket, int] = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock], received[sock] = b"", 0
    print("ready", flush=True)
    latencies: list[float] = []
    done = 0
    while done < count:
        events = selector.select(30)
        if not events:
            raise SystemExit("no message for 30 s")
        for key, _ in events:
            sock = key.fileobj  # type: ignore[assignment]
            data = sock.recv(1 << 20)
            if not data:
                raise SystemExit("the server closed a connection")
            now = time.monotonic()
            frames, buffers[sock] = split_frames(buffers[sock] + data)
            for _, payload in frames:
                if compression == "deflate":  # one history per connection
                    payload = inflaters[sock].decompress(payload + b"\x00\x00\xff\xff")
                elif compression == "no-takeover":  # each message on its own
                    payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
                number, sent = payload.split()
                if int(number) != received[sock]:
                    raise SystemExit(f"message {int(number)} arrived as message {received[sock]}")
                received[sock] += 1
                latencies.append(now - float(sent))
            if frames and received[sock] == messages:
                done += 1
    latencies.sort()
    print(json.dumps({"last": time.monotonic(), "p50": latencies[len(latencies) // 2], "max": latencies[-1]}))


def measure(way: str, count: int, messages: int, compression: str = "off") -> dict[str, float]:
    """One run: N connections, M messages, the server's ``compression`` (:data:`COMPRESSION`); the figures."""
    app = wsthreads.create_app(ping_interval=None, compression=COMPRESSION[compression])
    server = wsthreads.start_server(app, "127.0.0.1", 0)
    clients = subprocess.Popen(
        [sys.executable, __file__, "--clients", str(server.port), str(count), str(messages), compression],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert clients.stdout is not None
        if clients.stdout.readline().strip() != "ready":
            raise SystemExit("the clients did not start")
        pin(clients.pid, 1)
        while len(app.connections()) < count:
            time.sleep(0.01)
        send = WAYS[way]
        started = time.monotonic()
        for number in range(messages):
            send(app, f"{number} {time.monotonic():.6f}")
        calls = time.monotonic() - started
        line = clients.stdout.readline()
        if clients.wait(60) != 0 or not line:
            raise SystemExit(f"the clients failed ({way}, {count} connections)")
        result = json.loads(line)
        elapsed = result["last"] - started
        return {
            "msgs_per_s": count * messages / elapsed,
            "calls_s": calls,
            "p50_ms": result["p50"] * 1000,
            "max_ms": result["max"] * 1000,
        }
    finally:
        clients.kill()
        server.shutdown()


def pin(pid: int, cpu: int) -> None:
    """Pin a process to one core, where there are two or more."""
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(pid, {cpu})


def main() -> None:
    """Measure, print the table, optionally write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 100, 500; M = 200; one run")
    parser.add_argument("--smoke", action="store_true", help="N = 10, M = 20: checks the script only")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--clients", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        port, count, messages, compression = args.clients
        run_clients(int(port), int(count), int(messages), compression)
        return
    import logging

    logging.basicConfig(level=logging.ERROR)  # the end of each run drops N connections: no line each
    sizes, messages, runs = (
        ([10], 20, 1) if args.smoke else ([100, 500], 200, 1) if args.quick else ([100, 500, 1000], 1000, 3)
    )
    pin(os.getpid(), 0)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    print(f"{messages} back-to-back broadcasts, medians of {runs}")
    print(
        "| connections | way | delivered msg/s | calls took (s) | p50 delivery (ms) | slowest delivery (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for count in sizes:
        for way in WAYS:
            samples = [measure(way, count, messages) for _ in range(runs)]
            median = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
            figures.setdefault(str(count), {})[way] = median
            print(
                f"| {count} | {way} | {median['msgs_per_s']:,.0f} | {median['calls_s']:.2f} |"
                f" {median['p50_ms']:.1f} | {median['max_ms']:.1f} |",
                flush=True,
            )
        ratio = (
            figures[str(count)]["broadcast"]["msgs_per_s"] / figures[str(count)]["send loop"]["msgs_per_s"]
        )
        print(f"| {count} | broadcast / send loop | {ratio:.2f}x | | | |", flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"messages": messages, "runs": runs, "figures": figures}, indent=2)
        )


if __name__ == "__main__":
    main()
