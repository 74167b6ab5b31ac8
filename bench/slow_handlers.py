"""Handlers that wait (a database, another service): how many netpoller workers run them at once.

    python bench/slow_handlers.py            # 40 clients, on_message waits 10 ms
    python bench/slow_handlers.py 20 0.005   # other clients, other wait

A server (``create_app()`` with a handler object, in this process) answers each
message after ``on_message`` has waited (``time.sleep``: the GIL is released, as
in a database call). Each client (a thread with websocket-client, in this process
too) makes round trips one after another. Printed, for a netpoller of 1, 2, 4
and 8 workers (``WORKERS`` is 4): messages a second, against the bound that
one worker at a time would allow (1 / wait). A worker whose turn took over
``SLOW_TURN`` leaves the turns waiting behind it to other workers.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time

import websocket

import wsthreads
from wsthreads.connection import Connection, Message
from wsthreads.netpoller import SLOW_TURN, WORKERS, netpoller

#: Round trips each client makes per measurement.
ROUND_TRIPS = 20


class Slow:
    """Echo, after waiting ``seconds``, as a handler calling a database would."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_message(self, conn: Connection, message: Message) -> None:
        time.sleep(self.seconds)
        conn.send(message)

    def run(self, conn: Connection) -> None:
        """Nothing of its own to send."""


def client(url: str, done: itertools.count[int]) -> None:
    ws = websocket.create_connection(url, timeout=60)
    try:
        for _ in range(ROUND_TRIPS):
            ws.send("x")
            ws.recv()
            next(done)  # atomic: one step of a C iterator
    finally:
        ws.close()


def measure(workers: int, clients: int, wait: float) -> None:
    netpoller._workers = workers  # the process's netpoller, as the app uses it (a bench may)
    app = wsthreads.create_app(handler=Slow(wait), ping_interval=None)
    server = wsthreads.start_server(app, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.port}/ws"
    done = itertools.count()
    try:
        threads = [
            threading.Thread(target=client, args=(url, done), name=f"client-{n}") for n in range(clients)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        rate = next(done) / (time.monotonic() - started)
        print(f"| {workers} | {rate:,.0f} | {rate * wait:.2f} |", flush=True)
    finally:
        server.shutdown()


def main() -> None:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    wait = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01
    print(
        f"{clients} clients x {ROUND_TRIPS} round trips, on_message waits {wait * 1000:g} ms,"
        f" SLOW_TURN {SLOW_TURN * 1000:g} ms, WORKERS {WORKERS}\n"
    )
    print("| workers | messages/s | workers busy at once (messages/s x wait) |")
    print("|---|---|---|")
    for workers in (1, 2, 4, 8):
        measure(workers, clients, wait)
    netpoller._workers = WORKERS


if __name__ == "__main__":
    main()
