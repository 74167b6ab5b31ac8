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

from helpers import ROOT, WAIT, ServerProgram, require


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


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Debian's headless Chromium driven by Selenium (nothing is downloaded); quit at the end."""
    require(
        shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER),
        "Chromium and ChromeDriver",
        "apt-get install -y chromium chromium-driver",
    )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=900,640",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
