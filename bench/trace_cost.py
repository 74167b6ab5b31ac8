"""What tracing costs: off (the default) and on, against a round trip measured in the same run.

    python bench/trace_cost.py            # 5 runs of 2000 round trips each way
    python bench/trace_cost.py --quick    # 1 run of 500

Off, each message passes the trace hooks of one send and one receive on
each side (a ``begin``/``end`` pair around the blocked ``recv`` and around
the ``send``, and an ``active()`` test each); the hooks' cost is timed on
its own, and set beside the round trip of our echo server and client
(in this process, 32-byte text messages), timed with tracing off and on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wsthreads  # noqa: E402
from wsthreads import trace  # noqa: E402


def hooks_off_ns() -> float:
    """Nanoseconds the hooks of one message take on both sides with tracing off."""

    def one_message() -> None:
        for _ in range(2):  # the sender's side and the receiver's
            started = trace.begin()
            trace.end(started, "send (under the wire lock)")
            trace.active()
            started = trace.begin()
            trace.end(started, "recv (blocked)")
            trace.active()

    runs = 200_000
    return min(timeit.repeat(one_message, number=runs, repeat=5)) / runs * 1e9


def round_trip_us(rounds: int) -> float:
    """The p50 round trip of a 32-byte text message to our echo server, in microseconds."""
    app = wsthreads.create_app(echo=True, ping_interval=None)
    with wsthreads.start_server(app, "127.0.0.1", 0) as server:
        conn = wsthreads.dial(server.url)
        conn.start()
        try:
            message = "x" * 32
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                conn.send(message)
                assert conn.recv(timeout=5) == message
                times.append(time.perf_counter() - started)
        finally:
            conn.close()
            conn.wait_closed()
    return statistics.median(times) * 1e6


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 500 round trips")
    args = parser.parse_args()
    runs, rounds = (1, 500) if args.quick else (5, 2000)
    import logging

    logging.basicConfig(level=logging.WARNING)  # no line per message
    off, on = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(runs):  # alternate, so that machine noise hits both
            off.append(round_trip_us(rounds))
            trace.start(Path(scratch) / "trace.json")
            try:
                on.append(round_trip_us(rounds))
            finally:
                trace.stop()
    hooks = hooks_off_ns()
    p50_off, p50_on = statistics.median(off), statistics.median(on)
    print(f"round trip p50, medians of {runs} x {rounds}:")
    print("| tracing | round trip p50 (µs) | cost per message |")
    print("|---|---|---|")
    print(f"| off: the hooks alone | | {hooks:.0f} ns = {hooks / (p50_off * 1000):.2%} of a round trip |")
    print(f"| off | {p50_off:.1f} (runs: {min(off):.1f} to {max(off):.1f}) | |")
    print(f"| on | {p50_on:.1f} (runs: {min(on):.1f} to {max(on):.1f}) | {p50_on - p50_off:+.1f} µs |")


if __name__ == "__main__":
    main()
