"""Limits per client address and per connection (wsthreads/limits.py), over real sockets.

Two client addresses on one machine: 127.0.0.1 and 127.0.0.2 (all of 127/8 is loopback).
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import websocket
from helpers import SERVER, close_payload, encode_frame, upgrade, wait_until

import wsthreads
from wsthreads.connection import DRAIN_LIMIT, READ_SIZE
from wsthreads.limits import SWEEP_AT, AddressLimits, InboundLimit, TokenBucket

OTHER = "127.0.0.2"


def refused_text(sock: socket.socket) -> str:
    """The one-line body of a refusal, read to its end."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data.decode().strip()


def test_sessions_per_address_get_429_with_retry_after_and_other_addresses_go_on(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    server = serve(echo=True, max_sessions_per_address=2, metrics_path="/metrics")
    opened = [upgrade(server.port)[2] for _ in range(2)]
    try:
        status, headers, refused = upgrade(server.port)
        assert status == "HTTP/1.1 429 Too Many Requests"
        assert headers["retry-after"] == "5"
        assert refused_text(refused) == "too many sessions from your address (limit 2)"
        refused.close()
        status, _, other = upgrade(server.port, source=OTHER)
        assert status == "HTTP/1.1 101 Switching Protocols"
        other.close()
        opened.pop().close()  # one of the first address's sessions ends: room for another
        assert wait_until(lambda: handshake_status(server.port) == "HTTP/1.1 101 Switching Protocols")
    finally:
        for sock in opened:
            sock.close()


def handshake_status(port: int) -> str:
    status, _, sock = upgrade(port)
    sock.close()
    return status


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_one_address_flooding_connections_does_not_keep_another_from_connecting_within_a_second(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    server = serve(echo=True, max_connection_rate=5)
    statuses: list[str] = []
    retry_after: set[str] = set()
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            try:
                status, headers, sock = upgrade(server.port, source=OTHER)
            except OSError:
                continue
            sock.close()
            statuses.append(status)
            if "retry-after" in headers:
                retry_after.add(headers["retry-after"])

    flooders = [threading.Thread(target=flood, name=f"flood-{i}") for i in range(8)]
    for flooder in flooders:
        flooder.start()
    try:
        assert wait_until(lambda: len(statuses) >= 200, timeout=30)
        took = []
        for _ in range(5):
            started = time.monotonic()
            client = websocket.create_connection(server.url, timeout=5)
            took.append(time.monotonic() - started)
            client.send("still here")
            assert client.recv() == "still here"
            client.close()
    finally:
        stop.set()
        for flooder in flooders:
            flooder.join(10)
    assert max(took) < 1.0, took
    refused = statuses.count("HTTP/1.1 429 Too Many Requests")
    assert refused >= len(statuses) - 20, statuses[:20]  # 5 at once, then 5 a second
    assert retry_after == {"1"}


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_a_client_flooding_messages_is_closed_with_1008_while_its_neighbours_round_trips_stay_fast(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    server = serve(echo=True, max_message_rate=100)
    neighbours = [websocket.create_connection(server.url, timeout=5) for _ in range(5)]
    flooder = websocket.create_connection(server.url, timeout=5)
    round_trips: list[float] = []
    stop = threading.Event()

    def measure() -> None:  # each neighbour well within its 100 a second: one round trip each 20 ms
        while not stop.wait(0.02):
            for client in neighbours:
                started = time.perf_counter()
                client.send("ping")
                assert client.recv() == "ping"
                round_trips.append(time.perf_counter() - started)

    def flood() -> None:  # as fast as the socket takes them, until the server has closed
        try:
            while not stop.is_set():
                flooder.send("x" * 100)
        except (websocket.WebSocketConnectionClosedException, OSError):
            pass

    measurer = threading.Thread(target=measure, name="measure")
    sender = threading.Thread(target=flood, name="flood")
    measurer.start()
    time.sleep(0.2)  # round trips before the flood, too
    sender.start()
    echoed, close = 0, None
    try:
        while close is None:  # what the flooder gets back: echoes, then the close saying why
            opcode, data = flooder.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                close = (int.from_bytes(data[:2], "big"), data[2:].decode())
            else:
                echoed += 1
        time.sleep(0.5)  # round trips after it, too
    finally:
        stop.set()
        measurer.join(10)
        sender.join(10)
        flooder.close()
    assert close == (1008, "too many messages (limit 100/s)")
    assert 100 <= echoed <= 120  # the bucket's second, and what refilled while they came
    assert len(round_trips) >= 50
    assert statistics.median(round_trips) < 0.005, statistics.median(round_trips)
    assert max(round_trips) < 0.1, max(round_trips)
    for client in neighbours:
        client.send("after")
        assert client.recv() == "after"
        client.close()


@pytest.mark.slow
def test_a_client_over_the_byte_rate_is_closed_with_1008(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    server = serve(echo=True, max_byte_rate=10_000)
    client = websocket.create_connection(server.url, timeout=5)
    client.send("x" * 8_000)  # 8,008 bytes on the wire, of the second's 10,000
    assert len(client.recv()) == 8_000
    client.send("y" * 8_000)  # the 2,000 or so left are not enough
    opcode, data = client.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert (int.from_bytes(data[:2], "big"), data[2:].decode()) == (1008, "too many bytes (limit 10000/s)")


@pytest.mark.parametrize(
    "header",
    ["X-Forwarded-For: 203.0.113.5\r\n", "Forwarded: for=203.0.113.5\r\n"],
    ids=["x-forwarded-for", "forwarded"],
)
def test_a_forged_forwarded_address_from_an_untrusted_peer_changes_nothing(
    serve: Callable[..., wsthreads.RunningServer], header: str
) -> None:
    server = serve(echo=True, max_sessions_per_address=1)
    first = upgrade(server.port)[2]
    try:
        status, _, forged = upgrade(server.port, headers=header)
        forged.close()
        assert status == "HTTP/1.1 429 Too Many Requests"  # still 127.0.0.1's second session
    finally:
        first.close()


@pytest.mark.parametrize(
    "header",
    ["X-Forwarded-For: 203.0.113.5\r\n", 'Forwarded: for="203.0.113.5:4711"\r\n'],
    ids=["x-forwarded-for", "forwarded"],
)
def test_behind_a_trusted_proxy_the_limit_is_the_forwarded_clients(
    serve: Callable[..., wsthreads.RunningServer], header: str
) -> None:
    server = serve(echo=True, max_sessions_per_address=1, trusted_proxies=("127.0.0.1",))
    first = upgrade(server.port, headers=header)[2]
    try:
        status, _, other = upgrade(server.port, headers="X-Forwarded-For: 198.51.100.7\r\n")
        other.close()
        assert status == "HTTP/1.1 101 Switching Protocols"  # another client behind the same proxy
        status, _, again = upgrade(server.port, headers=header)
        again.close()
        assert status == "HTTP/1.1 429 Too Many Requests"
    finally:
        first.close()


@pytest.mark.parametrize(
    "setting", ["max_sessions_per_address", "max_connection_rate", "max_message_rate", "max_byte_rate"]
)
@pytest.mark.parametrize("value", [0, -1, "10", True, float("nan"), float("inf"), 1e-320, 10**400])
def test_a_bad_limit_is_one_line(setting: str, value: object) -> None:
    if setting == "max_sessions_per_address" and value in (float("inf"), 10**400):
        value = 2.5  # any whole number of sessions is a limit; a fraction is not
    with pytest.raises(ValueError, match=setting) as error:
        wsthreads.create_app(**{setting: value})  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_a_token_bucket_holds_a_seconds_worth_and_a_full_one_lends() -> None:
    bucket = TokenBucket(10, now=0.0)
    assert all(bucket.take(1, 0.0) for _ in range(10))
    assert not bucket.take(1, 0.0)
    assert bucket.wait() == pytest.approx(0.1)
    assert bucket.take(1, 0.1)  # refilled one
    big = TokenBucket(10, now=0.0)
    assert big.take(25, 0.0)  # full: it lends
    assert not big.take(1, 1.0) and big.take(1, 1.6)  # in debt until 15 tokens came back


def test_inbound_limit_says_which_limit() -> None:
    limit = InboundLimit(messages_per_second=2, bytes_per_second=None)
    assert limit.messages_over() is None and limit.messages_over() is None
    assert limit.messages_over() == "too many messages (limit 2/s)"
    assert limit.bytes_over(10**9) is None  # no byte limit
    by_bytes = InboundLimit(None, 5)
    assert by_bytes.bytes_over(6) is None  # a full bucket lends
    assert by_bytes.bytes_over(1) == "too many bytes (limit 5/s)"


def raw_session(port: int) -> socket.socket:
    status, _, sock = upgrade(port)
    assert status == "HTTP/1.1 101 Switching Protocols"
    return sock


def close_of(sock: socket.socket) -> tuple[int, str]:
    """Read to the server's close frame (unmasked, short): its code and reason."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, data[-200:]
        data += chunk
        at = data.find(b"\x88")
        if at >= 0 and len(data) >= at + 2 and len(data) >= at + 2 + data[at + 1]:
            payload = data[at + 2 : at + 2 + data[at + 1]]
            return int.from_bytes(payload[:2], "big"), payload[2:].decode()


def test_a_ping_flood_counts_as_messages(serve: Callable[..., wsthreads.RunningServer]) -> None:
    server = serve(echo=True, max_message_rate=10, ping_interval=None)
    sock = raw_session(server.port)
    try:
        sock.sendall(b"".join(encode_frame(0x9, b"p" * 125) for _ in range(50)))
        assert close_of(sock) == (1008, "too many messages (limit 10/s)")
    finally:
        sock.close()


def test_an_unfinished_message_is_held_to_the_byte_rate(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    server = serve(echo=True, max_byte_rate=100_000, max_message_size=None, ping_interval=None)
    sock = raw_session(server.port)
    try:
        sock.sendall(encode_frame(0x2, b"x" * 60_000, fin=False))
        try:
            for _ in range(100):  # 6 MB of continuation that never ends the message
                sock.sendall(encode_frame(0x0, b"x" * 60_000, fin=False))
        except OSError:
            pass  # the server has closed
        assert close_of(sock) == (1008, "too many bytes (limit 100000/s)")
    finally:
        sock.close()


def test_the_address_table_forgets_idle_addresses() -> None:
    limits = AddressLimits(max_sessions=None, connection_rate=1000)
    for i in range(SWEEP_AT * 3):
        assert limits.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") is None
        limits.leave(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(limits._buckets) < 2 * SWEEP_AT  # swept as it grew: those were full again
    assert not limits._open  # every address left


@pytest.mark.slow
def test_a_flood_from_many_addresses_sweeps_the_table_rarely() -> None:
    limits = AddressLimits(max_sessions=None, connection_rate=0.001)  # nobody's bucket refills
    sweeps = 0
    sweep = limits._sweep

    def counted(now: float) -> None:
        nonlocal sweeps
        sweeps += 1
        sweep(now)

    limits._sweep = counted  # type: ignore[method-assign]
    for i in range(SWEEP_AT * 8):
        assert limits.admit(f"2001:db8:{i:x}::1") is None  # each its own /64
    assert sweeps <= 4  # at 4096, 8192, 16384 and 32768 addresses: not one per connection


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--max-sessions-per-address", "0", "must be 1 or more (leave the option out for no limit), got 0"),
        ("--max-sessions-per-address", "1.5", "not a whole number: '1.5'"),
        (
            "--max-connection-rate",
            "-2",
            "must be from 1e-06 to 1e+12 (leave the option out for no limit), got -2",
        ),
        (
            "--max-connection-rate",
            "1e-320",
            "must be from 1e-06 to 1e+12 (leave the option out for no limit)",
        ),
        ("--max-message-rate", "lots", "not a number: 'lots'"),
        (
            "--max-byte-rate",
            "1e400",
            "must be from 1e-06 to 1e+12 (leave the option out for no limit), got 1e400",
        ),
        (
            "--trusted-proxy",
            "10.0.0.300",
            "not an address, a network or 'unix' for trusted_proxies: '10.0.0.300'",
        ),
    ],
)
@pytest.mark.slow
def test_a_bad_limit_option_is_one_line_at_start(option: str, value: str, says: str) -> None:
    done = subprocess.run(
        [sys.executable, SERVER, "--port", "0", option, value], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 or (option == "--trusted-proxy" and done.returncode != 0)
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("203.0.113.7:40000", "203.0.113.7:40001"),
        ("[2001:DB8::1]:443", "2001:db8::1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
    ],
)
def test_one_address_spelled_two_ways_is_one_address(
    serve: Callable[..., wsthreads.RunningServer], first: str, second: str
) -> None:
    server = serve(echo=True, max_sessions_per_address=1, trusted_proxies=("127.0.0.1",))
    opened = upgrade(server.port, headers=f"X-Forwarded-For: {first}\r\n")[2]
    try:
        status, _, again = upgrade(server.port, headers=f"X-Forwarded-For: {second}\r\n")
        again.close()
        assert status == "HTTP/1.1 429 Too Many Requests"
    finally:
        opened.close()


def test_an_ipv6_client_is_counted_by_its_64(serve: Callable[..., wsthreads.RunningServer]) -> None:
    server = serve(echo=True, max_sessions_per_address=1, trusted_proxies=("127.0.0.1",))
    opened = upgrade(server.port, headers="X-Forwarded-For: 2001:db8:1:2::1\r\n")[2]
    try:
        status, _, same = upgrade(server.port, headers="X-Forwarded-For: 2001:db8:1:2:ffff::9\r\n")
        same.close()
        assert status == "HTTP/1.1 429 Too Many Requests"  # the same /64
        status, _, other = upgrade(server.port, headers="X-Forwarded-For: 2001:db8:1:3::1\r\n")
        other.close()
        assert status == "HTTP/1.1 101 Switching Protocols"  # another /64
    finally:
        opened.close()


@pytest.mark.slow
def test_a_close_in_the_read_that_goes_over_the_byte_rate_is_answered_not_failed(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    server = serve(echo=True, max_byte_rate=1010, max_message_size=1000, ping_interval=None)
    sock = raw_session(server.port)
    try:
        time.sleep(1.1)  # the bucket full: 1010 bytes
        sock.sendall(
            encode_frame(0x2, b"x" * 1000) + encode_frame(0x8, close_payload(1000))
        )  # 1006 + 8 bytes
        assert close_of(sock) == (1000, "")
    finally:
        sock.close()


@pytest.mark.timeout(30)
@pytest.mark.slow
def test_a_client_flooding_past_its_close_is_cut_not_read_for_the_close_timeout(
    serve: Callable[..., wsthreads.RunningServer],
) -> None:
    server = serve(
        echo=True, max_byte_rate=100_000, max_message_size=None, ping_interval=None, close_timeout=5.0
    )
    sock = raw_session(server.port)
    (conn,) = server.app.connections()
    stop = threading.Event()

    def flood() -> None:
        try:
            sock.sendall(encode_frame(0x2, b"x" * 60_000, fin=False))
            while not stop.is_set():
                sock.sendall(encode_frame(0x0, b"x" * 60_000, fin=False))
        except OSError:
            pass  # cut

    flooder = threading.Thread(target=flood, name="flood")
    flooder.start()
    try:
        assert conn.done.wait(2.0)  # not the 5 s close_timeout
        assert conn.closed is not None and conn.closed.code == 1008
        assert conn.traffic.bytes_in <= 100_000 + DRAIN_LIMIT + 3 * READ_SIZE
    finally:
        stop.set()
        flooder.join(10)
        sock.close()
