"""The push server of the scale run (bench/scale.py): serve, wait for N clients, broadcast, serve on.

    python bench/push_server.py --stack ours --wait-for 1000 --messages 20 --interval 0.5
    python bench/push_server.py --stack websockets --wait-for 1000

Prints ``listening on ws://...``, then once ``--wait-for`` clients are
connected broadcasts ``--messages`` messages ``SEQ UNIX_NANOS`` (the clock at
the broadcast call; ``--size``: padded to that many bytes), one every
``--interval`` seconds, and serves until SIGINT or SIGTERM. ``--filler``
sends the first client that connected a message of that many bytes before
the broadcasts: a client that never reads then has its pipe full, and its
writer waits in a write from the start. Two stacks, each with only its public API:

* ``ours``: ``wsthreads.create_app()`` (sessions that only listen) served by
  ``start_server`` (Werkzeug), ``app.broadcast`` from one thread;
* ``websockets``: ``websockets.sync.server.serve``, a handler that reads
  until the end, and one thread looping over the connections with ``send``.

This program owns its process: for ``ours`` it sets the switch interval
``sync_server.py`` sets (``--switch-interval`` overrides it, for both stacks).
Under gunicorn (our worker sets the interval itself)::

    gunicorn -c gunicorn.conf.py -w 1 --threads 1100 --pythonpath bench \
        'push_server:gunicorn_app(1000, 20, 0.5)'
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsthreads
from common import OneLineParser, count_arg, fail, positive_seconds_arg, seconds_arg
from wsthreads.connection import OUTBOUND_LIMIT, WRITE_TIMEOUT
from wsthreads.settings import SWITCH_INTERVAL

#: More sessions than the scale run opens.
MAX_CONNECTIONS = 20000


def broadcaster(
    count: Callable[[], int],
    send: Callable[[str], object],
    args: argparse.Namespace,
    stop: threading.Event,
    fill_first: Callable[[], object] = lambda: None,
) -> threading.Thread:
    """The thread that waits for the clients, then broadcasts every ``--interval`` seconds."""

    def run() -> None:
        while count() < args.wait_for:
            if stop.wait(0.05):
                return
        fill_first()
        for seq in range(1, args.messages + 1):
            if stop.wait(args.interval):
                return
            message = f"{seq} {time.time_ns()} "
            send(message.ljust(args.size, "x"))

    return threading.Thread(target=run, name="broadcaster", daemon=True)


def push_app(args: argparse.Namespace, stop: threading.Event) -> wsthreads.WebSocketApp:
    """Ours: sessions that only listen, and the broadcaster thread."""
    app = wsthreads.create_app(
        ping_interval=None,
        max_connections=MAX_CONNECTIONS,
        write_timeout=args.write_timeout,
        outbound_limit=args.outbound_limit,
    )

    def fill_first() -> None:
        if args.filler:
            app.broadcast(bytes(args.filler), where=lambda conn: conn.name == "conn-1-reader")

    broadcaster(lambda: len(app.connections()), app.broadcast, args, stop, fill_first).start()
    return app


def gunicorn_app(wait_for: int, messages: int, interval: float) -> wsthreads.WebSocketApp:
    """Ours under gunicorn: the app, its broadcaster started in the worker that loads it."""
    args = argparse.Namespace(
        wait_for=wait_for,
        messages=messages,
        interval=interval,
        size=0,
        write_timeout=WRITE_TIMEOUT,
        outbound_limit=OUTBOUND_LIMIT,
        filler=0,
    )
    return push_app(args, threading.Event())


def serve_ours(args: argparse.Namespace) -> None:
    stop = threading.Event()
    server = wsthreads.start_server(push_app(args, stop), "127.0.0.1", args.port)
    print(f"listening on {server.url}", flush=True)
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
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=("ours", "websockets"), default="ours")
    parser.add_argument("--port", type=count_arg, default=0)
    parser.add_argument("--wait-for", type=count_arg, default=1, help="clients before the broadcasts")
    parser.add_argument("--messages", type=count_arg, default=20, help="messages to broadcast")
    parser.add_argument("--interval", type=seconds_arg, default=0.5, help="seconds between two broadcasts")
    parser.add_argument("--size", type=count_arg, default=0, help="pad each message to this many bytes")
    parser.add_argument(
        "--write-timeout", type=positive_seconds_arg, default=WRITE_TIMEOUT, help="ours: seconds per write"
    )
    parser.add_argument("--outbound-limit", type=count_arg, default=OUTBOUND_LIMIT, help="ours: outbox bytes")
    parser.add_argument(
        "--filler", type=count_arg, default=0, help="ours: bytes for the first client before the broadcasts"
    )
    parser.add_argument(
        "--switch-interval",
        type=positive_seconds_arg,
        help=f"sys.setswitchinterval, in seconds (ours: {SWITCH_INTERVAL} unless given)",
    )
    args = parser.parse_args()
    if args.switch_interval is not None or args.stack == "ours":
        sys.setswitchinterval(args.switch_interval or SWITCH_INTERVAL)
    try:
        (serve_ours if args.stack == "ours" else serve_websockets)(args)
    except (OSError, OverflowError, ValueError) as error:  # the port, or a setting the app refuses
        fail(parser.prog, str(error))


if __name__ == "__main__":
    main()
