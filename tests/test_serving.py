"""wsthreads.serving and the process-wide settings: the listen backlog, the GIL's switch interval."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, WAIT

import wsthreads
from wsthreads.serving import SOMAXCONN_PATH, listen_backlog
from wsthreads.settings import SWITCH_INTERVAL


def listening_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port``, as the kernel has it (``ss``'s Send-Q)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[2])


@pytest.mark.skipif(not Path(SOMAXCONN_PATH).exists(), reason="no somaxconn on this system")
def test_the_server_listens_with_the_systems_largest_backlog() -> None:
    """A burst of connects up to the kernel's limit waits in the queue, none has its SYN dropped."""
    somaxconn = int(Path(SOMAXCONN_PATH).read_text())
    assert listen_backlog() == max(somaxconn, 1024)
    with wsthreads.start_server(wsthreads.create_app(), port=0) as server:
        assert listening_backlog(server.port) == max(somaxconn, 1024)


def test_the_library_leaves_the_switch_interval_alone() -> None:
    before = sys.getswitchinterval()
    server = wsthreads.start_server(wsthreads.create_app(echo=True), port=0)
    with server, wsthreads.WebSocketClient(server.url) as client:
        client.send("hello")
        assert client.recv(WAIT) == "hello"
    assert sys.getswitchinterval() == before


def test_the_server_program_sets_the_switch_interval_for_its_process() -> None:
    """sync_server.py owns its process: it sets the interval measured for thousands of threads."""
    probe = (
        "import os, signal, sys, threading, runpy; sys.argv = ['sync_server.py', '--port', '0'];"
        "threading.Timer(0.5, lambda: (print('interval', sys.getswitchinterval(), flush=True),"
        " os.kill(os.getpid(), signal.SIGINT))).start();"
        "runpy.run_path('sync_server.py', run_name='__main__')"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=WAIT
    )
    interval = re.search(r"interval (\S+)", run.stdout)
    assert interval is not None, run.stdout + run.stderr
    assert float(interval.group(1)) == pytest.approx(SWITCH_INTERVAL) != sys.getswitchinterval()
