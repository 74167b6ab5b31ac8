"""How much does a thread cost, and a goroutine? Measured, for the lesson.

    python bench/threads_vs_goroutines.py

Starts N Python threads, each blocked on a ``threading.Event`` (as a reader
waits for a message), and N goroutines, each blocked on a channel (Go, when
installed), for N = 1000 and 10000; prints the start-up time and the memory
(RSS) per unit. Each figure is the median of 3 runs, each run in a fresh
process. Used in docs/threads-vs-goroutines.md.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COUNTS = (1000, 10000)
RUNS = 3

PYTHON_PROBE = """
import json, sys, threading, time
def rss_kib():
    with open("/proc/self/status") as status:
        return int(next(x for x in status if x.startswith("VmRSS:")).split()[1])
n = int(sys.argv[1])
done, started = threading.Event(), threading.Semaphore(0)
def wait():
    started.release()
    done.wait()  # blocked, like a reader waiting for a message
before = rss_kib()
start = time.perf_counter()
threads = [threading.Thread(target=wait, daemon=True) for _ in range(n)]
for t in threads:
    t.start()
for _ in range(n):
    started.acquire()
elapsed = time.perf_counter() - start
after = rss_kib()
done.set()
for t in threads:
    t.join()
print(json.dumps({"start_ms": elapsed * 1e3, "kib_per_unit": (after - before) / n}))
"""


def measure(command: list[str]) -> dict[str, float]:
    runs = [
        json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        for _ in range(RUNS)
    ]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def go_probe() -> str | None:
    if not shutil.which("go") or not Path("/usr/share/gocode").is_dir():
        return None
    binary = os.path.join(tempfile.mkdtemp(), "goroutines")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode")
    subprocess.run(
        ["go", "build", "-o", binary, "."], cwd=ROOT / "interop/go/goroutines", env=env, check=True
    )
    return binary


def main() -> None:
    binary = go_probe()
    print(
        "| N | Python threads: start | Python: KiB per thread | goroutines: start | Go: KiB per goroutine |"
    )
    print("|---|---|---|---|---|")
    for n in COUNTS:
        threads = measure([sys.executable, "-c", PYTHON_PROBE, str(n)])
        goroutines = measure([binary, "-n", str(n)]) if binary else None
        go_cells = (
            f"{goroutines['start_ms']:.1f} ms | {goroutines['kib_per_unit']:.1f}"
            if goroutines
            else "- | - (no Go)"
        )
        print(f"| {n:,} | {threads['start_ms']:.0f} ms | {threads['kib_per_unit']:.1f} | {go_cells} |")


if __name__ == "__main__":
    main()
