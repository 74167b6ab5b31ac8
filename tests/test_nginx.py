"""docs/deployment.md's nginx in front of gunicorn on a Unix socket, both real, end to end.

The test takes the nginx ``server`` block and the gunicorn command from the
page itself, and changes only what a test must: the port, the socket's path
and, to keep it short, the timeouts. nginx is Debian's (``.ci/run``
installs it), with its own config, logs and temporary files in the test's
directory, not daemonized, stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket
from helpers import ROOT, WAIT, Program, accepting, free_port, require, run_client, wait_until
from websockets.sync.client import connect as ws_connect

import wsthreads

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

DEPLOYMENT = ROOT / "docs" / "deployment.md"
#: nginx's read timeout in the test, and the server's ping interval below it.
READ_TIMEOUT, PING_INTERVAL = 1.5, 0.5


def page_block(language: str, holding: str) -> str:
    """The first ``language`` code block of the deployment page that holds ``holding``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", DEPLOYMENT.read_text(), re.DOTALL)
    return str(next(block for block in blocks if holding in block))


class UnixGunicorn(Program):
    """The page's gunicorn command, bound to a socket in ``folder``.

    ``settings`` go to ``create_app`` besides the page's own (its
    ``trusted_proxies``), which ``trusting=False`` leaves out.
    """

    def __init__(self, folder: Path, settings: str, trusting: bool = True) -> None:
        command = shlex.split(page_block("sh", "-b unix:"))
        self.socket_path = folder / "app.sock"
        command[command.index("-b") + 1] = f"unix:{self.socket_path}"
        command[command.index("-c") + 1] = str(ROOT / "gunicorn.conf.py")
        page_settings = command[-1].partition("create_app(")[2].removesuffix(")")
        assert page_settings == 'trusted_proxies=("unix",)', command[-1]
        command[-1] = f"sync_server:create_app({settings}{', ' + page_settings if trusting else ''})"
        super().__init__(command[0], "-w", "1", "--chdir", str(ROOT), *command[1:])
        try:
            self.wait_for(r"Listening at: unix:", stream="stderr")
            assert wait_until(lambda: any("worker ready" in line for line in self.stderr)), self.output()
        except BaseException:
            self.kill()
            raise


class Nginx(Program):
    """Debian's nginx with the page's ``server`` block, on a free port, in front of ``upstream``."""

    def __init__(self, folder: Path, upstream: Path) -> None:
        server = page_block("nginx", "upstream ")
        server = server.replace("/run/wsthreads/app.sock", str(upstream))
        self.port = free_port()
        server = server.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        timeout = f"{round(READ_TIMEOUT * 1000)}ms"
        server = re.sub(r"proxy_(read|send)_timeout 75s;", rf"proxy_\1_timeout {timeout};", server)
        # Workers run as root when the test does: else they could not reach the
        # socket in the test's private directory.
        user = "user root;" if os.geteuid() == 0 else ""
        config = folder / "nginx.conf"
        config.write_text(
            f"""{user}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
{server}
}}
"""
        )
        super().__init__(NGINX, "-c", str(config), "-p", str(folder))
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        if not wait_until(lambda: accepting(self.port, self.proc)) or self.proc.poll() is not None:
            self.kill()
            raise AssertionError(f"nginx did not listen:\n{self.output()}")

    def stop(self) -> None:
        self.signal(signal.SIGQUIT)  # nginx's graceful stop
        try:
            self.wait()
        except subprocess.TimeoutExpired:
            self.kill()


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture
def behind_nginx(tmp_path: Path) -> Iterator[tuple[UnixGunicorn, Nginx]]:
    """gunicorn on a Unix socket (echo, quick pings, trusting the socket), nginx in front."""
    require(os.path.exists(NGINX), "nginx", "apt-get install nginx")
    app = UnixGunicorn(tmp_path, f'echo=True, ping_interval={PING_INTERVAL}, trusted_proxies=("unix",)')
    try:
        proxy = Nginx(tmp_path, app.socket_path)
        try:
            yield app, proxy
        finally:
            proxy.stop()
    finally:
        app.kill()


def dial_from(address: str, url: str, *headers: str) -> websocket.WebSocket:
    """A websocket-client connection to ``url`` from the local ``address`` (any of 127.0.0.0/8)."""
    sock = socket.socket()
    sock.bind((address, 0))
    sock.settimeout(WAIT)
    host, port = url.split("/")[2].split(":")
    sock.connect((host, int(port)))
    return websocket.create_connection(url, socket=sock, timeout=WAIT, header=list(headers))


def test_the_app_sees_the_clients_address_not_the_proxys(behind_nginx: tuple[UnixGunicorn, Nginx]) -> None:
    """From the trusted socket, X-Forwarded-For's rightmost untrusted address; a client's own is ignored."""
    app, proxy = behind_nginx
    ws = dial_from("127.0.0.5", proxy.url, "X-Forwarded-For: 6.6.6.6")
    try:
        ws.send("hello")
        assert ws.recv() == "hello"
    finally:
        ws.close()
    app.wait_for(r"connected: 127\.0\.0\.5 \(forwarded\)", stream="stderr")
    assert not any("6.6.6.6" in line for line in app.stderr)


def test_without_trusted_proxies_the_address_is_the_proxys(tmp_path: Path) -> None:
    require(os.path.exists(NGINX), "nginx", "apt-get install nginx")
    app = UnixGunicorn(tmp_path, "echo=True", trusting=False)
    try:
        proxy = Nginx(tmp_path, app.socket_path)
        try:
            ws = dial_from("127.0.0.5", proxy.url)
            ws.close()
            app.wait_for(r"connected: a Unix socket$", stream="stderr")
        finally:
            proxy.stop()
    finally:
        app.kill()


def test_a_session_idle_past_the_proxys_read_timeout_stays_up(
    behind_nginx: tuple[UnixGunicorn, Nginx],
) -> None:
    """Quiet for twice nginx's proxy_read_timeout: our pings keep it up, and it still echoes."""
    _, proxy = behind_nginx
    with wsthreads.WebSocketClient(proxy.url) as client:
        time.sleep(2 * READ_TIMEOUT)
        client.send("still here")
        assert client.recv(timeout=WAIT) == "still here"


def test_sigterm_of_gunicorn_reaches_the_client_as_1001(behind_nginx: tuple[UnixGunicorn, Nginx]) -> None:
    app, proxy = behind_nginx
    with wsthreads.WebSocketClient(proxy.url) as client:
        client.send("hi")
        assert client.recv(timeout=WAIT) == "hi"
        app.signal(signal.SIGTERM)
        with pytest.raises(wsthreads.Closed) as closed:
            client.recv(timeout=WAIT)
        assert closed.value.code == 1001
    assert app.wait() == 0


def test_the_client_dials_gunicorns_unix_socket_itself(tmp_path: Path) -> None:
    """--unix-socket: a whole session of the demo client, the URL giving Host and path."""
    app = UnixGunicorn(tmp_path, "count=2, interval=0.05", trusting=False)
    try:
        result = run_client(
            "--url",
            "ws://localhost/ws",
            "--unix-socket",
            str(app.socket_path),
            "--count",
            "2",
            "--linger",
            "0.5",
        )
        assert result.returncode == 0, result.stderr
        assert "received: server message 2 of 2" in result.stdout
        app.wait_for(r"connected: a Unix socket$", stream="stderr")
        app.wait_for(r"received: client message 2 of 2", stream="stderr")
    finally:
        app.kill()


def test_a_unix_socket_that_is_not_there_or_not_listening_is_one_line(tmp_path: Path) -> None:
    plain_file = tmp_path / "not-a-socket"
    plain_file.write_text("")
    forged = tmp_path / "a\nFAKE: line"
    for path, problem in (
        (tmp_path / "missing.sock", f"no Unix socket at {tmp_path / 'missing.sock'}"),
        (plain_file, f"nothing listens on {plain_file}"),
        (forged, f"no Unix socket at {str(forged)!r}"),  # escaped: one line
    ):
        result = run_client("--url", "ws://localhost/ws", "--unix-socket", str(path))
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"sync_client.py: error: cannot connect to ws://localhost/ws: {problem} (is the server running?)"
        ]


def test_a_limit_per_address_applies_to_the_real_client_behind_nginx(tmp_path: Path) -> None:
    """One session per address: each client behind the proxy gets its own, not one for all of them."""
    require(os.path.exists(NGINX), "nginx", "apt-get install nginx")
    app = UnixGunicorn(tmp_path, "echo=True, max_sessions_per_address=1")
    try:
        proxy = Nginx(tmp_path, app.socket_path)
        try:
            first = dial_from("127.0.0.5", proxy.url)
            second = dial_from("127.0.0.6", proxy.url, "X-Forwarded-For: 127.0.0.5")  # a forged one, ignored
            try:
                with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                    dial_from("127.0.0.5", proxy.url)
                assert refused.value.status_code == 429
                assert (refused.value.resp_headers or {}).get("retry-after") == "5"
                second.send("still here")
                assert second.recv() == "still here"
            finally:
                first.close()
                second.close()
        finally:
            proxy.stop()
    finally:
        app.kill()


def test_compression_is_agreed_through_nginx(tmp_path: Path) -> None:
    """nginx passes the offer and the answer through: a websockets client and our server compress."""
    require(os.path.exists(NGINX), "nginx", "apt-get install nginx")
    app = UnixGunicorn(tmp_path, "echo=True, compression='deflate'")
    try:
        proxy = Nginx(tmp_path, app.socket_path)
        try:
            with ws_connect(proxy.url, compression="deflate") as ws:
                assert ws.response is not None
                assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
                message = json.dumps({"quotes": [{"symbol": "ACME", "bid": n} for n in range(300)]})
                ws.send(message)
                assert ws.recv(timeout=WAIT) == message
        finally:
            proxy.stop()
    finally:
        app.kill()
    app.wait_for(r"connected: .* \(permessage-deflate\)", stream="stderr")
