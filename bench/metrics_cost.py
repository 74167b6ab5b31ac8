"""What metrics and limits cost a server: echo throughput with them off, with metrics, with limits.

    python bench/metrics_cost.py            # 3 runs of 20 clients x 2000 round trips each
    python bench/metrics_cost.py --quick    # 1 run of 10 x 500

Each configuration serves the same echo (a handler object, in the
netpoller) in this process; clients (websocket-client, a thread each) send
32-byte text messages and wait for each echo. Printed: round trips a
second, over all clients, and each configuration's ratio to metrics off.
The per-message cost of metrics is a few integer additions (the
connection's Traffic); prometheus_client is touched by the once-a-second
sweep, the scrape and the session's end, not by a message.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import websocket  # noqa: E402

import wsthreads  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "off": {},
    "metrics": {"metrics_path": "/metrics"},
    "metrics+limits": {
        "metrics_path": "/metrics",
        "max_sessions_per_address": 1000,
        "max_connection_rate": 1000,
        "max_message_rate": 1e9,
        "max_byte_rate": 1e12,
    },
}


def throughput(settings: dict[str, Any], clients: int, rounds: int) -> float:
    """Round trips a second, over ``clients`` clients doing ``rounds`` each."""
    app = wsthreads.create_app(echo=True, ping_interval=None, **settings)
    with wsthreads.start_server(app, "127.0.0.1", 0) as server:
        sockets = [websocket.create_connection(server.url, timeout=10) for _ in range(clients)]
        start = threading.Barrier(clients + 1)

        def run(ws: websocket.WebSocket) -> None:
            start.wait()
            for _ in range(rounds):
                ws.send("x" * 32)
                ws.recv()

        threads = [
            threading.Thread(target=run, args=(ws,), name=f"client-{i}") for i, ws in enumerate(sockets)
        ]
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        took = time.perf_counter() - began
        for ws in sockets:
            ws.close()
    return clients * rounds / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 10 clients x 500 round trips")
    args = parser.parse_args()
    runs, clients, rounds = (1, 10, 500) if args.quick else (3, 20, 2000)
    results: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(runs):  # interleaved: drift of the machine falls on every configuration alike
        for name, settings in CONFIGS.items():
            results[name].append(throughput(settings, clients, rounds))
    base = statistics.median(results["off"])
    print(f"echo, {clients} clients x {rounds} round trips of 32 bytes, median of {runs} run(s):")
    for name, values in results.items():
        rate = statistics.median(values)
        print(f"  {name:16} {rate:9,.0f} round trips/s  ({rate / base:.2f}x of off)")


if __name__ == "__main__":
    main()
