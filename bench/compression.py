"""permessage-deflate: what it saves and what it costs, beside websockets and gorilla, in one run.

    python bench/compression.py            # medians of 3, about 10 minutes
    python bench/compression.py --quick    # one run
    python bench/compression.py --json bench/compression.json

1. **Bytes on the wire**: JSON pushes sent by a server-side connection over a
   socketpair, as they go out: off, deflate (context takeover), deflate without it.
2. **Servers** (each pinned to core 1): ours (``sync_server.py --echo --quiet``),
   websockets (``bench/websockets_echo.py``) and gorilla (``-echo -quiet``), each
   without and with compression, measured by the Go load client (pinned to core 0;
   ``-compression``: gorilla offers no context takeover either way). Round trip p50
   of 32 bytes, pipelined 64-byte messages a second, 1 MiB of random bytes (the
   worst case: nothing to gain) a second; then 1000 connections x 20 round trips at
   once: KiB per active connection (peak minus idle RSS, over N).
3. **Memory**: what one zlib compressor and decompressor hold, by window and memory
   level (2000 of each, used once, in this process: RssAnon after minus before);
   then 1000 connections that offer what a browser offers (context
   takeover both ways) and make one round trip each, held: the server's RssAnon
   held minus idle, over N (``bench/idle_rss.py``'s figure).
4. **Clients**, in this process on core 0: ours (``wsthreads.dial``) and websockets
   (``websockets.sync.client``), without and with compression, against gorilla's
   echo with ``-compression`` on core 1.
5. **Broadcast**: ``bench/broadcast.py``'s measure at 1000 connections, off, deflate
   (each connection compresses through its history) and without context takeover
   (compressed once for all).

Every echo and every delivery is checked. Figures are medians of the runs; ratios
are compressed/uncompressed of the same stack in the same run (above 1: faster or
bigger with compression). Nothing here is a test: no figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

from memory import held_connections

import wsthreads
from bench import (
    CLIENT_CPU,
    SMOKE,
    Plan,
    Server,
    build_go,
    go_client,
    measure_client,
    pin,
    serving,
    status_kib,
)
from wsthreads.connection import Connection
from wsthreads.deflate import Agreement

Figures = dict[str, float]
PUSH = '{"type":"quote","symbol":"%s","bid":%.2f,"ask":%.2f,"volume":%d,"ts":%d,"exchange":"XNYS"}'
OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


# --- 1. bytes on the wire ---------------------------------------------------------------


def pushes(count: int) -> list[str]:
    """``count`` JSON quotes of about 110 bytes, as a price feed pushes them."""
    symbols = ("ACME", "GLOBEX", "INITECH", "UMBRELLA")
    return [
        PUSH % (symbols[i % 4], 100 + i % 97 / 10, 100.2 + i % 89 / 10, i * 37 % 10000, i)
        for i in range(count)
    ]


def wire_bytes(messages: list[str], agreement: Agreement | None) -> int:
    """What ``messages`` take on the wire from a server-side connection with ``agreement``."""
    ours, theirs = socket.socketpair()
    conn = Connection(ours, client=False, compression=agreement, name="wire-reader")
    conn.start(lambda message: None)
    drain = threading.Thread(target=lambda: all(iter(lambda: theirs.recv(1 << 16), b"")), name="drain")
    drain.start()
    try:
        for message in messages:
            conn.send(message)
        return conn.traffic.bytes_out
    finally:
        conn.abort()
        conn.wait_closed()
        drain.join()
        theirs.close()


#: What the wire table compares: off, our default, zlib's own window and memory level, the
#: least memory, and no context takeover.
WIRE_WAYS = {
    "off": None,
    "deflate (12-bit window, memory level 5: the default)": Agreement(12, True, 12, True, 5),
    "15-bit window, memory level 8 (zlib's default)": Agreement(15, True, 15, True, 8),
    "9-bit window, memory level 1": Agreement(9, True, 9, True, 1),
    "no context takeover (12-bit, level 5)": Agreement(12, False, 12, False, 5),
}


def wire_table() -> dict[str, dict[str, float]]:
    """Bytes on the wire for each of :data:`WIRE_WAYS`: 1000 small pushes, and 100 of 60 quotes each."""
    small = pushes(1000)
    quotes = [json.loads(m) for m in pushes(6000)]
    big = [json.dumps(quotes[i : i + 60]) for i in range(0, 6000, 60)]
    kinds = {"1000 pushes of ~110 B": small, "100 pushes of ~7 KB": big}
    sizes = {kind: float(sum(map(len, messages))) for kind, messages in kinds.items()}
    table: dict[str, dict[str, float]] = {"message bytes": sizes}
    for way, agreement in WIRE_WAYS.items():
        table[way] = {kind: float(wire_bytes(messages, agreement)) for kind, messages in kinds.items()}
    return table


# --- 2. servers -------------------------------------------------------------------------


def servers(go: dict[str, str]) -> list[tuple[Server, Server]]:
    """Each stack as (without compression, with it)."""
    python = sys.executable
    ours = [python, "sync_server.py", "--port", "0", "--echo", "--quiet"]
    websockets = [python, "bench/websockets_echo.py"]
    gorilla = [go["server"], "-addr", "127.0.0.1:0", "-echo", "-quiet"]
    return [
        (Server("ours", ours), Server("ours", [*ours, "--compression"])),
        (Server("websockets", websockets), Server("websockets", [*websockets, "0", "deflate"])),
        (Server("gorilla", gorilla), Server("gorilla", [*gorilla, "-compression"])),
    ]


def measure_server(server: Server, go: dict[str, str], compressed: bool, plan: Plan, logs: Path) -> Figures:
    flag = ["-compression"] if compressed else []
    with serving(server, logs) as process:
        figures = go_client(
            go["bench"],
            process.url,
            *("-only", "rtt,pipelined,large", "-rounds", str(plan.rounds)),
            *("-messages", str(plan.messages), "-large", str(plan.large), *flag),
        )
    with serving(server, logs) as process:
        idle = process.memory_kib("VmRSS")
        go_client(go["bench"], process.url, "-only", "conns", "-conns", str(plan.conns), *flag)
        figures["active_kib"] = (process.memory_kib("VmHWM") - idle) / plan.conns
    return figures


# --- 3. idle memory ---------------------------------------------------------------------


def idle_kib(server: Server, count: int, offer: bool, logs: Path) -> float:
    with serving(server, logs) as process:
        time.sleep(0.5)
        idle = process.memory_kib("RssAnon")
        port = int(process.url.rsplit(":", 1)[1].split("/")[0])
        with held_connections(port, count, compressed=offer):
            time.sleep(1)
            return (process.memory_kib("RssAnon") - idle) / count


ZLIB_SETTINGS = ((12, 5), (15, 8), (9, 1))  # our default, zlib's, the least


def zlib_kib(count: int = 2000) -> dict[str, dict[str, float]]:
    """KiB one compressor and one decompressor hold once used, by (window bits, memory level)."""
    sizes = {}
    message = PUSH.encode()
    for bits, level in ZLIB_SETTINGS:
        before = status_kib("self", "RssAnon")
        compressors = [zlib.compressobj(6, zlib.DEFLATED, -bits, level) for _ in range(count)]
        data = b""
        for compressor in compressors:
            data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        middle = status_kib("self", "RssAnon")
        decompressors = [zlib.decompressobj(-bits) for _ in range(count)]
        for decompressor in decompressors:
            decompressor.decompress(data)
        after = status_kib("self", "RssAnon")
        sizes[f"{bits}-bit window, memory level {level}"] = {
            "compressor": (middle - before) / count,
            "decompressor": (after - middle) / count,
        }
        del compressors, decompressors
    return sizes


# --- 4. clients -------------------------------------------------------------------------


class OurClient:
    def __init__(self, url: str, compression: str | None) -> None:
        config = wsthreads.ClientConfig(timeout=30, max_message_size=None, compression=compression)
        self.conn = wsthreads.dial(url, config)
        if compression and self.conn.compression is None:
            raise SystemExit(f"{url} did not agree to compression")
        self.conn.start()

    def send(self, message: str | bytes) -> None:
        self.conn.send(message)

    def recv(self, size: int) -> str | bytes:
        return self.conn.recv(30)

    def close(self) -> None:
        self.conn.close()
        self.conn.wait_closed()


class WebsocketsClient:
    def __init__(self, url: str, compression: str | None) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, compression=compression, max_size=None, open_timeout=30)

    def send(self, message: str | bytes) -> None:
        self.ws.send(message)

    def recv(self, size: int) -> str | bytes:
        return self.ws.recv(timeout=30)

    def close(self) -> None:
        self.ws.close()


# --- runs and tables ----------------------------------------------------------------------


#: bench.py's plans, each run (servers, clients, connections) as many times.
PLANS = {
    "full": Plan(2000, 200, 20000, 50, 1000, conns_runs=3, server_runs=3, client_runs=3, broadcasts=1000),
    "quick": Plan(500, 100, 5000, 10, 1000, conns_runs=1, server_runs=1, client_runs=1, broadcasts=200),
    "smoke": SMOKE,  # checks the script only (tests/test_bench.py)
}
METRICS = {  # name, unit, higher is better
    "rtt_p50_us": ("round trip p50", "µs", False),
    "msgs_per_s": ("pipelined", "msg/s", True),
    "mb_per_s": ("1 MiB random", "MB/s", True),
    "active_kib": ("KiB per active connection", "KiB", False),
}


def median(samples: list[Figures]) -> Figures:
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}


def progress(what: str) -> None:
    print(f"  ... {what}", file=sys.stderr, flush=True)


def run(plan: Plan) -> dict[str, Any]:
    results: dict[str, Any] = {"wire": wire_table(), "zlib_kib": zlib_kib()}
    with tempfile.TemporaryDirectory(prefix="wsthreads-compression-") as directory:
        logs = Path(directory)
        go = build_go(logs, ("server", "bench"))
        server_runs: dict[str, dict[str, list[Figures]]] = {}
        for n in range(plan.server_runs):
            for plain, compressed in servers(go):
                for way, server in (("off", plain), ("deflate", compressed)):
                    progress(f"server {server.name} ({way}), run {n + 1} of {plan.server_runs}")
                    figures = measure_server(server, go, way == "deflate", plan, logs)
                    server_runs.setdefault(server.name, {}).setdefault(way, []).append(figures)
        results["servers"] = {
            name: {way: median(s) for way, s in ways.items()} for name, ways in server_runs.items()
        }
        ours = servers(go)[0]
        idle: dict[str, list[float]] = {}
        for n in range(plan.server_runs):
            for way, server, offer in (("off", ours[0], False), ("deflate", ours[1], True)):
                progress(f"idle memory ({way}), run {n + 1} of {plan.server_runs}")
                idle.setdefault(way, []).append(idle_kib(server, plan.conns, offer, logs))
        results["idle_kib"] = {way: statistics.median(values) for way, values in idle.items()}
        gorilla = Server("gorilla", [go["server"], "-addr", "127.0.0.1:0", "-echo", "-quiet", "-compression"])
        client_runs: dict[str, dict[str, list[Figures]]] = {}
        pin(os.getpid(), CLIENT_CPU)
        with serving(gorilla, logs) as echo:
            for n in range(plan.server_runs):
                for name, kind in (("ours", OurClient), ("websockets", WebsocketsClient)):
                    for way, compression in (("off", None), ("deflate", "deflate")):
                        progress(f"client {name} ({way}), run {n + 1} of {plan.server_runs}")
                        make = lambda url, kind=kind, compression=compression: kind(url, compression)  # noqa: E731
                        figures = measure_client(make, echo.url, plan)
                        client_runs.setdefault(name, {}).setdefault(way, []).append(figures)
        results["clients"] = {
            name: {way: median(s) for way, s in ways.items()} for name, ways in client_runs.items()
        }
    from broadcast import measure

    logging.getLogger().setLevel(logging.ERROR)
    broadcasts: dict[str, list[Figures]] = {}
    for n in range(plan.server_runs):
        for way in ("off", "deflate", "no-takeover"):
            progress(f"broadcast to {plan.conns} ({way}), run {n + 1} of {plan.server_runs}")
            broadcasts.setdefault(way, []).append(measure("broadcast", plan.conns, plan.broadcasts, way))
    results["broadcast"] = {way: median(s) for way, s in broadcasts.items()}
    return results


def stack_table(title: str, stacks: dict[str, dict[str, Figures]]) -> str:
    metrics = [m for m in METRICS if m in next(iter(stacks.values()))["off"]]
    head = ["stack", *(f"{METRICS[m][0]} ({METRICS[m][1]}) off / deflate / ratio" for m in metrics)]
    rows = [head, ["---"] * len(head)]
    for name, ways in stacks.items():
        cells = [name]
        for metric in metrics:
            off, on = ways["off"][metric], ways["deflate"][metric]
            cells.append(f"{off:,.0f} / {on:,.0f} / {on / off:.2f}x")
        rows.append(cells)
    return f"{title}\n\n" + "\n".join("| " + " | ".join(row) + " |" for row in rows)


def report(results: dict[str, Any], plan: Plan) -> str:
    lines = [
        f"Medians of {plan.server_runs} run(s); ratio: deflate / off (times and KiB: above 1 costs more).",
        "",
    ]
    lines += ["Bytes on the wire (frames included), sent by our server (message bytes / wire bytes):", ""]
    kinds = list(results["wire"]["message bytes"])
    lines += ["| way | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for way, row in results["wire"].items():
        if way != "message bytes":
            sizes = results["wire"]["message bytes"]
            cells = [f"{row[kind]:,.0f} ({sizes[kind] / row[kind]:.2f}x)" for kind in kinds]
            lines.append(f"| {way} | " + " | ".join(cells) + " |")
    lines += ["", stack_table("Servers, by the Go load client (gorilla):", results["servers"]), ""]
    lines += ["What one zlib object holds once used:", "", "| zlib | compressor (KiB) | decompressor (KiB) |"]
    lines += ["|---|---|---|"]
    for setting, row in results["zlib_kib"].items():
        lines.append(f"| {setting} | {row['compressor']:.1f} | {row['decompressor']:.1f} |")
    lines.append("")
    idle = results["idle_kib"]
    lines += [
        f"Ours, KiB per idle connection ({plan.conns}, offering a browser's compression):"
        f" off {idle['off']:.1f}, deflate {idle['deflate']:.1f}",
        "",
    ]
    lines += [stack_table("Clients, against gorilla's echo with -compression:", results["clients"]), ""]
    lines += [f"Broadcast to {plan.conns} connections ({plan.broadcasts} messages):", ""]
    lines += ["| server | delivered msg/s | p50 delivery (ms) | slowest (ms) |", "|---|---|---|---|"]
    for way, row in results["broadcast"].items():
        lines.append(f"| {way} | {row['msgs_per_s']:,.0f} | {row['p50_ms']:.1f} | {row['max_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one run")
    size.add_argument("--smoke", action="store_true", help="tiny: checks the script only")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore", r"connect\(\) must be used", DeprecationWarning)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    results = run(plan)
    print(report(results, plan))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
