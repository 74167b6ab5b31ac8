"""The client through a real HTTP proxy (Debian's tinyproxy), and through hostile ones.

tinyproxy runs with its own config in the test's directory, on a free port,
in the foreground, and is stopped at the end. ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from helpers import CLIENT, Program, ServerProgram, free_port, require, run_client, wait_until

import wsthreads
from wsthreads.proxy import Proxy, bypassed, proxy_for

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


class Tinyproxy(Program):
    """tinyproxy on a free port, asking for Basic credentials user:secret."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        config = folder / "tinyproxy.conf"
        config.write_text(
            f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\n"
            "BasicAuth user secret\nLogLevel Connect\nMaxClients 50\n"
        )
        super().__init__(TINYPROXY, "-d", "-c", str(config))
        self.url = f"http://user:secret@127.0.0.1:{self.port}"
        if not wait_until(self.listening):
            self.kill()
            raise AssertionError(f"tinyproxy did not listen:\n{self.output()}")

    def listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return self.proc.poll() is not None

    def tunnels(self) -> int:
        """The CONNECT requests it has logged."""
        return sum("CONNECT" in line and "Request" in line for line in self.stdout + self.stderr)


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    require(os.path.exists(TINYPROXY), "tinyproxy", "apt-get install tinyproxy")
    proxy = Tinyproxy(tmp_path)
    try:
        yield proxy
    finally:
        proxy.kill()


def test_a_session_through_the_proxy(
    start_server: Callable[..., ServerProgram], tinyproxy: Tinyproxy
) -> None:
    server = start_server("--count", "2", "--interval", "0.05")
    result = run_client("--url", server.url, "--proxy", tinyproxy.url, "--count", "2", "--linger", "0.5")
    assert result.returncode == 0, result.stderr
    assert "received: server message 2 of 2" in result.stdout
    assert wait_until(lambda: tinyproxy.tunnels() == 1), tinyproxy.output()


def test_wss_through_the_proxy_checks_the_servers_certificate(
    start_server: Callable[..., ServerProgram], tinyproxy: Tinyproxy, tmp_path: Path
) -> None:
    """TLS runs inside the tunnel: the certificate is checked against the server's name, not the proxy's."""
    ca = trustme.CA()
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = start_server("--certfile", str(tmp_path / "server.pem"), "--count", "1")
    url = f"wss://localhost:{server.port}/ws"
    dial = ("--url", url, "--proxy", tinyproxy.url, "--count", "1", "--linger", "0.3")
    good = run_client(*dial, "--cafile", str(tmp_path / "ca.pem"))
    assert good.returncode == 0, good.stderr
    assert "received: server message 1 of 1" in good.stdout
    wrong_name = run_client(
        *dial[:1], f"wss://127.0.0.1:{server.port}/ws", *dial[2:], "--cafile", str(tmp_path / "ca.pem")
    )
    assert "is not trusted" in wrong_name.stderr and "127.0.0.1" in wrong_name.stderr


def test_the_proxy_comes_from_the_environment_unless_no_proxy_names_the_host(
    start_server: Callable[..., ServerProgram], tinyproxy: Tinyproxy
) -> None:
    server = start_server("--count", "1")
    dial = [CLIENT, "--url", server.url, "--count", "1", "--linger", "0.3"]
    for environment, tunnels in (({"http_proxy": tinyproxy.url}, 1), ({"no_proxy": "127.0.0.1"}, 1)):
        os.environ.update(environment)
        try:
            client = Program(*dial)
            assert client.wait() == 0, client.output()
        finally:
            for name in environment:
                del os.environ[name]
        assert wait_until(lambda: tinyproxy.tunnels() == tunnels)  # noqa: B023
    # both set: no_proxy wins, and the proxy sees no second tunnel
    os.environ.update({"http_proxy": tinyproxy.url, "no_proxy": "localhost,127.0.0.1"})
    try:
        client = Program(*dial)
        assert client.wait() == 0, client.output()
    finally:
        del os.environ["http_proxy"], os.environ["no_proxy"]
    time.sleep(0.2)
    assert tinyproxy.tunnels() == 1


def test_a_refusing_proxy_is_one_line_naming_it_and_its_status(
    start_server: Callable[..., ServerProgram], tinyproxy: Tinyproxy
) -> None:
    server = start_server("--count", "1")
    wrong = tinyproxy.url.replace("secret", "guess")
    refused = run_client("--url", server.url, "--proxy", wrong, "--reconnect")
    assert refused.returncode == 1  # not retried, though --reconnect
    assert refused.stderr.splitlines() == [
        f"sync_client.py: error: the proxy http://127.0.0.1:{tinyproxy.port} refused the tunnel to"
        f" 127.0.0.1:{server.port}: HTTP 401 Unauthorized"
    ]
    assert "guess" not in refused.stderr + refused.stdout  # credentials never printed
    with pytest.raises(wsthreads.ConnectError) as down:
        wsthreads.dial(f"ws://127.0.0.1:{free_port()}/ws", wsthreads.ClientConfig(proxy=tinyproxy.url))
    assert "refused the tunnel" in str(down.value) and down.value.retryable  # the server may come back


class HostileProxy:
    """A proxy that accepts and then drips its answer (a byte every 300 ms) or says nothing."""

    def __init__(self, drip: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.drip = drip
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, name="hostile-proxy", daemon=True)
        self.thread.start()

    def serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
            with conn:
                for byte in b"HTTP/1.1 200 Connection established\r\n\r\n" if self.drip else b"":
                    if self.stop.wait(0.3):
                        return
                    conn.sendall(bytes([byte]))
                self.stop.wait(30)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.mark.parametrize("drip", [True, False], ids=["drips", "silent"])
def test_a_proxy_that_drips_or_never_answers_is_cut_at_the_dial_deadline(drip: bool) -> None:
    proxy = HostileProxy(drip)
    try:
        started = time.monotonic()
        result = run_client("--url", "ws://example.invalid/ws", "--proxy", proxy.url, "--timeout", "1.5")
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sync_client.py: error: no answer from the proxy {proxy.url} within 1.5 s"
    ]
    assert took < 1.5 + 3  # the deadline, and a Python start-up


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("ftp://proxy:21", "proxy URL 'ftp://proxy:21': scheme 'ftp' is not supported (http:// only)"),
        (
            "socks5://proxy:1080",
            "proxy URL 'socks5://proxy:1080': scheme 'socks5' is not supported (http:// only)",
        ),
        ("http://user:pw@[bad", "malformed proxy URL 'http://[bad': Invalid IPv6 URL"),
        ("http://", "malformed proxy URL 'http://': no host (e.g. http://proxy.example:3128)"),
        ("proxy:3128", "proxy URL 'proxy:3128': scheme 'proxy' is not supported (http:// only)"),
    ],
)
def test_a_bad_proxy_url_is_one_line_before_any_dial(setting: str, message: str) -> None:
    result = run_client("--proxy", setting)
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        [f"sync_client.py: error: {message} (see --help)"],
    )


def test_which_proxy_a_dial_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ws_proxy", "wss_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert proxy_for(True, "example.com", 80, False) is None
    monkeypatch.setenv("http_proxy", "http://plain:3128")
    monkeypatch.setenv("https_proxy", "http://u:p%40ss@secure:3129")
    assert proxy_for(True, "example.com", 80, False) == Proxy("plain", 3128, None)
    secure = proxy_for(True, "example.com", 443, True)
    assert secure is not None and (secure.host, secure.port, str(secure)) == (
        "secure",
        3129,
        "http://secure:3129",
    )
    assert secure.credentials == "dTpwQHNz"  # base64 of u:p@ss
    monkeypatch.setenv("no_proxy", ".example.com,10.0.0.0/8")
    assert proxy_for(True, "www.example.com", 443, True) is None
    assert proxy_for(True, "10.1.2.3", 80, False) is None
    assert proxy_for(None, "elsewhere.org", 80, False) is None
    assert proxy_for("http://chosen:8080", "www.example.com", 80, False) == Proxy("chosen", 8080, None)
    assert bypassed("example.com", 443, "example.com:443") and not bypassed(
        "example.com", 80, "example.com:443"
    )
