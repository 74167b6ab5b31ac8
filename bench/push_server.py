"""The push server of the scale run (bench/scale.py): serve, wait for N clients, broadcast, serve on.

    python bench/push_server.py --stack ours --wait-for 1000 --messages 20 --interval 0.5
    python bench/push_server.py --stack websockets --wait-for 1000

Prints ``listening on ws://...``, then once ``--wait-for`` clients are
connected broadcasts ``--messages`` messages ``SEQ UNIX_NANOS`` (the clock at
the broadcast call), one every ``--interval`` seconds, and serves until
SIGINT or SIGTERM. Two stacks, each with only its public API:

* ``ours``: ``wsthreads.create_app()`` (sessions that only listen) served by
  ``start_server`` (Werkzeug), ``app.broadcast`` from one thread;
* ``websockets``: ``websockets.sync.server.serve``, a handler that reads
  until the end, and one thread looping over the connections with ``send``.

``--switch-interval`` sets ``sys.setswitchinterval`` first, as a program
that owns its process may.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsthreads

#: More sessions than the scale run opens.
MAX_CONNECTIONS = 20000


def broadcaster(
    count: Callable[[], int], send: Callable[[str], object], args: argparse.Namespace, stop: threading.Event
) -> threading.Thread:
    """The thread that waits for the clients, then broadcasts every ``--interval`` seconds."""

    def run() -> None:
        while count() < args.wait_for:
            if stop.wait(0.05):
                return
        for seq in range(1, args.messages + 1):
            if stop.wait(args.interval):
                return
            send(f"{seq} {time.time_ns()}")

    return threading.Thread(target=run, name="broadcaster", daemon=True)


def serve_ours(args: argparse.Namespace) -> None:
    app = wsthreads.create_app(ping_interval=None, max_connections=MAX_CONNECTIONS)
    server = wsthreads.start_server(app, "127.0.0.1", args.port)
    print(f"listening on {server.url}", flush=True)
    stop = threading.Event()
    broadcaster(lambda: len(app.connections()), app.broadcast, args, stop).start()
    server.serve_until_signal()
    stop.set()


def serve_websockets(args: argparse.Namespace) -> None:
    from websockets.sync.server import ServerConnection, serve

    connections: set[ServerConnection] = set()
    lock = threading.Lock()

    def handler(ws: ServerConnection) -> None:
        with lock:
            connections.add(ws)
        try:
            for _ in ws:
                pass
        finally:
            with lock:
                connections.discard(ws)

    def send_to_all(message: str) -> None:
        with lock:
            targets = list(connections)
        for ws in targets:
            try:
                ws.send(message)
            except Exception:
                pass  # that one is gone

    with serve(handler, "127.0.0.1", args.port, compression=None) as server:
        print(f"listening on ws://127.0.0.1:{server.socket.getsockname()[1]}/ws", flush=True)
        stop = threading.Event()
        broadcaster(lambda: len(connections), send_to_all, args, stop).start()
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            stop.set()
            server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=("ours", "websockets"), default="ours")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--wait-for", type=int, default=1, help="clients to wait for before broadcasting")
    parser.add_argument("--messages", type=int, default=20, help="messages to broadcast")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two broadcasts")
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval, in seconds")
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    (serve_ours if args.stack == "ours" else serve_websockets)(args)


if __name__ == "__main__":
    main()
