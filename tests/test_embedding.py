"""The client object for legacy code: callbacks or a queue, send() from any thread, reconnect."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import pytest
from helpers import (
    CLIENT,
    OP_CLOSE,
    OP_TEXT,
    Program,
    RawPeer,
    ServerProgram,
    close_payload,
    encode_frame,
    wait_until,
)

from wsthreads import (
    ConnectError,
    Connection,
    Message,
    NotConnected,
    WebSocketClient,
    create_app,
    start_server,
)


def drain(messages: queue.Queue[Message], count: int) -> list[Message]:
    return [messages.get(timeout=10) for _ in range(count)]


@pytest.fixture
def client_threads() -> Callable[[], set[str]]:
    """The names of client threads started during this test and still alive."""
    before = set(threading.enumerate())

    def alive() -> set[str]:
        return {t.name for t in set(threading.enumerate()) - before if t.name in ("reader", "supervisor")}

    return alive


def test_send_from_8_threads_and_receive_through_the_queue(
    start_server: Callable[..., ServerProgram], client_threads: Callable[[], set[str]]
) -> None:
    """8 threads share one client; every echo lands in client.messages."""
    server = start_server("--echo", "--quiet")
    with WebSocketClient(server.url) as client:

        def worker(n: int) -> None:
            for i in range(50):
                client.send(f"worker {n} step {i}")

        workers = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        got = drain(client.messages, 400)
    assert sorted(got) == sorted(f"worker {n} step {i}" for n in range(8) for i in range(50))
    assert wait_until(lambda: not client_threads())


def test_on_message_callback_runs_in_the_reader_thread(start_server: Callable[..., ServerProgram]) -> None:
    server = start_server("--count", "2", "--interval", "0")
    seen: list[tuple[str, Message]] = []
    with WebSocketClient(server.url, on_message=lambda m: seen.append((threading.current_thread().name, m))):
        assert wait_until(lambda: len(seen) == 2)
    assert seen == [("reader", "server message 1 of 2"), ("reader", "server message 2 of 2")]


def test_close_is_idempotent_and_send_after_close_raises(
    start_server: Callable[..., ServerProgram], client_threads: Callable[[], set[str]]
) -> None:
    server = start_server("--echo")
    client = WebSocketClient(server.url).connect()
    client.close()
    client.close()
    assert not client.connected
    with pytest.raises(NotConnected):
        client.send("too late")
    server.wait_for(r"peer closed the connection: 1000")
    assert wait_until(lambda: not client_threads())


def test_first_connect_failure_raises_connect_error() -> None:
    with pytest.raises(ConnectError, match="connection refused"), WebSocketClient("ws://127.0.0.1:9/ws"):
        pass


def test_without_reconnect_a_server_shutdown_ends_the_client(
    start_server: Callable[..., ServerProgram], client_threads: Callable[[], set[str]]
) -> None:
    """Without reconnect, the server's 1001 ends the client: send() raises, threads end."""
    server = start_server("--echo")
    client = WebSocketClient(server.url).connect()
    server.signal()
    assert server.wait() == 0
    assert wait_until(lambda: not client.connected)
    with pytest.raises(NotConnected):
        client.send("nobody there")
    assert wait_until(lambda: not client_threads())
    client.close()


@pytest.mark.slow
def test_reconnects_to_a_server_that_restarts(
    start_server: Callable[..., ServerProgram], client_threads: Callable[[], set[str]]
) -> None:
    """The server goes away (1001) and comes back on the same port: the client follows."""
    first = start_server("--echo")
    client = WebSocketClient(first.url, reconnect=True, backoff=(0.05, 0.2)).connect()
    try:
        client.send("before")
        assert client.messages.get(timeout=10) == "before"

        first.signal()
        assert first.wait() == 0
        assert wait_until(lambda: not client.connected)
        with pytest.raises(NotConnected):
            client.send("while down")

        second = start_server("--echo", "--port", str(first.port))
        assert wait_until(lambda: client.connected)
        client.send("after")
        assert client.messages.get(timeout=10) == "after"
        second.wait_for("received: after")
    finally:
        client.close()
    assert wait_until(lambda: not client_threads())


@pytest.mark.slow
def test_cli_reconnect_follows_a_restarting_server(start_server: Callable[..., ServerProgram]) -> None:
    """sync_client.py --reconnect: after the server's 1001 it dials again and starts a new session."""
    first = start_server("--count", "1000", "--interval", "5")
    client = Program(CLIENT, "--url", first.url, "--count", "1000", "--interval", "5", "--reconnect")
    try:
        client.wait_for(r"received: server message 1 of 1000")
        first.signal()
        assert first.wait() == 0
        client.wait_for(r"peer closed the connection: 1001")
        second = start_server("--count", "1000", "--interval", "5", "--port", str(first.port))
        assert wait_until(lambda: client.count_lines(r"received: server message 1 of 1000") == 2)
        second.wait_for(r"received: client message 1 of 1000")
    finally:
        client.signal()
        assert client.wait() == 0, client.output()
    second.wait_for(r"peer closed the connection: 1000")


class ReplyingHandler:
    """Answers every message and records it; its replies fail once the peer is closing."""

    def __init__(self) -> None:
        self.seen: list[Message] = []

    def run(self, session: Connection) -> None:
        pass

    def on_message(self, session: Connection, message: Message) -> None:
        self.seen.append(message)
        session.send(f"got {message!r}")


@pytest.mark.slow
def test_messages_arriving_with_the_close_frame_are_all_delivered() -> None:
    """Messages and the close frame in one write: every message reaches the handler even though
    its replies can no longer be sent, and the close is answered with 1000."""
    handler = ReplyingHandler()
    with start_server(create_app(handler=handler, ping_interval=None), "127.0.0.1", 0) as server:
        peer = RawPeer(server.port)
        burst = b"".join(encode_frame(OP_TEXT, f"message {i}".encode()) for i in range(3))
        peer.sock.sendall(burst + encode_frame(OP_CLOSE, close_payload(1000)))
        assert peer.close_code() == 1000
        assert wait_until(lambda: len(handler.seen) == 3)
    assert handler.seen == ["message 0", "message 1", "message 2"]
