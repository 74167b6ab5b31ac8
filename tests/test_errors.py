"""Every error a user can cause: one line on stderr, a non-zero status, no traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Callable

import pytest
from helpers import SERVER, Program, ServerProgram, run_client


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--count", "-1"], "--count"),
        (["--count", "many"], "--count"),
        (["--interval", "soon"], "--interval"),
        (["--interval", "nan"], "--interval"),
        (["--timeout", "0"], "--timeout"),
        (["--linger", "-2"], "--linger"),
        (["--nonsense"], "--nonsense"),
    ],
)
def test_client_bad_options(args: list[str], fragment: str) -> None:
    """Bad client options: one line, exit 2."""
    result = run_client(*args)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [(["--port", "70000"], "--port"), (["--port", "http"], "--port"), (["--count", "x"], "--count")],
)
def test_server_bad_options(args: list[str], fragment: str) -> None:
    """Bad server options: one line, exit 2."""
    server = Program(SERVER, *args)
    assert server.wait() == 2
    assert_one_line_error("\n".join(server.stderr), fragment)


def test_server_port_in_use(start_server: Callable[..., ServerProgram]) -> None:
    """A port already taken: one line naming the address, exit 1."""
    first = start_server()
    second = Program(SERVER, "--port", str(first.port))
    assert second.wait() == 1
    assert_one_line_error("\n".join(second.stderr), f"cannot listen on 127.0.0.1:{first.port}", "in use")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_client_server_unreachable() -> None:
    """Nothing listening: one line, exit 1."""
    result = run_client("--url", f"ws://127.0.0.1:{free_port()}/ws")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "connection refused")


def test_client_handshake_refused_names_the_status(start_server: Callable[..., ServerProgram]) -> None:
    """A 404 instead of 101: one line with the HTTP status."""
    server = start_server()
    result = run_client("--url", f"ws://127.0.0.1:{server.port}/nowhere")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "refused the WebSocket handshake", "404")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for sock in accepted:
        sock.close()
    listener.close()


def test_client_handshake_timeout(silent_server: int) -> None:
    """TCP accepted but no handshake answer: one line after --timeout, exit 1."""
    result = run_client("--url", f"ws://127.0.0.1:{silent_server}/ws", "--timeout", "0.5")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "no answer", "0.5 s")


@pytest.mark.parametrize("url", ["not a url", "http://127.0.0.1:1/ws", "ws://", "ws://127.0.0.1:notaport/ws"])
def test_client_malformed_url(url: str) -> None:
    """A URL that is not ws:// or wss://: one line naming it, exit 1."""
    result = run_client("--url", url)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, url)


def test_client_unknown_host() -> None:
    """A host name that does not resolve: one line, exit 1."""
    result = run_client("--url", "ws://no-such-host.invalid/ws", "--timeout", "2")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "no-such-host.invalid")
