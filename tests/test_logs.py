"""Log lines with their session's context (wsthreads/logs.py): conn.logger, and the JSON format."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket
from helpers import ServerProgram, open_client, run_client, wait_until
from test_gunicorn import Gunicorn

import wsthreads
from wsthreads.logs import JsonFormatter, SessionLogger

SESSION_FIELDS = {"session", "remote", "path"}


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Every wsthreads line logged meanwhile, through JsonFormatter, parsed back line by line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("wsthreads")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def authenticate(request: wsthreads.Request) -> str | None:
    return request.headers.get("Authorization", "").removeprefix("Bearer ") or None


def test_every_session_line_carries_id_address_user_and_path(
    serve: Callable[..., wsthreads.RunningServer], json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    def handler(conn: wsthreads.Connection) -> None:
        conn.logger.info("handling %s", "it")
        for message in conn:
            conn.send(message)

    server = serve(handler=handler, authenticate=authenticate)
    client = websocket.create_connection(server.url, timeout=5, header=["Authorization: Bearer ann"])
    client.send("hello")
    assert client.recv() == "hello"
    client.close()
    assert wait_until(lambda: any("peer closed" in line["message"] for line in json_lines()))
    session_lines = [line for line in json_lines() if line["thread"].startswith("conn-")]
    assert {line["message"] for line in session_lines} >= {
        "connected: 127.0.0.1:" + session_lines[0]["message"].rsplit(":", 1)[1],
        "handling it",
        "received: hello",
        "peer closed the connection: 1000 (normal closure)",
    }
    for line in session_lines:
        assert line["session"] == line["thread"].removesuffix("-reader"), line
        assert (line["remote"], line["user"], line["path"]) == ("127.0.0.1", "ann", "/ws"), line
    (handled,) = (line for line in session_lines if line["message"] == "handling it")
    assert handled["logger"] == "wsthreads.handler" and handled["level"] == "INFO"


def test_a_refused_line_carries_the_address_and_path(
    serve: Callable[..., wsthreads.RunningServer], json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    server = serve(authenticate=authenticate)
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(server.url, timeout=5)
    (refused,) = (line for line in json_lines() if line["message"].startswith("refused"))
    assert (refused["remote"], refused["path"]) == ("127.0.0.1", "/ws")
    assert "session" not in refused and "user" not in refused


def test_peer_text_is_escaped_and_every_line_is_one_json_object(
    serve: Callable[..., wsthreads.RunningServer], json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    server = serve(echo=True)
    client = websocket.create_connection(server.url, timeout=5)
    client.send(
        'two\nlines "quoted" \x1b[31m\ud800'.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    )
    client.recv()
    client.close()
    assert wait_until(lambda: any("peer closed" in line["message"] for line in json_lines()))
    (received,) = (line for line in json_lines() if line["message"].startswith("received:"))
    assert received["message"].startswith('received: two\\nlines "quoted" \\x1b[31m')


def test_a_forged_forwarded_address_from_an_untrusted_peer_is_not_logged(
    serve: Callable[..., wsthreads.RunningServer], json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    server = serve(echo=True)  # trusts no proxy
    client = websocket.create_connection(server.url, timeout=5, header=["X-Forwarded-For: 203.0.113.9"])
    client.close()
    assert wait_until(lambda: any("peer closed" in line["message"] for line in json_lines()))
    assert {line["remote"] for line in json_lines() if "session" in line} == {"127.0.0.1"}


def test_session_logger_wraps_a_logger_of_your_own_and_merges_extra() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    mine = logging.getLogger("test_logs.mine")
    mine.addHandler(handler)
    mine.propagate = False
    try:
        SessionLogger(mine, {"session": "conn-9", "user": "bo"}).warning("careful", extra={"path": "/x"})
    finally:
        mine.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert (line["session"], line["user"], line["path"], line["level"]) == ("conn-9", "bo", "/x", "WARNING")


def test_an_exception_goes_in_its_own_field(json_lines: Callable[[], list[dict[str, Any]]]) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("wsthreads").exception("it failed")
    (line,) = json_lines()
    assert line["message"] == "it failed" and "ValueError: boom" in line["exception"]


@pytest.mark.slow
def test_the_programs_log_json_lines_with_the_session_fields(
    start_server: Callable[..., ServerProgram],
) -> None:
    server = start_server("--log-format", "json", "--count", "2", "--interval", "0.05")
    done = run_client(
        "--url", server.url, "--count", "2", "--interval", "0.05", "--linger", "0.5", "--log-format", "json"
    )
    assert done.returncode == 0, done.stderr
    client_lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["message"] for line in client_lines][-1] == "closed: sent 1000 (normal closure)"
    server.wait_for(r'"message": "peer closed the connection')
    server_lines = [json.loads(line) for line in server.stdout]
    session_lines = [line for line in server_lines if line["thread"].startswith("conn-")]
    assert len(session_lines) >= 6  # connected, 2 sent, 2 received, closed
    assert all(line.keys() >= SESSION_FIELDS for line in session_lines)


def test_under_gunicorn_the_log_format_variable_gives_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSTHREADS_LOG_FORMAT", "json")
    with Gunicorn("sync_server:create_app(echo=True)", workers=1) as gunicorn:
        raw = open_client(gunicorn.port)
        raw.close()
        line = gunicorn.wait_for(r'"message": "connection lost', stream="stderr").string
    fields = json.loads(line)
    assert fields.keys() >= SESSION_FIELDS and fields["remote"] == "127.0.0.1"
    assert all(json.loads(line) for line in gunicorn.stderr + gunicorn.stdout)  # gunicorn's own lines too
    assert sum("Booting worker" in line for line in gunicorn.stderr) == 1  # each line once


class BadUser:
    def __str__(self) -> str:
        raise RuntimeError("no text for this user")


class HugeUser:
    def __str__(self) -> str:
        return "u\n" * 1_000_000


@pytest.mark.parametrize("user", [BadUser(), HugeUser()], ids=["str-raises", "str-huge"])
def test_a_user_that_logs_badly_never_ends_a_session(
    serve: Callable[..., wsthreads.RunningServer],
    json_lines: Callable[[], list[dict[str, Any]]],
    user: object,
) -> None:
    server = serve(echo=True, authenticate=lambda request: user)
    client = websocket.create_connection(server.url, timeout=5)
    for _ in range(3):
        client.send("hello")
        assert client.recv() == "hello"
    client.close()
    assert wait_until(lambda: any("peer closed" in line["message"] for line in json_lines()))
    users = {line["user"] for line in json_lines() if "user" in line}
    assert users in ({"<BadUser>"}, {"u\\n" * 50 + "..."}), users


def test_a_refused_lines_fields_are_escaped(
    serve: Callable[..., wsthreads.RunningServer], json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /x%0aFAKE%1b[31m HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 404")
    (refused,) = (line for line in json_lines() if line["message"].startswith("refused"))
    assert refused["path"] == "/x\\nFAKE\\x1b[31m"


def test_session_logger_takes_extra_none_and_the_formatter_keeps_stack_info() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    mine = logging.getLogger("test_logs.stack")
    mine.setLevel(logging.INFO)
    mine.addHandler(handler)
    mine.propagate = False
    try:
        SessionLogger(mine, {"session": "conn-3"}).info("here", extra=None, stack_info=True)
    finally:
        mine.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["session"] == "conn-3" and line["stack"].startswith("Stack (most recent call last)")


def test_a_failing_may_subscribe_hook_is_logged_with_the_sessions_fields(
    serve: Callable[..., wsthreads.RunningServer], json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    def may_subscribe(user: object, topic: str) -> bool:
        raise RuntimeError("boom")

    server = serve(extensions=[wsthreads.PubSub(may_subscribe=may_subscribe)])
    client = websocket.create_connection(server.url + "?topic=news", timeout=5)
    try:
        assert wait_until(lambda: any("may_subscribe" in line["message"] for line in json_lines()))
    finally:
        client.close()
    (failed,) = (line for line in json_lines() if "may_subscribe" in line["message"])
    assert failed.keys() >= SESSION_FIELDS and failed["level"] == "ERROR"
