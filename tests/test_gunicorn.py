"""create_app() unchanged under gunicorn's threaded worker, end to end."""

from __future__ import annotations

import ast
import atexit
import contextlib
import json
import os
import re
import resource
import runpy
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
import websocket
from helpers import (
    OP_CLOSE,
    OP_TEXT,
    ROOT,
    Program,
    RawPeer,
    assert_stop_closes_sessions,
    close_payload,
    encode_frame,
    run_client,
    wait_until,
)
from helpers import websocket_client as connect

from wsthreads.serving import HANDSHAKE_TIMEOUT
from wsthreads.settings import SWITCH_INTERVAL

#: gunicorn.conf.py's settings, as gunicorn reads them.
SHIPPED = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
#: gunicorn's options for it: the config file, a free port, our directory for the app's module.
CONFIG = ("-c", str(ROOT / "gunicorn.conf.py"), "-b", "127.0.0.1:0", "--chdir", str(ROOT))
#: A WebSocket opening handshake, written by hand.
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Gunicorn(Program):
    """``gunicorn -c gunicorn.conf.py 'sync_server:create_app(...)'`` on a free port, every worker ready.

    ``workers``, ``threads`` and ``overrides`` (options) override the
    config file's settings on the command line. ``with`` kills it at the end.
    """

    def __init__(
        self, app: str, *overrides: str, workers: int | None = None, threads: int | None = None
    ) -> None:
        options = [*CONFIG, *overrides]
        if workers:
            options += ["-w", str(workers)]
        if threads:
            options += ["--threads", str(threads)]
        super().__init__("gunicorn", *options, app)
        self.workers: int = workers or SHIPPED["workers"]
        try:
            match = self.wait_for(r"Listening at: https?://127\.0\.0\.1:(\d+)", stream="stderr")
            ready = wait_until(lambda: sum("worker ready" in line for line in self.stderr) >= self.workers)
            assert ready, f"not every worker got ready:\n{self.output()}"
        except BaseException:
            self.kill()
            raise
        self.port = int(match.group(1))
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    def __enter__(self) -> Gunicorn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def problems(self) -> list[str]:
        return [
            line for line in self.stderr if re.search(r"ERROR|Traceback|Error handling|Socket error", line)
        ]


@pytest.fixture
def gunicorn() -> Iterator[Callable[[str], Gunicorn]]:
    servers: list[Gunicorn] = []

    def start(app: str) -> Gunicorn:
        servers.append(Gunicorn(app))
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


@pytest.mark.slow
def test_demo_session_under_gunicorn(gunicorn: Callable[[str], Gunicorn]) -> None:
    """Our client and the app under gunicorn: all messages, 1000, no error logged."""
    server = gunicorn("sync_server:create_app(count=3, interval=0.05)")
    client = run_client("--url", server.url, "--count", "3", "--interval", "0.05", "--linger", "0.5")
    assert client.returncode == 0, client.stderr
    assert re.findall(r"received: (.*)", client.stdout) == [f"server message {i} of 3" for i in range(1, 4)]
    server.wait_for(r"peer closed the connection: 1000", stream="stderr")
    assert server.problems() == []


@pytest.mark.slow
def test_no_bytes_after_the_close_under_gunicorn(gunicorn: Callable[[str], Gunicorn]) -> None:
    """gunicorn writes no HTTP response behind the close frame, and closes the connection."""
    server = gunicorn("sync_server:create_app(count=1)")
    peer = RawPeer(server.port)
    assert peer.read_frame() == (OP_TEXT, b"server message 1 of 1")
    peer.send(OP_CLOSE, close_payload(1000))
    _, payload = peer.read_until_close()
    assert payload[:2] == b"\x03\xe8"
    assert peer.rest_until_eof() == b""
    assert server.problems() == []


@pytest.mark.slow
def test_frames_pipelined_behind_the_handshake_are_not_lost_under_gunicorn(
    gunicorn: Callable[[str], Gunicorn],
) -> None:
    """Frames in the same write as the request, which gunicorn read ahead, are still heard, in order."""
    server = gunicorn("sync_server:create_app(echo=True)")
    peer = RawPeer(
        server.port, pipelined=encode_frame(OP_TEXT, b"early bird") + encode_frame(OP_TEXT, b"second")
    )
    assert [peer.read_frame(), peer.read_frame()] == [(OP_TEXT, b"early bird"), (OP_TEXT, b"second")]
    assert server.problems() == []


@pytest.mark.slow
def test_a_request_sent_after_the_connect_is_served_under_gunicorn(
    gunicorn: Callable[[str], Gunicorn],
) -> None:
    """A client that connects and only then writes its request: gthread waits for it, then the 101.

    (One that sent it with the connect is served without that wait: every other test here.)
    """
    server = gunicorn("sync_server:create_app(echo=True)")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        time.sleep(0.5)
        sock.sendall(UPGRADE)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
    assert server.problems() == []


@pytest.mark.slow
def test_silent_clients_hold_no_thread_under_gunicorn_and_are_served_when_they_speak() -> None:
    """100 clients connect and say nothing: they wait in gthread's poller, not in our request threads
    (gthread would hold a thread for each up to 5 s; a stall then starts one for each waiting), so
    the worker keeps a few threads; a client behind them is served; those that speak 3 s later
    (beyond gthread's own wait in its poller, keepalive's 2 s) get their 101."""
    from wsthreads.pool import REQUEST_THREADS

    app = "sync_server:create_app(echo=True, netpoller=True)"
    with Gunicorn(app, workers=1, threads=300) as server:
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(100)]
        try:
            client = connect(server.url)
            client.send("hello")
            assert client.recv() == "hello"
            client.close()
            time.sleep(3)
            (worker,) = re.findall(r"Booting worker with pid: (\d+)", "\n".join(server.stderr))
            status = Path(f"/proc/{worker}/status").read_text()
            threads = int(re.findall(r"Threads:\s+(\d+)", status)[0])
            assert threads <= REQUEST_THREADS + 10, threads  # + main, deadlines, the netpoller's
            for sock in silent[:20]:
                sock.sendall(UPGRADE)
            for sock in silent[:20]:
                assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        finally:
            for sock in silent:
                sock.close()
        assert server.problems() == []


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_half_requests_hold_gunicorns_threads_no_longer_than_the_handshake_timeout(
    tmp_path: Path, tls: bool
) -> None:
    """gthread reads a request with no deadline: two clients that send half of one (or drip it)
    would hold both threads for ever. Our worker cuts them at HANDSHAKE_TIMEOUT, and the next
    client gets its 101."""
    options: list[str] = []
    context = None
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
        options = ["--certfile", str(tmp_path / "server.pem"), "--keyfile", str(tmp_path / "server.pem")]
        context = ssl.create_default_context()
        ca.configure_trust(context)
    request = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    def dial() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=HANDSHAKE_TIMEOUT + 10)
        return context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock

    def drip(sock: socket.socket, stop: threading.Event) -> None:
        """A byte every 300 ms: each read returns, the whole request never ends."""
        with contextlib.suppress(OSError):
            for byte in request:
                sock.sendall(bytes([byte]))
                if stop.wait(0.3):
                    return

    with Gunicorn("sync_server:create_app(echo=True)", *options, workers=1, threads=2) as server:
        half, dripping = dial(), dial()
        half.sendall(request[:40])
        stop = threading.Event()
        dripper = threading.Thread(target=drip, args=(dripping, stop), name="dripper")
        dripper.start()
        started = time.monotonic()
        time.sleep(0.5)
        client = dial()
        client.sendall(request)
        assert client.recv(4096).startswith(b"HTTP/1.1 101 ")
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT + 5
        stop.set()
        dripper.join()
        for cut in (half, dripping):
            with contextlib.suppress(OSError):  # a TLS peer may see a reset instead of the end
                assert cut.recv(4096) == b""
            cut.close()
        client.close()
        assert server.problems() == []


@pytest.mark.slow
def test_compression_under_gunicorn_inflates_a_frame_it_read_ahead(
    gunicorn: Callable[[str], Gunicorn],
) -> None:
    """permessage-deflate agreed under gunicorn; a compressed frame in the request's write is inflated."""
    server = gunicorn("sync_server:create_app(echo=True, compression='deflate')")
    text = b"early bird " * 50
    deflate = zlib.compressobj(6, zlib.DEFLATED, -12)
    payload = (deflate.compress(text) + deflate.flush(zlib.Z_SYNC_FLUSH))[:-4]
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    peer = RawPeer(server.port, headers=offer, pipelined=encode_frame(OP_TEXT, payload, rsv=4))
    assert b"permessage-deflate; server_max_window_bits=12; client_max_window_bits=12" in peer.response_head
    opcode, echoed = peer.read_frame()
    assert opcode == OP_TEXT and zlib.decompressobj(-12).decompress(echoed + b"\x00\x00\xff\xff") == text
    assert len(echoed) < len(text) // 5
    assert server.problems() == []


@pytest.mark.slow
def test_an_upgrade_with_a_body_is_refused_under_gunicorn(gunicorn: Callable[[str], Gunicorn]) -> None:
    """gunicorn's read-ahead holds the body too: it is refused (400), never read as frames."""
    server = gunicorn("sync_server:create_app(echo=True)")
    body = encode_frame(OP_TEXT, b"BODY")
    head = (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(b"a WebSocket handshake has no body\n")
    assert server.problems() == []


@pytest.mark.slow
def test_16_mib_message_under_gunicorn(gunicorn: Callable[[str], Gunicorn]) -> None:
    server = gunicorn("sync_server:create_app(echo=True, max_message_size=33554432)")
    data = os.urandom(16 << 20)
    ws = connect(server.url)
    try:
        ws.send_binary(data)
        assert ws.recv_data()[1] == data
    finally:
        ws.close()
    assert server.problems() == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_gunicorn_stop_closes_sessions_with_1001(gunicorn: Callable[[str], Gunicorn], signum: int) -> None:
    """A graceful (SIGTERM) or quick (Ctrl+C) stop of gunicorn: clients see 1001, gunicorn exits 0."""
    server = gunicorn("sync_server:create_app(count=1000, interval=5)")
    assert_stop_closes_sessions(server, server.url, signum, within=5.0)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_gunicorn_stop_closes_parked_sessions_with_1001(
    gunicorn: Callable[[str], Gunicorn], signum: int
) -> None:
    """A session that has sent its one message is parked in the netpoller: its request is over,
    and the stop still waits for its close (1001) before the worker exits."""
    server = gunicorn("sync_server:create_app(count=1, interval=0, netpoller=True)")
    assert_stop_closes_sessions(server, server.url, signum, within=5.0, first="server message 1 of 1")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_gunicorn_stop_does_not_wait_for_clients_still_sending_their_requests(signum: int) -> None:
    """A silent client, one that sent a byte and one that sent half its request, then a stop:
    they are cut at once, not at their handshake deadline (10 s), and the session gets its 1001."""
    with Gunicorn("sync_server:create_app(count=1000, interval=5)", workers=1, threads=20) as server:
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
        try:
            slow[1].sendall(b"G")
            slow[2].sendall(UPGRADE[:40])
            assert_stop_closes_sessions(server, server.url, signum, within=5.0)
        finally:
            for sock in slow:
                sock.close()


@pytest.mark.slow
def test_clients_that_keep_their_end_open_after_a_page_do_not_stall_the_worker() -> None:
    """8 clients get a page (GET /) and never close: gthread closed each in its main loop, waiting
    up to 2 s for the client's end and accepting nothing meanwhile (the next client waited 14 s);
    each is closed in its request thread, and the next client is served at once."""
    with Gunicorn("sync_server:create_app(echo=True, netpoller=True)", workers=1, threads=20) as server:
        pages = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(8)]
        try:
            for sock in pages:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            for sock in pages:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
            started = time.monotonic()
            client = connect(server.url)
            client.send("hello")
            assert client.recv() == "hello"
            client.close()
            assert time.monotonic() - started < 2.0  # one client's wait at most, not eight
        finally:
            for sock in pages:
                sock.close()
        assert server.problems() == []


@pytest.mark.slow
def test_silent_clients_hold_a_workers_places_until_their_deadline_and_no_longer() -> None:
    """1 worker x 5 threads: 5 clients that connect and say nothing take its 5 places (each may yet
    become a session that keeps a thread), though no thread; their deadline (10 s) frees them, and
    the client behind them is served then, not after gthread's own waits."""
    with Gunicorn("sync_server:create_app(echo=True)", workers=1, threads=5) as server:
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(5)]
        try:
            time.sleep(0.5)  # each has had its turn in a thread, and gone back to gthread's poller
            started = time.monotonic()
            client = websocket.create_connection(server.url, timeout=HANDSHAKE_TIMEOUT + 5)
            client.send("hello")
            assert client.recv() == "hello"
            client.close()
            assert time.monotonic() - started < HANDSHAKE_TIMEOUT + 2
            for sock in silent:
                assert sock.recv(1) == b"", "cut at its deadline"
        finally:
            for sock in silent:
                sock.close()
        assert server.problems() == []


@pytest.mark.slow
def test_workers_trace_with_the_environment_variable(
    gunicorn: Callable[[str], Gunicorn], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WSTHREADS_TRACE=FILE: every worker writes FILE with its pid, valid, with the session's lanes."""
    monkeypatch.setenv("WSTHREADS_TRACE", str(tmp_path / "trace.json"))
    server = gunicorn("sync_server:create_app(count=2, interval=0.05)")
    client = run_client("--url", server.url, "--count", "2", "--interval", "0.05", "--linger", "0.5")
    assert client.returncode == 0, client.stderr
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    files = sorted(tmp_path.glob("trace.*.json"))
    assert len(files) == 2  # one per worker
    events = [e for f in files for e in json.loads(f.read_text())["traceEvents"]]
    names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    sent = [e["args"]["text"] for e in events if e["name"] == "sent message"]
    assert sent == ["server message 1 of 2", "server message 2 of 2"] and any(
        n.startswith("conn-") for n in names
    )


def test_the_shipped_config_listens_with_the_systems_largest_backlog() -> None:
    from wsthreads.serving import listen_backlog

    assert SHIPPED["backlog"] == listen_backlog() >= 1024


def test_our_worker_sets_the_switch_interval_for_its_process(tmp_path: Path) -> None:
    """The worker owns its process: it sets the interval measured for thousands of threads."""
    (tmp_path / "switch_app.py").write_text(
        "import sys, wsthreads\n"
        "app = wsthreads.create_app(handler=lambda conn: conn.send(repr(sys.getswitchinterval())))\n"
    )
    with Gunicorn("switch_app:app", "--pythonpath", str(tmp_path), workers=1) as server:
        client = connect(server.url)
        try:
            assert float(client.recv()) == pytest.approx(SWITCH_INTERVAL)
        finally:
            client.close()


@pytest.mark.slow
def test_our_worker_raises_its_open_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    """A descriptor per session: the worker, owning its process, lifts the soft limit as Go does."""
    (tmp_path / "limit_app.py").write_text(
        "import resource, wsthreads\n"
        "limit = lambda: resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "app = wsthreads.create_app(handler=lambda conn: conn.send(repr(limit())))\n"
    )
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, ours[1]))  # what gunicorn inherits
    try:
        server = Gunicorn("limit_app:app", "--pythonpath", str(tmp_path), workers=1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, ours)
    with server:
        client = connect(server.url)
        try:
            soft, hard = ast.literal_eval(client.recv())
            assert soft == hard > 512
        finally:
            client.close()


def test_share_metrics_makes_a_directory_for_the_run_and_removes_a_killed_masters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsthreads import gunicorn as hooks

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    at_exit: list[Callable[[], None]] = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f"{hooks.METRICS_PREFIX}{dead.pid}"  # a master killed before its atexit
    orphan.mkdir()
    someone_elses = tmp_path / f"{hooks.METRICS_PREFIX}1"  # pid 1 is alive: left alone
    someone_elses.mkdir()
    try:
        hooks.share_metrics()
    finally:
        ours = Path(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"))
    assert ours == tmp_path / f"{hooks.METRICS_PREFIX}{os.getpid()}" and ours.is_dir()
    assert not orphan.exists() and someone_elses.exists()
    (remove,) = at_exit
    remove()
    assert not ours.exists()


def test_share_metrics_forgets_the_gauges_of_a_killed_run_in_a_directory_you_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsthreads import gunicorn as hooks

    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):
        for kind in ("gauge_liveall", "counter"):
            (tmp_path / f"{kind}_{pid}.db").write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    hooks.share_metrics()
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted(
        [f"counter_{dead.pid}.db", f"counter_{os.getpid()}.db", f"gauge_liveall_{os.getpid()}.db"]
    )


def test_the_json_logger_keeps_gunicorns_level_and_file(tmp_path: Path) -> None:
    from gunicorn.config import Config  # type: ignore[import-untyped]

    from wsthreads.gunicorn import JsonLogger

    config = Config()
    config.set("loglevel", "warning")
    config.set("errorlog", str(tmp_path / "error.log"))
    logger = JsonLogger(config)
    logger.info("not at this level")
    logger.warning("server full (%d sessions)", 10)
    (line,) = (tmp_path / "error.log").read_text().splitlines()
    assert json.loads(line)["message"] == "server full (10 sessions)"


def test_the_gthread_internals_our_worker_builds_on_are_still_there() -> None:
    """Guards gunicorn's private behaviour: what wsthreads.gunicorn.ThreadWorker overrides and reads.

    pyproject.toml pins gunicorn 27. If this fails after an upgrade, gthread
    has renamed or reshaped one of these: read its new gthread.py and move the
    override (ThreadWorker's docstring says what each one is for).
    """
    import inspect

    from gunicorn.workers import gthread  # type: ignore[import-untyped]

    source = inspect.getsource(gthread.ThreadWorker)
    for method in (
        "set_accept_enabled",
        "handle",
        "finish_request",
        "wait_for_and_dispatch_events",
        "init_process",
        "run",
        "get_thread_pool",
        "load_wsgi",
        "murder_pending",
    ):
        assert callable(getattr(gthread.ThreadWorker, method, None)), method
    for attribute in ("self._accepting", "self.nr_conns", "self.worker_connections", "self.max_keepalived"):
        assert attribute in source, attribute
    # The pool is used only through submit() and shutdown(wait=False), and its futures' results.
    assert set(re.findall(r"self\.tpool\.(\w+)", source)) == {"submit", "shutdown"}
    assert "self.tpool = self.get_thread_pool()" in source
    # handle() returning _DEFER puts the connection on the poller's pending deque, timed by conn.timeout.
    assert "result is _DEFER" in source and "self.pending_conns.append(conn)" in source
    assert "self.murder_pending()" in inspect.getsource(gthread.ThreadWorker.run)  # after each wait
    assert "conn.timeout - now" in inspect.getsource(gthread.ThreadWorker.murder_pending)
    connection = inspect.getsource(gthread.TConn)
    for attribute in ("self.initialized", "self.data_ready"):  # read and set by ThreadWorker.handle
        assert attribute in connection, attribute
