"""Fixtures: start our server (and Redis) as real subprocesses, and always clean them up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import REDIS_SERVER, ROOT, WAIT, RedisServer, ServerProgram, require, with_query

import wsthreads

# The client takes its proxy from the environment, as curl does; the tests talk to servers on
# loopback and set a proxy themselves where they test one (tests/test_proxy.py).
for variable in ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy"):
    os.environ.pop(variable, None)
    os.environ.pop(variable.upper(), None)


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
    for name in ("server", "client", "push"):
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


#: A Redis the broker tests may use (CI starts one, see .ci/run); without it they start their own.
REDIS_URL_VARIABLE = "WSTHREADS_REDIS_URL"


def require_redis_server() -> None:
    """Skip (fail with WSTHREADS_REQUIRE_PEERS=1) a test that needs Debian's redis-server."""
    require(os.access(REDIS_SERVER, os.X_OK), "Redis (redis-server)", "apt-get install -y redis-server")


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a running Redis: $WSTHREADS_REDIS_URL, else a private one for the whole run."""
    url = os.environ.get(REDIS_URL_VARIABLE)
    if url:
        yield url
        return
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    """A broker URL with a stream of this test's own (``?stream=NAME``): no test sees another's
    messages. The stream is deleted at the end."""
    stream = f"wsthreads-test-{uuid.uuid4().hex[:12]}"
    yield with_query(redis_base_url, stream=stream)
    import redis

    try:
        with redis.Redis.from_url(redis_base_url, socket_timeout=WAIT) as client:
            client.delete(stream)
    except redis.RedisError:
        pass  # a test that stopped this Redis leaves nothing to clean


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a private ``redis-server`` on a free port (``persistent=True``: with an append-only
    file, so its data survives a stop and a start on the same port); killed at the end."""
    require_redis_server()
    servers: list[RedisServer] = []

    def start(*, persistent: bool = False) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        servers.append(RedisServer(directory, persistent=persistent))
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def serve() -> Iterator[Callable[..., wsthreads.RunningServer]]:
    """Start ``create_app(**settings)`` on a free port; shut down at the end."""
    servers: list[wsthreads.RunningServer] = []

    def start(**settings: Any) -> wsthreads.RunningServer:
        server = wsthreads.start_server(wsthreads.create_app(**settings), "127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
