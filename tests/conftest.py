"""Fixtures: start our server as a real subprocess, and always clean it up."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import ServerProgram


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProgram]]:
    """Start ``sync_server.py --port 0`` with extra options; killed at the end."""
    servers: list[ServerProgram] = []

    def start(*args: str) -> ServerProgram:
        server = ServerProgram(*args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
