"""The benchmark script still runs (tiny counts; no figure is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT


def test_bench_smoke_run(tmp_path: Path) -> None:
    """bench.py --smoke measures ours and the TCP floor and writes its table and JSON."""
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "bench/bench.py", "--smoke", "--stacks", "ours,tcp", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| RTT p50 (µs) |" in result.stdout and "ours/tcp" in result.stdout
    data = json.loads(out.read_text())
    assert data["figures"]["ours"]["msgs_per_s"]["runs"]
    assert data["figures"]["ours"]["c10_completed"]["median"] == 10


def test_broadcast_bench_smoke_run(tmp_path: Path) -> None:
    """bench/broadcast.py --smoke measures both ways, checks every message, and writes its JSON."""
    out = tmp_path / "broadcast.json"
    result = subprocess.run(
        [sys.executable, "bench/broadcast.py", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| 10 | broadcast / send loop |" in result.stdout
    figures = json.loads(out.read_text())["figures"]["10"]
    assert figures["broadcast"]["msgs_per_s"] > 0 and figures["send loop"]["max_ms"] > 0


def test_trace_cost_bench_runs() -> None:
    """bench/trace_cost.py --quick prints the cost of the hooks off and of tracing on."""
    result = subprocess.run(
        [sys.executable, "bench/trace_cost.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| off: the hooks alone |" in result.stdout and "| on |" in result.stdout
