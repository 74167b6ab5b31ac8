"""Another Python stack as a peer: the ``websockets`` package's threading API, both ways."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Iterator

import pytest
from helpers import ServerProgram, run_client, wait_until
from helpers import websocket_client as connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import Server, ServerConnection, serve

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

BIG = 1 << 20


class PeerServer:
    """A websockets server on port 0 running ``handler``, recording what it received."""

    def __init__(self, handler: Callable[[ServerConnection], None]) -> None:
        self.received: list[str | bytes] = []
        self.close_codes: list[int | None] = []
        self.server: Server = serve(self._wrap(handler), "127.0.0.1", 0, ping_interval=0.2)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/ws"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _wrap(self, handler: Callable[[ServerConnection], None]) -> Callable[[ServerConnection], None]:
        def run(ws: ServerConnection) -> None:
            try:
                handler(ws)
                for message in ws:  # until the client closes
                    self.received.append(message)
            except ConnectionClosed:
                pass
            self.close_codes.append(ws.close_code)

        return run

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def peer_server() -> Iterator[Callable[[Callable[[ServerConnection], None]], PeerServer]]:
    servers: list[PeerServer] = []

    def start(handler: Callable[[ServerConnection], None]) -> PeerServer:
        servers.append(PeerServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_our_client_with_a_websockets_server(peer_server: Callable[..., PeerServer]) -> None:
    """sync_client.py and a websockets server see each other's messages in order; 1000.

    The server also sends a fragmented message and pings every 0.2 s (which
    our client must answer, or websockets would close with 1011).
    """

    def demo(ws: ServerConnection) -> None:
        for i in range(1, 4):
            ws.send(f"websockets message {i} of 3")
        ws.send(iter(["frag", "mented ", "message"]))

    server = peer_server(demo)
    client = run_client("--url", server.url, "--count", "3", "--interval", "0.3", "--linger", "0.5")
    assert client.returncode == 0, client.stderr
    got = re.findall(r"received: (.*)", client.stdout)
    assert got == [f"websockets message {i} of 3" for i in range(1, 4)] + ["fragmented message"]
    assert wait_until(lambda: server.close_codes == [1000])
    assert server.received == [f"client message {i} of 3" for i in range(1, 4)]


def test_our_client_library_with_a_websockets_echo_server(peer_server: Callable[..., PeerServer]) -> None:
    """Text, binary and 1 MiB through a websockets echo server, byte for byte."""

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    server = peer_server(echo)
    ws = connect(server.url)
    try:
        ws.send("text")
        assert ws.recv() == "text"
        data = os.urandom(BIG - 100)  # websockets' default max_size is 1 MiB
        ws.send_binary(data)
        assert ws.recv() == data
    finally:
        ws.close()


def test_websockets_client_with_our_server(start_server: Callable[..., ServerProgram]) -> None:
    """A websockets client gets all our messages in order; our server gets its messages; 1000."""
    server = start_server("--count", "3", "--interval", "0.05")
    with ws_connect(server.url) as ws:
        got = [ws.recv(timeout=10) for _ in range(3)]
        for i in range(1, 4):
            ws.send(f"websockets client message {i} of 3")
    assert got == [f"server message {i} of 3" for i in range(1, 4)]
    assert ws.close_code == 1000
    server.wait_for(r"peer closed the connection: 1000")
    texts = [m for line in server.stdout if (m := re.search(r"received: (.*)", line))]
    assert [m.group(1) for m in texts] == [f"websockets client message {i} of 3" for i in range(1, 4)]


def test_websockets_client_fragments_pings_and_1_mib_echo(start_server: Callable[..., ServerProgram]) -> None:
    """Fragmented messages, pings and a 1 MiB binary message from websockets, through our echo server."""
    server = start_server("--echo", "--max-message-size", str(2 * BIG))
    with ws_connect(server.url, max_size=2 * BIG) as ws:
        ws.send(iter(["a", "b", "c"]))
        assert ws.recv(timeout=10) == "abc"
        ws.send(iter([b"\x00\x01", b"\x02"]))
        assert ws.recv(timeout=10) == b"\x00\x01\x02"
        assert ws.ping(b"hello").wait(10)
        data = os.urandom(BIG)
        ws.send(data)
        assert ws.recv(timeout=10) == data
    assert ws.close_code == 1000


def test_websockets_client_sees_1001_when_our_server_shuts_down(
    start_server: Callable[..., ServerProgram],
) -> None:
    server = start_server("--count", "100", "--interval", "5")
    with ws_connect(server.url) as ws:
        assert ws.recv(timeout=10) == "server message 1 of 100"
        server.signal(signal.SIGINT)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")
    assert server.wait() == 0
