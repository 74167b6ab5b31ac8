"""The client through a real HTTP proxy (Debian's tinyproxy), and through hostile ones.

tinyproxy runs with its own config in the test's directory, on a free port,
in the foreground, and is stopped at the end. ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from helpers import CLIENT, Program, ServerProgram, accepting, free_port, require, run_client, wait_until

import wsthreads
from wsthreads.proxy import Proxy, ProxyError, bypassed, open_tunnel, proxy_for

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
        if not wait_until(lambda: accepting(self.port, self.proc)):
            self.kill()
            raise AssertionError(f"tinyproxy did not listen:\n{self.output()}")

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


@pytest.mark.slow
def test_a_session_through_the_proxy(
    start_server: Callable[..., ServerProgram], tinyproxy: Tinyproxy
) -> None:
    server = start_server("--count", "2", "--interval", "0.05")
    result = run_client("--url", server.url, "--proxy", tinyproxy.url, "--count", "2", "--linger", "0.5")
    assert result.returncode == 0, result.stderr
    assert "received: server message 2 of 2" in result.stdout
    assert wait_until(lambda: tinyproxy.tunnels() == 1), tinyproxy.output()


@pytest.mark.slow
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


@pytest.mark.slow
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
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return  # the client gave up at its deadline, as it should: nobody to drip to
                self.stop.wait(30)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.mark.parametrize("drip", [True, False], ids=["drips", "silent"])
@pytest.mark.slow
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


def test_a_proxy_silent_past_the_sockets_own_timeout_is_named_as_the_one_that_did_not_answer() -> None:
    """The dial's deadline reaches a silent proxy two ways, the deadline thread's cut or the
    socket's timeout, whichever comes first (on a loaded machine, either): both name the proxy."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        proxy = Proxy("127.0.0.1", listener.getsockname()[1], None)
        with (
            socket.create_connection(("127.0.0.1", proxy.port), timeout=0.2) as sock,
            pytest.raises(ProxyError, match="did not answer CONNECT in time") as silent,
        ):
            open_tunnel(sock, proxy, "example.invalid", 80)
    assert silent.value.retryable


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("ftp://proxy:21", "proxy URL 'ftp://proxy:21': scheme 'ftp' is not supported (http:// only)"),
        (
            "socks5://proxy:1080",
            "proxy URL 'socks5://proxy:1080': scheme 'socks5' is not supported (http:// only)",
        ),
        ("http://user:pw@[bad", "malformed proxy URL 'http://[bad': expected http://HOST:PORT"),
        (
            "http://user:hunter2/x@host:port",
            "malformed proxy URL 'http://host:port': expected http://HOST:PORT",
        ),
        ("http://", "malformed proxy URL 'http://': no host (e.g. http://proxy.example:3128)"),
        (
            "https://u:p@proxy:3128",
            "proxy URL 'https://proxy:3128': scheme 'https' is not supported (http:// only)",
        ),
    ],
)
@pytest.mark.slow
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


#: What a proxy that speaks first after its 200 gets.
AFTER = "sent bytes after its answer to CONNECT, before the server could speak"


class ScriptedProxy:
    """A proxy that records the CONNECT it gets and answers with ``answer``, then ``then``."""

    def __init__(self, answer: bytes, then: str = "wait") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.answer, self.then = answer, then
        self.request = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, name="scripted-proxy", daemon=True)
        self.thread.start()

    def serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
            with conn:
                while b"\r\n\r\n" not in self.request:
                    self.request += conn.recv(4096)
                conn.sendall(self.answer)
                if self.then == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if self.then == "close":
                    return
                self.stop.wait(10)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.mark.parametrize(
    ("answer", "then", "problem"),
    [
        (
            b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-surprise\r\n",
            "wait",
            "sent bytes after its answer to CONNECT, before the server could speak",
        ),
        (b"HTTP/1.1 \xb200 OK\r\n\r\n", "wait", "answered CONNECT with 'HTTP/1.1 \u00b200 OK'"),
        (b"HTTP/1.1 2 OK\r\n\r\n", "wait", "answered CONNECT with 'HTTP/1.1 2 OK'"),
        (b"HTTP/1.1 200", "reset", "reset the connection before answering"),
        (b"HTTP/1.1 200", "close", "closed the connection before answering"),
    ],
)
def test_a_proxy_that_breaks_the_protocol_is_named_in_one_line(
    answer: bytes, then: str, problem: str
) -> None:
    proxy = ScriptedProxy(answer, then)
    try:
        with pytest.raises(wsthreads.ConnectError) as failed:
            wsthreads.dial("ws://example.com/ws", wsthreads.ClientConfig(proxy=proxy.url, timeout=3))
    finally:
        proxy.close()
    assert str(failed.value) == f"the proxy http://127.0.0.1:{proxy.port} {problem}"


def test_the_tunnel_asks_for_a_non_ascii_host_in_its_ascii_form() -> None:
    proxy = ScriptedProxy(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
    try:
        with pytest.raises(wsthreads.ConnectError) as failed:
            wsthreads.dial("ws://BÜCHER.example/ws", wsthreads.ClientConfig(proxy=proxy.url, timeout=3))
    finally:
        proxy.close()
    assert proxy.request.startswith(b"CONNECT xn--bcher-kva.example:80 HTTP/1.1\r\n")
    assert "refused the tunnel to xn--bcher-kva.example:80: HTTP 502 Bad Gateway" in str(failed.value)
    assert failed.value.retryable


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2/x@127.0.0.1:9",
        "http://al@ice:p/a%ss@127.0.0.1:9",
        "http://user:se?cret@127.0.0.1:9",
        "user:hunter2@127.0.0.1:9",
    ],
)
@pytest.mark.slow
def test_a_proxys_credentials_are_never_shown(url: str) -> None:
    """Passwords with '/', '?', '@' or no scheme at all: not in the error, not in a repr."""
    result = run_client("--url", "ws://example.com/ws", "--proxy", url, "--timeout", "2")
    assert result.returncode == 1
    refused = "cannot connect to the proxy http://127.0.0.1:9: connection refused (is the server running?)"
    assert result.stderr.splitlines() == [f"sync_client.py: error: {refused}"]
    config = wsthreads.ClientConfig(proxy=url)
    assert "hunter2" not in repr(config) and "cret" not in repr(config)
    assert "with credentials" in repr(Proxy.parse(url))
