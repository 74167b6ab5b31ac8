"""The benchmark script still runs (tiny counts; no figure is asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README


def run_script(script: str, *args: str, timeout: float = 120) -> str:
    """Run a bench script to completion; its standard output (it must exit 0)."""
    command = [sys.executable, f"bench/{script}", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.timeout(150)
def test_bench_smoke_run(go_programs: dict[str, str], tmp_path: Path) -> None:
    """bench.py --smoke: every server under the Go load client, every client against the Go echo
    server, the log line's cost and the broadcast row; both tables, with ratios, and the JSON.
    (It builds its own Go programs; the fixture only checks that Go is there.)"""
    out = tmp_path / "results.json"
    stdout = run_script("bench.py", "--smoke", "--json", str(out), timeout=140)
    assert "| round trip p50, 32 B (µs) |" in stdout and "| 10 conns: KiB/conn (peak - idle RSS) |" in stdout
    assert (
        "| ours/websockets |" in stdout and "| ours-api/websockets |" in stdout and "| ours/tcp |" in stdout
    )
    assert "The per-message log line" in stdout and "Broadcast: 10 messages to 10 connections" in stdout
    data = json.loads(out.read_text())
    servers, clients = data["server"]["figures"], data["client"]["figures"]
    assert set(servers) == {
        "ours",
        "ours+log",
        "ours-pure",
        "gunicorn",
        "websockets",
        "gorilla",
        "tcp",
        "werkzeug",
    }
    assert set(clients) == {"ours", "ours-api", "websockets", "websocket-client", "tcp"}
    for name, figures in [*servers.items(), *clients.items()]:
        if name != "werkzeug":  # the floor holds connections only: it has no workload figures
            assert figures["msgs_per_s"]["median"] > 0 and figures["mb_per_s"]["median"] > 0
    for figures in servers.values():
        assert figures["c10_completed"]["median"] == 10
        assert figures["c10_kib_per_conn"]["runs"]
    assert data["server"]["ratios"]["ours/websockets"]["rtt_p50_us"]["median"] > 0
    assert data["server"]["ratios"]["ours-pure/ours"]["mb_per_s"]["median"] > 0  # the masking price
    assert "c10_kib_per_conn" in data["server"]["ratios"]["ours/werkzeug"]
    assert data["client"]["ratios"]["ours-api/websockets"]["mb_per_s"]["median"] > 0
    assert set(data["log_cost"]) == {"us_per_round_trip", "us_per_pipelined_message"}
    assert data["broadcast"]["msgs_per_s"] > 0 and data["broadcast"]["max_ms"] > 0


def test_broadcast_bench_smoke_run(tmp_path: Path) -> None:
    """bench/broadcast.py --smoke measures both ways, checks every message, and writes its JSON."""
    out = tmp_path / "broadcast.json"
    stdout = run_script("broadcast.py", "--smoke", "--json", str(out))
    assert "| 10 | broadcast / send loop |" in stdout
    figures = json.loads(out.read_text())["figures"]["10"]
    assert figures["broadcast"]["msgs_per_s"] > 0 and figures["send loop"]["max_ms"] > 0


def test_compression_bench_smoke_run(go_programs: dict[str, str], tmp_path: Path) -> None:
    """bench/compression.py --smoke: every table, every stack with and without, and its JSON."""
    out = tmp_path / "compression.json"
    stdout = run_script("compression.py", "--smoke", "--json", str(out), timeout=200)
    results = json.loads(out.read_text())
    assert set(results["servers"]) == {"ours", "websockets", "gorilla"}
    assert set(results["clients"]) == {"ours", "websockets"}
    assert set(results["broadcast"]) == {"off", "deflate", "no-takeover"}
    wire = {way: row["1000 pushes of ~110 B"] for way, row in results["wire"].items()}
    assert wire["deflate (12-bit window, memory level 5: the default)"] * 3 < wire["off"]
    assert "KiB per idle connection" in stdout


def test_trace_cost_bench_runs() -> None:
    """bench/trace_cost.py --quick prints the cost of the hooks off and of tracing on."""
    stdout = run_script("trace_cost.py", "--quick")
    assert "| off: the hooks alone |" in stdout and "| on |" in stdout


def test_metrics_cost_bench_runs() -> None:
    """bench/metrics_cost.py --quick prints echo throughput with metrics off, on, and with limits."""
    stdout = run_script("metrics_cost.py", "--quick")
    assert "off" in stdout and "(1.00x of off)" in stdout and "metrics+limits" in stdout


def test_stuck_writers_bench_runs() -> None:
    """bench/stuck_writers.py 10: the CPU share while writers wait for peers that never read."""
    stdout = run_script("stuck_writers.py", "10")
    assert re.search(r"^\| 10 \| \d+\.\d% \| \d+\.\d% \| \d+ \| 100 \|$", stdout, re.M), stdout


def test_slow_handlers_bench_runs() -> None:
    """bench/slow_handlers.py 4 0.005: messages a second with 1, 2, 4 and 8 workers, handlers that wait."""
    stdout = run_script("slow_handlers.py", "4", "0.005")
    rows = re.findall(r"^\| (\d) \| [\d,]+ \| \d+\.\d\d \|$", stdout, re.M)
    assert rows == ["1", "2", "4", "8"], stdout


def test_memory_bench_runs() -> None:
    """bench/memory.py 20: the Python objects per connection, with the lines that allocated them."""
    stdout = run_script("memory.py", "20")
    assert "20 connections:" in stdout and "KiB of Python objects per connection" in stdout
    assert "| bytes per connection | objects per connection | allocated at |" in stdout


@pytest.mark.parametrize("server", ["ours", "werkzeug", "bare"])
def test_idle_rss_runs(server: str) -> None:
    """bench/idle_rss.py: ours, Werkzeug's floor (its small-frame echo answers the holder), bare threads."""
    stdout = run_script("idle_rss.py", server, "20")
    assert re.search(
        rf"^{server}: -?\d+\.\d KiB per idle connection \(20, RssAnon held minus idle\)$", stdout, re.M
    )


@pytest.mark.timeout(150)
def test_fanout_bench_quick_run(redis_base_url: str, tmp_path: Path) -> None:
    """bench/fanout.py --quick: 50 subscribers on a two-worker gunicorn (Redis) and a one-worker one
    (Redis, in-process) get every message once, in order (the script checks each); table and JSON."""
    out = tmp_path / "fanout.json"
    stdout = run_script("fanout.py", "--quick", "--redis", redis_base_url, "--json", str(out))
    assert "| Redis, 2 workers, publish() from another process |" in stdout
    assert "| in-process, 1 worker, publisher WS → pubsub.publish |" in stdout
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert set(rows) == {"redis-2w-publish", "redis-2w-ws", "redis-1w-ws", "memory-1w-ws"}
    for row in rows.values():
        assert row["paced"]["deliveries"] == 50 * data["paced"]["messages"]
        assert row["burst"]["deliveries"] == 50 * data["burst"]["messages"]
        assert row["burst"]["deliveries_per_s"] > 0 and row["paced"]["p99_ms"] > 0
    (spread,) = rows["redis-2w-publish"]["subscribers_per_worker"]
    assert len(spread) == 2 and sum(spread) == 50, spread


@pytest.mark.timeout(300)
def test_scale_smoke_run(go_programs: dict[str, str], tmp_path: Path) -> None:
    """bench/scale.py --smoke: both workloads on every server, every delivery checked, the JSON."""
    out = tmp_path / "scale.json"
    stdout = run_script("scale.py", "--smoke", "--json", str(out), timeout=280)
    assert "| 20 | ours/gorilla |" in stdout and "SIGINT→exit s" in stdout
    data = json.loads(out.read_text())
    assert set(data["push"]["20"]) == {"ours", "ours-gunicorn", "websockets", "gorilla"}
    assert set(data["busy"]["20"]) == {
        "ours",
        "ours-gunicorn",
        "ours-threads",
        "websockets",
        "gorilla",
        "tcp",
    }
    for name, figures in data["push"]["20"].items():
        assert figures["complete"] == 20 and figures["wrong"] == 0, name
    for name in ("ours", "ours-gunicorn"):  # closed with 1001 at SIGINT, and in time
        assert data["push"]["20"][name]["closed_1001"] == 20
    for name, figures in data["busy"]["20"].items():
        assert figures["completed"] == 20, name
