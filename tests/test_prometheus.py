"""A real Prometheus scrapes a two-worker gunicorn: the sessions it reads back are the ones the test made.

Prometheus is Debian's (``apt-get install prometheus``), on a free port with its
own config and data in the test's directory; gunicorn runs gunicorn.conf.py,
whose ``share_metrics()`` sums the workers in every scrape.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, Program, free_port, open_client, require, wait_until
from helpers import websocket_client as connect
from test_gunicorn import Gunicorn

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
#: Between two scrapes (in Prometheus's duration syntax): a value changes within about this long.
SCRAPE_INTERVAL = "500ms"
#: How long a value may take to reach a query: a few scrapes on a loaded machine.
SETTLE = 20.0
APP = 'sync_server:create_app(echo=True, metrics_path="/metrics", max_connections=100)'


class Prometheus(Program):
    """``prometheus`` scraping ``target`` every SCRAPE_INTERVAL, its config and data in ``directory``."""

    def __init__(self, directory: Path, target: str) -> None:
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            "  - job_name: wsthreads\n"
            "    metrics_path: /metrics\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.port = free_port()
        super().__init__(
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        )
        if not wait_until(lambda: self.ready() or self.proc.poll() is not None, timeout=30, step=0.2):
            self.kill()
            raise AssertionError(f"Prometheus did not get ready:\n{self.output()}")
        if self.proc.poll() is not None:
            raise AssertionError(f"Prometheus exited:\n{self.output()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def series(self, expression: str) -> list[tuple[dict[str, str], float]]:
        """An instant query through Prometheus's HTTP API: each series' labels and value."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return [(series["metric"], float(series["value"][1])) for series in answer["data"]["result"]]

    def query(self, expression: str) -> list[float]:
        """The values of an instant query, one per series."""
        return [value for _, value in self.series(expression)]

    def settles_at(self, expression: str, expected: list[float]) -> bool:
        """True once the query answers ``expected`` within SETTLE seconds; else AssertionError saying what."""
        if wait_until(lambda: sorted(self.query(expression)) == expected, timeout=SETTLE, step=0.25):
            return True
        raise AssertionError(f"{expression} is {self.series(expression)}, not {expected}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Gunicorn, Prometheus]]:
    require(os.access(PROMETHEUS, os.X_OK), "Prometheus (prometheus)", "apt-get install -y prometheus")
    with Gunicorn(APP, workers=2, threads=20) as gunicorn:
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{gunicorn.port}")
        try:
            yield gunicorn, prometheus
        finally:
            prometheus.kill()


@pytest.mark.timeout(120)
def test_prometheus_reads_sessions_and_close_codes_summed_over_two_workers(
    served: tuple[Gunicorn, Prometheus],
) -> None:
    gunicorn, prometheus = served
    # Both workers report, each with its pid and its budget: 20, their threads, since every session
    # of sync_server.py's echo (a reader thread each, no netpoller) holds one (max_connections: 100).
    assert prometheus.settles_at("wsthreads_sessions_limit", [20.0, 20.0])

    clients = [connect(gunicorn.url) for _ in range(6)]
    try:
        assert prometheus.settles_at("sum(wsthreads_sessions_open)", [6.0])
        assert prometheus.settles_at("sum(wsthreads_sessions_opened_total)", [6.0])
        for client in clients[:2]:
            client.close()  # 1000, the client first
        raw = open_client(gunicorn.port)
        raw.close()  # a session lost without a close frame: 1006
        assert prometheus.settles_at("sum(wsthreads_sessions_open)", [4.0])
        assert prometheus.settles_at(
            'sum(wsthreads_sessions_ended_total{code="1000",closed_by="client"})', [2.0]
        )
        assert prometheus.settles_at(
            'sum(wsthreads_sessions_ended_total{code="1006",closed_by="nobody"})', [1.0]
        )
        assert prometheus.settles_at("sum(wsthreads_sessions_opened_total)", [7.0])
        clients[2].send("hello")
        assert clients[2].recv() == "hello"
        assert prometheus.settles_at('sum(wsthreads_messages_total{direction="in"})', [1.0])
        assert prometheus.settles_at('sum(wsthreads_messages_total{direction="out"})', [1.0])
    finally:
        for client in clients[2:]:
            client.close()
    assert prometheus.settles_at("sum(wsthreads_sessions_open)", [0.0])
    assert prometheus.settles_at('sum(wsthreads_sessions_ended_total{code="1000",closed_by="client"})', [6.0])
    assert not gunicorn.problems(), gunicorn.output()


@pytest.mark.timeout(120)
def test_a_dead_workers_gauges_leave_and_its_counters_stay(served: tuple[Gunicorn, Prometheus]) -> None:
    gunicorn, prometheus = served
    clients = [connect(gunicorn.url) for _ in range(4)]
    for client in clients:
        client.close()
    assert prometheus.settles_at('sum(wsthreads_sessions_ended_total{code="1000"})', [4.0])
    assert {labels["pid"] for labels, _ in prometheus.series("wsthreads_sessions_limit")} == workers(gunicorn)
    dead = min(workers(gunicorn))
    os.kill(int(dead), signal.SIGKILL)  # gunicorn starts another; child_exit drops the dead one's gauges
    assert wait_until(lambda: len(workers(gunicorn)) == 3, timeout=30)
    live = workers(gunicorn) - {dead}

    def reporting() -> set[str]:
        return {labels["pid"] for labels, _ in prometheus.series("wsthreads_sessions_limit")}

    assert wait_until(lambda: reporting() == live, timeout=SETTLE), (reporting(), live)
    assert prometheus.settles_at('sum(wsthreads_sessions_ended_total{code="1000"})', [4.0])


def workers(gunicorn: Gunicorn) -> set[str]:
    """The pids of the workers gunicorn has started so far."""
    return {line.split("pid: ")[1].strip() for line in gunicorn.stderr if "Booting worker with pid: " in line}


def test_several_workers_without_a_shared_directory_say_so(tmp_path: Path) -> None:
    """gunicorn.conf.py without its on_starting hook: each worker warns that a scrape shows only itself."""
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(f"exec(open({str(ROOT / 'gunicorn.conf.py')!r}).read())\ndel on_starting\n")
    with Gunicorn(APP, "-c", str(config), workers=2, threads=5) as gunicorn:
        assert wait_until(
            lambda: sum("a scrape shows one worker's" in line for line in gunicorn.stderr) == 2
        ), gunicorn.output()


def test_with_preload_only_the_workers_report_gauges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app made in gunicorn's master (preload_app) leaves no gauges of the master's in the sums."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # preload_app: set before gunicorn starts
    with Gunicorn(APP, "--preload", workers=2, threads=5) as gunicorn:
        url = f"http://127.0.0.1:{gunicorn.port}/metrics"

        def pids() -> set[str]:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            return set(re.findall(r'wsthreads_sessions_limit\{pid="(\d+)"\}', text))

        assert wait_until(lambda: pids() == workers(gunicorn)), (pids(), workers(gunicorn))
        assert str(gunicorn.proc.pid) not in pids()
