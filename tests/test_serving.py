"""wsthreads.serving and the process-wide settings: the listen backlog, the GIL's switch interval."""

from __future__ import annotations

import base64
import gc
import os
import re
import resource
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import websocket
from _pytest.monkeypatch import MonkeyPatch
from helpers import ROOT, WAIT, wait_until

import wsthreads
from wsthreads import pool, serving
from wsthreads.pool import REQUEST_THREADS
from wsthreads.serving import SOMAXCONN_PATH, listen_backlog
from wsthreads.settings import SWITCH_INTERVAL


def listening_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port``, as the kernel has it (``ss``'s Send-Q)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[2])


@pytest.mark.skipif(not Path(SOMAXCONN_PATH).exists(), reason="no somaxconn on this system")
def test_the_server_listens_with_the_systems_largest_backlog() -> None:
    """A burst of connects up to the kernel's limit waits in the queue, none has its SYN dropped."""
    somaxconn = int(Path(SOMAXCONN_PATH).read_text())
    assert listen_backlog() == max(somaxconn, 1024)
    with wsthreads.start_server(wsthreads.create_app(), port=0) as server:
        assert listening_backlog(server.port) == max(somaxconn, 1024)


def test_the_library_leaves_the_switch_interval_alone() -> None:
    before = sys.getswitchinterval()
    server = wsthreads.start_server(wsthreads.create_app(echo=True), port=0)
    with server, wsthreads.WebSocketClient(server.url) as client:
        client.send("hello")
        assert client.recv(WAIT) == "hello"
    assert sys.getswitchinterval() == before


def sync_server_says(setup: str, said: str) -> str:
    """Run sync_server.py after ``setup``; once it serves (its acceptor thread runs), it prints
    ``said`` (an expression) and stops. Not after a fixed time: on a busy machine the program
    may still be importing."""
    probe = f"""
import os, resource, signal, sys, threading, time, runpy
sys.argv = ["sync_server.py", "--port", "0"]
{setup}

def say_then_stop():
    while not any(t.name == "acceptor" for t in threading.enumerate()):
        time.sleep(0.02)
    print("said", {said}, flush=True)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=say_then_stop, daemon=True).start()
runpy.run_path("sync_server.py", run_name="__main__")
"""
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=WAIT
    )
    found = re.search(r"said (.*)", run.stdout)
    assert found is not None, run.stdout + run.stderr
    return found.group(1)


@pytest.mark.slow
def test_the_server_program_sets_the_switch_interval_for_its_process() -> None:
    """sync_server.py owns its process: it sets the interval measured for thousands of threads."""
    interval = sync_server_says("pass", "sys.getswitchinterval()")
    assert float(interval) == pytest.approx(SWITCH_INTERVAL) != sys.getswitchinterval()


def test_the_library_leaves_the_open_file_limit_alone() -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    with wsthreads.start_server(wsthreads.create_app(echo=True), port=0):
        pass
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before


@pytest.mark.slow
def test_the_server_program_raises_its_open_file_limit_to_the_hard_one() -> None:
    """sync_server.py owns its process: a descriptor per session needs more than the usual 1,024."""
    lower = "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))"
    soft, hard = sync_server_says(lower, "*resource.getrlimit(resource.RLIMIT_NOFILE)").split()
    assert soft == hard


def test_too_few_descriptors_for_max_connections_is_one_line_at_start() -> None:
    """Beyond the limit accepts fail and connections wait unanswered: the operator is told at start."""
    probe = (
        "import logging, resource, wsthreads; logging.basicConfig(format='%(message)s');"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]));"
        "wsthreads.start_server(wsthreads.create_app(), port=0).shutdown();"
        "wsthreads.start_server(wsthreads.create_app(max_connections=100), port=0).shutdown()"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=WAIT
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        "max_connections is 9000, but this process may open only 256 descriptors (one per session):"
        " raise its limit (ulimit -n) or lower max_connections"
    ]


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def test_a_burst_of_handshakes_is_served_by_a_few_threads_reused(monkeypatch: MonkeyPatch) -> None:
    """300 requests at once: before, each had a thread of its own (300); now a few serve them all.

    Without the stall rule (tested apart): in a loaded test process a 0.5 s pause
    with none taken gives every waiting connection a thread, as it should.
    """
    monkeypatch.setattr(pool, "REQUEST_STALL", 60.0)
    threads: set[threading.Thread] = set()

    def authenticate(request: wsthreads.Request) -> str:
        threads.add(threading.current_thread())  # kept: a thread object is never counted twice
        return "anyone"

    app = wsthreads.create_app(echo=True, authenticate=authenticate)
    with wsthreads.start_server(app, port=0) as server:
        socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        try:
            for sock in socks:
                sock.sendall(upgrade_request(server.port))
            for sock in socks:
                sock.settimeout(WAIT)
                assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        finally:
            for sock in socks:
                sock.close()
    assert len(threads) < 150, len(threads)


@pytest.mark.slow
def test_one_client_after_another_is_served_by_the_same_idle_thread() -> None:
    """An idle request thread waits for the next connection (up to 5 s); it does not end with its queue.

    Werkzeug's ``__init__`` calls ``server_close``; when that closed the request
    threads, every connection that found the queue empty got a new thread.
    """
    threads: set[threading.Thread] = set()

    def authenticate(request: wsthreads.Request) -> str:
        threads.add(threading.current_thread())
        return "anyone"

    app = wsthreads.create_app(echo=True, authenticate=authenticate)
    with wsthreads.start_server(app, port=0) as server:
        for _ in range(10):
            client = websocket.create_connection(server.url, timeout=WAIT)
            client.close()
            time.sleep(0.05)  # the thread is back waiting before the next one comes
    assert len(threads) <= 2, threads


def test_shutdown_ends_the_requests_still_being_read_at_once() -> None:
    """Clients halfway through their request (plain and TLS) hold no thread past shutdown:
    their sockets are cut then, not at the handshake deadline (30 s here)."""
    import trustme

    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    before = set(threading.enumerate())
    servers = [
        wsthreads.start_server(wsthreads.create_app(), port=0, handshake_timeout=30),
        wsthreads.start_server(wsthreads.create_app(), port=0, handshake_timeout=30, tls_context=context),
    ]
    halfway = []
    # The start of a request, and of a ClientHello (a record of 512 bytes, 43 of them sent).
    starts = [b"GET /ws HTTP/1.1\r\nHost: x\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)]
    for server, start in zip(servers, starts, strict=True):
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(start)  # and nothing more
            halfway.append(sock)
    try:
        assert wait_until(lambda: len(request_threads(before)) == 6), request_threads(before)
        for server in servers:
            assert server.shutdown()
        assert wait_until(lambda: not request_threads(before), timeout=3), request_threads(before)
    finally:
        for sock in halfway:
            sock.close()


def test_a_request_cut_halfway_by_shutdown_never_reaches_the_app() -> None:
    """Its headers ended at the cut, not with a blank line: the mounted app must not run it."""
    calls: list[str] = []

    def page(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        calls.append(str(environ["PATH_INFO"]))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = wsthreads.start_server(wsthreads.create_app().mount(page), port=0, handshake_timeout=30)
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(b"DELETE /account HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n")  # no blank line
        time.sleep(0.3)  # a request thread is reading it
        assert server.shutdown()
        sock.settimeout(WAIT)
        assert sock.recv(100) == b""  # cut, not answered
        assert calls == []
    finally:
        sock.close()


def test_reading_cuts_what_is_read_at_close_and_what_begins_after() -> None:
    """A request that finished reading first is left alone; one still being read, or taken by a
    request thread only after the close (it raced the shutdown), is cut."""
    from wsthreads.deadlines import deadlines
    from wsthreads.serving import Reading

    pairs = [socket.socketpair() for _ in range(3)]
    try:
        reading = Reading()
        finished, pending = (deadlines.arm(ours, 60) for ours, _ in pairs[:2])
        reading.add(finished)
        reading.add(pending)
        assert reading.done(finished)  # in before the close
        reading.close()
        late = deadlines.arm(pairs[2][0], 60)
        reading.add(late)
        assert not reading.done(pending) and not reading.done(late)  # partial: not to be served
        for (_, peer), expected in zip(pairs, (None, b"", b""), strict=True):
            peer.settimeout(0.3)
            try:
                got: bytes | None = peer.recv(1)
            except TimeoutError:
                got = None
            assert got == expected
        deadlines.disarm(finished)
    finally:
        for ours, peer in pairs:
            ours.close()
            peer.close()


def request_threads(before: set[threading.Thread]) -> list[str]:
    """The request threads started since ``before`` that still run (named request-PORT while serving)."""
    return [t.name for t in threading.enumerate() if t not in before and t.name.startswith("request-")]


@pytest.mark.slow
def test_clients_that_drip_their_requests_do_not_keep_others_out() -> None:
    """Twice as many dripping clients as request threads: a client behind them still gets in at once."""
    app = wsthreads.create_app(echo=True)
    with wsthreads.start_server(app, port=0) as server:
        drips = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2 * REQUEST_THREADS)]
        try:
            for sock in drips:
                sock.sendall(
                    b"GET /ws HTTP/1.1\r\nHost: x\r\n"
                )  # and nothing more, until the deadline (10 s)
            started = time.monotonic()
            client = websocket.create_connection(server.url, timeout=5)
            client.send("hello")
            assert client.recv() == "hello"
            client.close()
            assert time.monotonic() - started < 5  # a stall or two (0.5 s each); the drips' deadline is 10 s
        finally:
            for sock in drips:
                sock.close()


@pytest.mark.slow
def test_clients_that_connect_and_say_nothing_hold_no_request_thread() -> None:
    """300 silent clients wait in the netpoller, not in request threads (before: 16 threads waited for
    them, and each stall of 0.5 s gave 300 more a thread each): a client behind them is served at
    once, no thread starts for them, and those that speak late are served too."""
    app = wsthreads.create_app(echo=True)
    before = set(threading.enumerate())
    with wsthreads.start_server(app, port=0) as server:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        try:
            client = websocket.create_connection(server.url, timeout=WAIT)
            client.send("hello")
            assert client.recv() == "hello"
            client.close()
            time.sleep(2 * pool.REQUEST_STALL)  # a stall would have started a thread for each by now
            started = [t.name for t in threading.enumerate() if t not in before]
            threads = [name for name in started if name.startswith("request")]
            assert len(threads) <= REQUEST_THREADS, threads
            late = silent[:20]
            for sock in late:
                sock.settimeout(WAIT)
                sock.sendall(upgrade_request(server.port))
            for sock in late:
                assert sock.recv(4096).startswith(b"HTTP/1.1 101 "), "a late request is served"
        finally:
            for sock in silent:
                sock.close()


def test_a_late_client_is_served_when_the_netpoller_cannot_watch_it(monkeypatch: MonkeyPatch) -> None:
    """No descriptor for the netpoller's epoll: the connection waits for its request in a thread instead."""

    class Full:
        def watch(self, *args: object) -> None:
            raise OSError(24, "Too many open files")

    monkeypatch.setattr(serving, "netpoller", Full())
    with (
        wsthreads.start_server(wsthreads.create_app(echo=True), port=0) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock,
    ):
        time.sleep(0.2)
        sock.sendall(upgrade_request(server.port))
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")


def test_clients_that_drop_mid_request_are_freed_without_the_garbage_collector() -> None:
    """Half a request, then a reset or a close; and an upgrade whose body never comes: Werkzeug
    reports the drop (connection_dropped), whose look at the frames once tied each to a cycle."""
    gc.collect()
    gc.disable()
    try:
        with wsthreads.start_server(wsthreads.create_app(echo=True), port=0) as server:
            for reset in (True, False) * 5:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
                sock.sendall(b"GET /ws HTTP/1.1\r\n" if reset else upgrade_request(server.port)[:-2] + body())
                time.sleep(0.02)
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            time.sleep(0.5)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = {type(thing).__name__ for thing in gc.garbage}
        assert not {"frame", "traceback"} & kinds, kinds
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def body() -> bytes:
    """The end of an upgrade request that announces a body, and part of the body."""
    return b"Content-Length: 100\r\n\r\nabc"


def tracebacks(things: list[object]) -> list[types.TracebackType]:
    """The innermost traceback of each chain among ``things``."""
    found = []
    for thing in things:
        if isinstance(thing, types.TracebackType):
            while thing.tb_next is not None:
                thing = thing.tb_next
            found.append(thing)
    return found


def test_ended_sessions_are_freed_without_the_garbage_collector() -> None:
    """No reference cycle per session: thousands of ended ones cost a full collection otherwise.

    Before: 23,494 objects in cycles for 200 sessions (each request's handler,
    frames and traceback, its connection, its watch), and 0.84 s of collection
    at the exit of a process that served 9,000.
    """
    from wsthreads.connection import Connection
    from wsthreads.serving import RequestHandler

    gc.collect()
    gc.disable()
    try:
        with wsthreads.start_server(wsthreads.create_app(echo=True), port=0) as server:
            clients = [websocket.create_connection(server.url, timeout=WAIT) for _ in range(20)]
            for client in clients:
                client.send("hello")
                assert client.recv() == "hello"
            for client in clients:
                client.close()
            assert wait_until(lambda: not server.app.connections())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = {type(thing).__name__ for thing in gc.garbage}
        # Where each traceback in a cycle was made: it says which code to fix (once seen with -n 4).
        made = sorted({f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" for tb in tracebacks(gc.garbage)})
        assert not {Connection.__name__, RequestHandler.__name__, "Watch", "traceback"} & kinds, (kinds, made)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_a_script_that_fails_before_shutdown_exits_instead_of_hanging(tmp_path: Path) -> None:
    """The acceptor is a daemon: nothing keeps a failed script's process alive."""
    script = tmp_path / "fails.py"
    script.write_text(
        "import wsthreads\n"
        "server = wsthreads.start_server(wsthreads.create_app(echo=True), '127.0.0.1', 0)\n"
        "raise SystemExit('the script failed before shutdown()')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert done.returncode == 1 and "the script failed before shutdown()" in done.stderr
