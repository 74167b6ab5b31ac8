"""Render a ``--trace`` file as a PNG timeline: a lane per thread, spans, messages, arrows.

    python bench/trace_png.py --record docs/trace-demo.json   # run the demo traced (about 5 s)
    python bench/trace_png.py docs/trace-demo.json docs/trace-demo.png

``--record`` runs the lesson's demo, traced: ``sync_server.py`` and
``sync_client.py``, 3 messages each 1 s apart, then Ctrl+C on the server,
and merges the two files into one. Rendering needs matplotlib
(``pip install -r bench/requirements.txt``). Perfetto (ui.perfetto.dev)
shows the same file interactively.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Span colours by what the thread waits for.
COLOURS = {
    "recv (blocked)": "#9ecae1",
    "pause (stop.wait)": "#fdd49e",
    "waiting for the session to end": "#f0f0c0",
    "waiting for the end or a signal": "#f7f7f7",
    "send (under the wire lock)": "#e6550d",
    "closing handshake": "#a1d99b",
    "shutdown": "#bcbddc",
    "dial": "#c7e9c0",
    "accepting connections": "#eeeeee",
    "enforcing request deadlines": "#636363",
}


def record(out: Path) -> None:
    """Run the demo traced, Ctrl+C on the server after the messages, and merge both traces into ``out``."""
    with tempfile.TemporaryDirectory() as scratch:
        server_trace, client_trace = Path(scratch) / "server.json", Path(scratch) / "client.json"
        demo = ["--count", "3", "--interval", "1"]
        server = subprocess.Popen(
            [sys.executable, "sync_server.py", "--port", "0", *demo, "--trace", str(server_trace)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        url = server.stdout.readline().split("listening on ")[1].split()[0]
        client = subprocess.Popen(
            [
                sys.executable,
                "sync_client.py",
                "--url",
                url,
                *demo,
                "--linger",
                "5",
                "--trace",
                str(client_trace),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(3.5)  # both have sent their 3 messages; the client lingers
        server.send_signal(signal.SIGINT)  # the 1001 reaches both
        server.wait(10)
        client.wait(10)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "wsthreads",
                "merge-traces",
                str(server_trace),
                str(client_trace),
                "-o",
                str(out),
            ],
            cwd=ROOT,
            check=True,
        )


def lanes(events: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """(pid, tid, label) of every thread, grouped by process, in order of first appearance."""
    processes = {
        e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"
    }
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    first: dict[tuple[int, int], float] = {}
    for e in events:
        if e["ph"] != "M":
            first.setdefault((e["pid"], e["tid"]), e["ts"])
    order = sorted(
        first, key=lambda lane: (min(t for (p, _), t in first.items() if p == lane[0]), first[lane])
    )
    return [(pid, tid, f"{processes.get(pid, pid)}: {names.get((pid, tid), tid)}") for pid, tid in order]


def render(trace_path: Path, png: Path) -> None:
    """Draw the timeline of ``trace_path`` into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    events = json.loads(trace_path.read_text())["traceEvents"]
    rows = lanes(events)
    row_of = {(pid, tid): i for i, (pid, tid, _) in enumerate(rows)}
    start = min(e["ts"] for e in events if e["ph"] != "M")
    seconds = {id(e): (e["ts"] - start) / 1e6 for e in events if e["ph"] != "M"}
    figure, axes = plt.subplots(figsize=(14, 0.55 * len(rows) + 1.5))
    for e in events:
        row = row_of.get((e["pid"], e.get("tid")))
        if row is None:
            continue
        if e["ph"] == "X" and e["dur"] > 0:
            colour = COLOURS.get(e["name"], "#dddddd")
            axes.broken_barh([(seconds[id(e)], e["dur"] / 1e6)], (row - 0.35, 0.7), facecolors=colour)
        elif e["ph"] == "i" and e["cat"] in ("message", "event"):
            marker = {"sent message": ">", "received message": "o"}.get(e["name"], "x")
            axes.plot(seconds[id(e)], row, marker, color="black", markersize=5)
            text = e["args"].get("text") or f"{e['name']} {e['args'].get('code', '')}".strip()
            axes.annotate(text, (seconds[id(e)], row + 0.38), fontsize=6, rotation=20)
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    for e in events:
        other = ends.get(e.get("id", -1)) if e["ph"] == "s" else None
        if other is not None:
            axes.annotate(
                "",
                xy=(seconds[id(other)], row_of[(other["pid"], other["tid"])]),
                xytext=(seconds[id(e)], row_of[(e["pid"], e["tid"])]),
                arrowprops={"arrowstyle": "->", "color": "#3182bd", "lw": 0.8},
            )
    axes.set_yticks(range(len(rows)), [label for _, _, label in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    handles = [Rectangle((0, 0), 1, 1, color=colour) for colour in COLOURS.values()]
    axes.legend(handles, list(COLOURS), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=7)
    axes.set_title("What every thread did: the demo, 3 messages each way, then Ctrl+C on the server")
    figure.tight_layout()
    figure.savefig(png, dpi=120)


def main() -> None:
    """Record, or render."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--record", metavar="JSON", help="run the demo traced and write the merged trace here"
    )
    parser.add_argument("trace", nargs="?", help="a trace file to render")
    parser.add_argument("png", nargs="?", help="the PNG to write")
    args = parser.parse_args()
    if args.record:
        record(Path(args.record))
    elif args.trace and args.png:
        render(Path(args.trace), Path(args.png))
    else:
        parser.error("give --record JSON, or TRACE PNG")


if __name__ == "__main__":
    main()
