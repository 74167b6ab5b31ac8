"""Every error a user can cause: one line on stderr, a non-zero status, no traceback."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest
from helpers import SERVER, Program, ServerProgram, free_port, run_client, wait_until


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
@pytest.mark.slow
def test_client_bad_options(args: list[str], fragment: str) -> None:
    """Bad client options: one line, exit 2."""
    result = run_client(*args)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [(["--port", "70000"], "--port"), (["--port", "http"], "--port"), (["--count", "x"], "--count")],
)
@pytest.mark.slow
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


def test_a_refusing_server_cannot_forge_lines_in_the_client_output() -> None:
    """The server's status phrase and body line are its words: printed escaped, on one line."""
    from helpers import RawServer

    body = b"\x1b[1A\x1b[2K12:00:00.000 [reader] FORGED\n"
    answer = (
        b"HTTP/1.1 503 \x1b[2K\rService Unavailable\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    server = RawServer(lambda sock: None, answer=answer)
    try:
        result = run_client("--url", server.url)
    finally:
        server.close()
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "refused the WebSocket handshake", "503", r"\x1b[2K\rService")
    assert "\x1b" not in result.stderr and "\r" not in result.stderr


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


@pytest.mark.slow
def test_client_handshake_timeout(silent_server: int) -> None:
    """TCP accepted but no handshake answer: one line after --timeout, exit 1."""
    result = run_client("--url", f"ws://127.0.0.1:{silent_server}/ws", "--timeout", "0.5")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "no answer", "0.5 s")


@pytest.mark.parametrize("url", ["not a url", "http://127.0.0.1:1/ws", "ws://", "ws://127.0.0.1:notaport/ws"])
@pytest.mark.slow
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


@pytest.mark.parametrize("path", ["", "/", "/nowhere"])
@pytest.mark.slow
def test_an_upgrade_on_another_path_gets_404_naming_the_endpoint(
    start_server: Callable[..., ServerProgram], path: str
) -> None:
    """ws://HOST:PORT (the page's path) or any other path: 404, and the client prints the server's reason."""
    server = start_server()
    result = run_client("--url", f"ws://127.0.0.1:{server.port}{path}")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "HTTP 404 Not Found: no such path; the WebSocket endpoint is /ws")


def test_a_url_without_ws_scheme_says_what_is_expected() -> None:
    result = run_client("--url", "localhost:8080/ws")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "expected ws://HOST:PORT/PATH")


def test_server_prints_the_page_address_beside_the_websocket_url(
    start_server: Callable[..., ServerProgram],
) -> None:
    server = start_server()
    server.wait_for(
        rf"listening on ws://127\.0\.0\.1:{server.port}/ws \(the browser page: http://127\.0\.0\.1:{server.port}/\)"
    )


def test_refused_requests_whose_client_resets_leave_no_descriptor_behind(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Werkzeug's body-draining selector used to stay open until garbage collection."""
    server = start_server()
    fds = server.fds()
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        sock.recv(1)  # the 400 has begun: reset while the server drains the body
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    assert wait_until(lambda: server.fds() <= fds, timeout=5), (server.fds(), fds)
