"""The examples run as documented: a legacy batch job and a server with its own handler."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT, Program

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README


def test_progress_client_against_shout_server() -> None:
    """The batch job reports all its progress; the handler answers each report in capitals."""
    server = Program(str(ROOT / "examples" / "shout_server.py"), "0")
    try:
        url = server.wait_for(r"listening on (ws://\S+)").group(1)
        job = subprocess.run(
            [sys.executable, "examples/progress_client.py", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert job.returncode == 0, job.stderr
        assert "server says: hello! I shout back whatever you say" in job.stdout
        server.wait_for(r"received: progress 100%")
        server.wait_for(r"received: done")
        server.wait_for(r"peer closed the connection: 1000")
    finally:
        server.signal()
        assert server.wait() == 0


def test_progress_client_without_a_server_is_one_line() -> None:
    job = subprocess.run(
        [sys.executable, "examples/progress_client.py", "ws://127.0.0.1:9/ws"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 1
    assert len(job.stderr.strip().splitlines()) == 1 and "connection refused" in job.stderr
