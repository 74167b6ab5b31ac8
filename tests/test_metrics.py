"""The Prometheus metrics (wsthreads/metrics.py), scraped over HTTP from a real server.

The metrics are the process's: every test reads what changed while it ran.
(tests/test_prometheus.py has a real Prometheus scrape two gunicorn workers.)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket
from helpers import SERVER, ServerProgram, close_payload, encode_frame, open_client, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_broadcast import stuck_connection

import wsthreads
from wsthreads.metrics import MISSING

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, path: str = "/metrics") -> Samples:
    """Every sample the server's metrics path shows, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Scrapes:
    """What a server's metrics say now, less what they said when this was made."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.before = scrape(port)

    def change(self, name: str, **labels: str) -> float:
        return value(scrape(self.port), name, **labels) - value(self.before, name, **labels)


@pytest.fixture
def metered(serve: Callable[..., wsthreads.RunningServer]) -> Callable[..., wsthreads.RunningServer]:
    """``serve`` with metrics at /metrics."""

    def start(**settings: Any) -> wsthreads.RunningServer:
        return serve(metrics_path="/metrics", **settings)

    return start


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for client in made:
        client.close()


@pytest.mark.slow
def test_sessions_open_and_how_they_ended_by_code_and_closer(
    metered: Callable[..., wsthreads.RunningServer], clients: list[Any]
) -> None:
    server = metered(echo=True)
    scrapes = Scrapes(server.port)
    clients += [websocket.create_connection(server.url, timeout=5) for _ in range(3)]
    assert wait_until(lambda: len(server.app.connections()) == 3)
    assert scrapes.change("wsthreads_sessions_open") == 3
    assert scrapes.change("wsthreads_sessions_opened_total") == 3
    assert scrapes.change("wsthreads_handshake_seconds_count") == 3

    clients[0].close()  # 1000, the client first
    raw = open_client(server.port)
    raw.close()  # no close frame: 1006
    assert wait_until(lambda: len(server.app.connections()) == 2)
    server.app.connections()[0].close(4000, "bye")  # the server first, an application's code
    assert wait_until(lambda: len(server.app.connections()) == 1)
    assert wait_until(lambda: scrapes.change("wsthreads_sessions_open") == 1)
    assert scrapes.change("wsthreads_sessions_ended_total", code="1000", closed_by="client") == 1
    assert scrapes.change("wsthreads_sessions_ended_total", code="1006", closed_by="nobody") == 1
    assert scrapes.change("wsthreads_sessions_ended_total", code="4xxx", closed_by="server") == 1


def test_refusals_by_status_and_reason(metered: Callable[..., wsthreads.RunningServer]) -> None:
    def authenticate(request: wsthreads.Request) -> str | None:
        return "ann" if request.headers.get("Authorization") == "Bearer good" else None

    server = metered(authenticate=authenticate, max_connections=1)
    scrapes = Scrapes(server.port)
    for path in ("/nowhere", "/ws"):  # 404, and 400: a plain GET on the endpoint
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5)
    with pytest.raises(websocket.WebSocketBadStatusException):  # 401
        websocket.create_connection(server.url, timeout=5)
    with pytest.raises(websocket.WebSocketBadStatusException):  # 403: a foreign origin
        websocket.create_connection(server.url, timeout=5, origin="https://evil.example")
    good = websocket.create_connection(server.url, timeout=5, header=["Authorization: Bearer good"])
    try:
        with pytest.raises(websocket.WebSocketBadStatusException):  # 503: max_connections is 1
            websocket.create_connection(server.url, timeout=5, header=["Authorization: Bearer good"])
    finally:
        good.close()
    assert scrapes.change("wsthreads_refusals_total", status="404", reason="no-such-path") == 1
    assert scrapes.change("wsthreads_refusals_total", status="400", reason="not-an-upgrade") == 1
    assert scrapes.change("wsthreads_refusals_total", status="401", reason="authenticate") == 1
    assert scrapes.change("wsthreads_refusals_total", status="403", reason="origin") == 1
    assert scrapes.change("wsthreads_refusals_total", status="503", reason="server-full") == 1


def test_messages_and_bytes_each_way(
    metered: Callable[..., wsthreads.RunningServer], clients: list[Any]
) -> None:
    server = metered(echo=True)
    scrapes = Scrapes(server.port)
    client = websocket.create_connection(server.url, timeout=5)
    clients.append(client)
    for i in range(10):
        client.send("x" * 100)
        assert client.recv() == "x" * 100, i
    # Counted by the scrape itself, without waiting for the sweep, while the session is open.
    assert scrapes.change("wsthreads_messages_total", direction="in") == 10
    assert scrapes.change("wsthreads_messages_total", direction="out") == 10
    assert scrapes.change("wsthreads_bytes_total", direction="in") == 10 * (100 + 2 + 4)  # masked
    assert scrapes.change("wsthreads_bytes_total", direction="out") == 10 * (100 + 2)
    client.close()
    assert wait_until(lambda: not server.app.connections())
    assert scrapes.change("wsthreads_messages_total", direction="in") == 10  # nothing counted twice


@pytest.mark.slow
def test_broadcast_and_publish_deliveries_and_their_latency(
    metered: Callable[..., wsthreads.RunningServer], clients: list[Any]
) -> None:
    pubsub = wsthreads.PubSub(wsthreads.MemoryBroker())
    server = metered(extensions=[pubsub])
    scrapes = Scrapes(server.port)
    clients += [websocket.create_connection(server.url + "?topic=news", timeout=5) for _ in range(2)]
    for client in clients:
        assert '"subscribed"' in client.recv()  # the note that opens a subscription
    clients.append(websocket.create_connection(server.url, timeout=5))
    assert wait_until(lambda: len(server.app.connections()) == 3)
    assert server.app.broadcast("to all") == 3
    pubsub.publish("news", "to subscribers")
    for client in clients[:2]:
        received = [client.recv(), client.recv()]
        assert "to all" in received and any('"to subscribers"' in text for text in received)
    # Counted once the writes return (the deliveries, then the latency): a client may read first.
    assert wait_until(lambda: scrapes.change("wsthreads_publish_delivery_seconds_count") == 1)
    assert scrapes.change("wsthreads_deliveries_total", kind="publish") == 2
    assert scrapes.change("wsthreads_deliveries_total", kind="broadcast") == 3
    assert scrapes.change("wsthreads_publish_delivery_seconds_bucket", le="+Inf") == 1


@pytest.mark.slow
def test_slow_clients_dropped_by_policy() -> None:
    app = wsthreads.create_app(outbound_limit=64 * 1024, ping_interval=None, metrics_path="/metrics")
    with wsthreads.start_server(app, "127.0.0.1", 0) as server:
        scrapes = Scrapes(server.port)
        stuck = open_client(server.port, receive_buffer=4096)
        try:
            conn = stuck_connection(server, stuck, set())
            for _ in range(100):
                app.broadcast(b"x" * 1024)
            assert conn.done.wait(conn.close_timeout + 2.0)
            assert wait_until(
                lambda: scrapes.change("wsthreads_slow_clients_dropped_total", policy="close") == 1
            )
            assert scrapes.change("wsthreads_sessions_ended_total", code="1006", closed_by="nobody") == 1
        finally:
            stuck.close()


@pytest.mark.slow
def test_a_client_that_stops_reading_counts_as_a_write_deadline_drop() -> None:
    app = wsthreads.create_app(write_timeout=0.5, ping_interval=None, metrics_path="/metrics")
    with wsthreads.start_server(app, "127.0.0.1", 0) as server:
        scrapes = Scrapes(server.port)
        stuck = open_client(server.port, receive_buffer=4096)
        try:
            assert wait_until(lambda: len(app.connections()) == 1)
            (conn,) = app.connections()
            with pytest.raises(wsthreads.Closed):
                conn.send(b"\0" * (8 << 20))
            assert wait_until(
                lambda: scrapes.change("wsthreads_slow_clients_dropped_total", policy="write-deadline") == 1
            )
        finally:
            stuck.close()


def test_messages_dropped_under_drop_oldest() -> None:
    app = wsthreads.create_app(
        outbound_limit=10 * 1024, on_overflow="drop-oldest", ping_interval=None, metrics_path="/metrics"
    )
    with wsthreads.start_server(app, "127.0.0.1", 0) as server:
        scrapes = Scrapes(server.port)
        slow = open_client(server.port)
        try:
            conn = stuck_connection(server, slow, set(), filler=32 << 20)
            for i in range(100):
                app.broadcast(f"{i:04d}".ljust(1024, "."))
            assert conn.messages_dropped >= 90
            assert (
                scrapes.change("wsthreads_messages_dropped_total", policy="drop-oldest")
                == conn.messages_dropped
            )
        finally:
            slow.close()


def test_a_scrape_while_sessions_come_and_go_is_consistent(
    metered: Callable[..., wsthreads.RunningServer],
) -> None:
    server = metered(echo=True)
    scrapes = Scrapes(server.port)
    stop = threading.Event()
    failures: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                client = websocket.create_connection(server.url, timeout=5)
                client.send("hi")
                client.recv()
                client.close()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=churn, name=f"churn-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            samples = scrape(server.port)  # never an error while sessions open and close
            assert value(samples, "wsthreads_sessions_open") >= 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not failures
    assert wait_until(lambda: not server.app.connections())
    opened = scrapes.change("wsthreads_sessions_opened_total")
    assert opened > 0
    assert scrapes.change("wsthreads_sessions_open") == 0
    ended = sum(
        v - value(scrapes.before, name, **dict(labels))
        for (name, labels), v in scrape(server.port).items()
        if name == "wsthreads_sessions_ended_total"
    )
    assert ended == opened
    assert scrapes.change("wsthreads_messages_total", direction="in") == opened


def test_the_path_serves_head_openmetrics_and_through_a_mount(
    metered: Callable[..., wsthreads.RunningServer],
) -> None:
    server = metered()
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5) as response:
        assert response.status == 200 and response.read() == b""
    request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().rstrip().endswith(b"# EOF")

    def other(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the other app"]

    app = wsthreads.create_app(metrics_path="/ops/metrics")
    with wsthreads.start_server(app.mount(other), "127.0.0.1", 0) as mounted:
        assert "wsthreads_sessions_open" in {name for name, _ in scrape(mounted.port, "/ops/metrics")}
        with urllib.request.urlopen(f"http://127.0.0.1:{mounted.port}/metrics", timeout=5) as response:
            assert response.read() == b"the other app"


def test_without_metrics_the_path_is_not_served(serve: Callable[..., wsthreads.RunningServer]) -> None:
    server = serve()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    assert refused.value.code == 404


@pytest.mark.parametrize("path", ["metrics", "/ws", "/", "/a b", "/a//b"])
def test_a_bad_metrics_path_is_one_line(path: str) -> None:
    with pytest.raises(ValueError, match="the metrics path must be") as error:
        wsthreads.create_app(metrics_path=path)
    assert "\n" not in str(error.value)


def test_without_prometheus_client_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError) as error:
        wsthreads.create_app(metrics_path="/metrics")
    assert str(error.value) == MISSING


def test_bytes_of_control_frames_count_too(metered: Callable[..., wsthreads.RunningServer]) -> None:
    server = metered()
    scrapes = Scrapes(server.port)
    raw = open_client(server.port)
    try:
        raw.sendall(encode_frame(0x9, b"ping", mask=True))  # a ping: 6 + 4 bytes in, its pong 2 + 4 out
        raw.sendall(encode_frame(0x8, close_payload(1000), mask=True))
        raw.settimeout(5)
        while raw.recv(1024):
            pass
    except (TimeoutError, ConnectionError):
        pass
    finally:
        raw.close()
    assert wait_until(
        lambda: scrapes.change("wsthreads_sessions_ended_total", code="1000", closed_by="client") == 1
    )
    assert scrapes.change("wsthreads_bytes_total", direction="in") == 10 + 8
    assert scrapes.change("wsthreads_bytes_total", direction="out") == 6 + 4
    assert scrapes.change("wsthreads_messages_total", direction="in") == 0


def test_the_server_program_prints_its_metrics_url(start_server: Callable[..., ServerProgram]) -> None:
    server = start_server("--metrics", "--echo")
    url = server.wait_for(r"metrics for Prometheus: (http://\S+)").group(1)
    assert url == f"http://127.0.0.1:{server.port}/metrics"
    client = websocket.create_connection(server.url, timeout=5)
    try:
        assert value(scrape(server.port), "wsthreads_sessions_open") == 1
    finally:
        client.close()


def test_the_server_program_refuses_a_metrics_path_on_the_endpoint_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, SERVER, "--port", "0", "--metrics", "/ws"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "the metrics path must be" in done.stderr, done.stderr


def test_threads_held_by_sessions_and_the_limit(metered: Callable[..., wsthreads.RunningServer]) -> None:
    def handler(conn: wsthreads.Connection) -> None:  # a handler function holds its request thread
        for message in conn:
            conn.send(message)

    server = metered(handler=handler, max_connections=50)
    client = websocket.create_connection(server.url, timeout=5)
    try:
        assert wait_until(lambda: value(scrape(server.port), "wsthreads_session_threads") == 1)
        samples = scrape(server.port)
        assert value(samples, "wsthreads_sessions_limit") == 50  # this test's app is the only one alive
        assert value(samples, "wsthreads_threads") >= 3  # main, acceptor, the session's; it varies
    finally:
        client.close()
    assert wait_until(lambda: value(scrape(server.port), "wsthreads_session_threads") == 0)


class FlakyBroker(wsthreads.MemoryBroker):
    """A broker whose reads fail the first ``failures`` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def read(self, after: str, count: int, timeout: float = 0) -> list[Any]:
        if self.failures:
            self.failures -= 1
            raise wsthreads.BrokerError("the broker is down")
        return super().read(after, count, timeout)


@pytest.mark.slow
def test_a_broker_that_answers_again_counts_as_a_reconnect(
    metered: Callable[..., wsthreads.RunningServer], clients: list[Any]
) -> None:
    server = metered(extensions=[wsthreads.PubSub(FlakyBroker(failures=2))])
    scrapes = Scrapes(server.port)
    clients.append(websocket.create_connection(server.url + "?topic=news", timeout=5))  # starts the follower
    assert '"subscribed"' in clients[0].recv()
    assert wait_until(lambda: scrapes.change("wsthreads_broker_reconnects_total") == 1)


def test_bytes_read_with_the_handshake_count_too(metered: Callable[..., wsthreads.RunningServer]) -> None:
    server = metered(echo=True)
    scrapes = Scrapes(server.port)
    frames = encode_frame(0x1, b"x" * 5) + encode_frame(0x1, b"y" * 70_000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + frames
        )
        assert wait_until(lambda: scrapes.change("wsthreads_messages_total", direction="out") == 2)
    assert scrapes.change("wsthreads_bytes_total", direction="in") == len(frames)
