"""The naive ports of the article (examples/minimal_*.py) do what the article's programs do."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, WAIT, Program, free_port

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

SERVER = str(ROOT / "examples" / "minimal_server.py")
CLIENT = str(ROOT / "examples" / "minimal_client.py")

#: Short, but one interval is each side's margin between the other's last message and its close.
INTERVAL = "0.2"


def test_minimal_client_and_server_exchange_five_messages_each() -> None:
    server = Program(SERVER, "--port", str(free_port()), "--interval", INTERVAL)
    try:
        url = server.wait_for(r"listening on (ws://\S+)").group(1)
        client = subprocess.run(
            [sys.executable, CLIENT, "--url", url, "--interval", INTERVAL],
            capture_output=True,
            text=True,
            encoding="utf-8",
            cwd=ROOT,
            timeout=30,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONIOENCODING="utf-8"),
        )
        assert client.returncode == 0, client.stdout + client.stderr
        for i in range(1, 6):
            assert f"received: server message {i} of 5" in client.stdout.splitlines(), client.stdout
        for i in range(1, 6):
            server.wait_for(rf"^received: client message {i} of 5$", timeout=WAIT)
    finally:
        server.kill()
