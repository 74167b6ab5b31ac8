"""Fixtures: start our server as a real subprocess, and always clean it up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import ROOT, ServerProgram, require


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


GORILLA = Path("/usr/share/gocode/src/github.com/gorilla/websocket")


@pytest.fixture(scope="session")
def go_programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Go server and client from interop/go, built once per test run."""
    require(
        shutil.which("go") and GORILLA.is_dir(),
        "Go and gorilla/websocket",
        "apt-get install -y golang-go golang-github-gorilla-websocket-dev",
    )
    out = tmp_path_factory.mktemp("go")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="")
    binaries = {}
    for name in ("server", "client"):
        binary = str(out / name)
        subprocess.run(
            ["go", "build", "-o", binary, "."],
            cwd=ROOT / "interop" / "go" / name,
            env=env,
            check=True,
            timeout=300,
        )
        binaries[name] = binary
    return binaries
