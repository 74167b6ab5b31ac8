"""The Go original as a peer: our client with the Go server, the Go client with our server.

The Go programs in interop/go are the article's two programs (gorilla/websocket),
with flags. These tests are the proof that the Python programs are drop-in
replacements for them.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from collections.abc import Callable, Iterator

import pytest
from helpers import OP_BINARY, Program, ServerProgram, run_client
from helpers import websocket_client as connect

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

BIG = 1 << 20


class GoServer(Program):
    def __init__(self, binary: str, *args: str) -> None:
        super().__init__(binary, "-addr", "127.0.0.1:0", *args)
        self.url = self.wait_for(r"listening on (ws://\S+)").group(1)


@pytest.fixture
def go_server(go_programs: dict[str, str]) -> Iterator[Callable[..., GoServer]]:
    servers: list[GoServer] = []

    def start(*args: str) -> GoServer:
        servers.append(GoServer(go_programs["server"], *args))
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


def received(lines: list[str] | str) -> list[str]:
    text = lines if isinstance(lines, str) else "\n".join(lines)
    return re.findall(r"received: (.*)", text)


def test_our_client_with_the_go_server(go_server: Callable[..., GoServer]) -> None:
    """sync_client.py and the Go server each see all of the other's messages, in order; 1000."""
    server = go_server("-count", "3", "-interval", "50ms")
    client = run_client("--url", server.url, "--count", "3", "--interval", "0.05", "--linger", "0.5")
    assert client.returncode == 0, client.stderr
    assert received(client.stdout) == [f"go server message {i} of 3" for i in range(1, 4)]
    server.wait_for(r"closed: 1000")
    assert received(server.stdout) == [f"client message {i} of 3" for i in range(1, 4)]


def test_go_client_with_our_server(
    go_programs: dict[str, str], start_server: Callable[..., ServerProgram]
) -> None:
    """The Go client and sync_server.py each see all of the other's messages, in order; 1000."""
    server = start_server("--count", "3", "--interval", "0.05")
    client = Program(
        go_programs["client"], "-url", server.url, "-count", "3", "-interval", "50ms", "-linger", "500ms"
    )
    assert client.wait() == 0, client.output()
    assert received(client.stdout) == [f"server message {i} of 3" for i in range(1, 4)]
    client.wait_for(r"closed: 1000")
    server.wait_for(r"peer closed the connection: 1000")
    assert received(server.stdout) == [f"go client message {i} of 3" for i in range(1, 4)]


def test_our_client_library_with_the_go_echo_server(go_server: Callable[..., GoServer]) -> None:
    """Text stays text, binary stays binary, 1 MiB comes back byte for byte."""
    server = go_server("-echo")
    ws = connect(server.url)
    try:
        ws.send("héllo from Python")
        assert ws.recv() == "héllo from Python"
        data = os.urandom(BIG)
        ws.send_binary(data)
        assert ws.recv_data() == (OP_BINARY, data)
    finally:
        ws.close()


def test_go_client_1_mib_echo_through_our_server(
    go_programs: dict[str, str], start_server: Callable[..., ServerProgram]
) -> None:
    """The Go client's 1 MiB binary message comes back from our echo server byte for byte."""
    server = start_server("--echo", "--max-message-size", str(2 * BIG))
    client = Program(
        go_programs["client"], "-url", server.url, "-count", "1", "-big", str(BIG), "-linger", "500ms"
    )
    assert client.wait() == 0, client.output()
    digest = hashlib.sha256(bytes(i % 251 for i in range(BIG))).hexdigest()
    client.wait_for(re.escape(f"received: <binary message, {BIG} bytes, sha256 {digest}>"))
    client.wait_for("received: go client message 1 of 1")
    server.wait_for(rf"received: <binary message, {BIG} bytes>")


def test_go_client_sees_1001_when_our_server_shuts_down(
    go_programs: dict[str, str], start_server: Callable[..., ServerProgram]
) -> None:
    """Ctrl+C on our server: the Go client reports close code 1001 and its reason."""
    server = start_server("--count", "100", "--interval", "5")
    client = Program(go_programs["client"], "-url", server.url, "-count", "100", "-interval", "5s")
    client.wait_for(r"received: server message 1 of 100")
    server.signal(signal.SIGINT)
    assert server.wait() == 0
    assert client.wait() == 0
    client.wait_for(r"closed: 1001 server shutting down")


def test_go_client_and_our_server_compress_both_ways(
    go_programs: dict[str, str], start_server: Callable[..., ServerProgram]
) -> None:
    """gorilla with EnableCompression: our answer suits it (it needs both no_context_takeover
    parameters), and 1 MiB and three messages go both ways compressed."""
    server = start_server("--echo", "--compression", "--max-message-size", str(2 * BIG))
    client = Program(
        go_programs["client"],
        *("-url", server.url, "-compression", "-count", "3", "-interval", "50ms"),
        *("-big", str(BIG), "-linger", "500ms"),
    )
    assert client.wait() == 0, client.output()
    client.wait_for("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    digest = hashlib.sha256(bytes(i % 251 for i in range(BIG))).hexdigest()
    client.wait_for(re.escape(f"received: <binary message, {BIG} bytes, sha256 {digest}>"))
    texts = [text for text in received(client.stdout) if not text.startswith("<binary")]
    assert texts == [f"go client message {i} of 3" for i in range(1, 4)]
    server.wait_for(r"connected: .* \(permessage-deflate\)")


def test_our_client_and_the_go_server_compress_both_ways(go_server: Callable[..., GoServer]) -> None:
    server = go_server("-compression", "-count", "3", "-interval", "50ms")
    client = run_client(
        *("--url", server.url, "--compression", "--count", "3", "--interval", "0.05", "--linger", "0.5")
    )
    assert client.returncode == 0, client.stderr
    assert re.search(r"connected to \S+ \(permessage-deflate\)", client.stdout), client.stdout
    assert received(client.stdout) == [f"go server message {i} of 3" for i in range(1, 4)]
    server.wait_for(r"closed: 1000")
    assert received(server.stdout) == [f"client message {i} of 3" for i in range(1, 4)]
