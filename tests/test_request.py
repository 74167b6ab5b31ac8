"""wsthreads/request.py: the request a session began with, as text the client meant."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest

import wsthreads
from wsthreads.client import wire_url
from wsthreads.request import Request, TrustedProxies, wsgi_text


@pytest.mark.parametrize(
    ("url", "wire"),
    [
        ("ws://localhost:8080/ws?topic=nöws", "ws://localhost:8080/ws?topic=n%C3%B6ws"),
        ("ws://h/wö s?a=b c", "ws://h/w%C3%B6%20s?a=b%20c"),
        ("ws://h/ws?x=%C3%B6&y=1", "ws://h/ws?x=%C3%B6&y=1"),  # escapes already made stay as they are
        ("ws://bücher.example/ws", "ws://xn--bcher-kva.example/ws"),
        ("wss://[::1]:8443/ws?q=é#frag", "wss://[::1]:8443/ws?q=%C3%A9"),
        ("ws://BÜCHER.example:8080/ws", "ws://xn--bcher-kva.example:8080/ws"),  # capitals too
    ],
)
def test_a_client_url_goes_out_percent_encoded(url: str, wire: str) -> None:
    assert wire_url(url) == wire


def test_wsgi_strings_become_the_text_the_client_meant() -> None:
    """PEP 3333 hands bytes over as Latin-1: UTF-8 is decoded again, bad bytes become U+FFFD."""
    environ: dict[str, Any] = {
        "PATH_INFO": "/nöws".encode().decode("latin-1"),
        "QUERY_STRING": "topic=n%C3%B6ws&raw=" + "ü".encode().decode("latin-1"),
    }
    request = Request.from_environ(environ)
    assert request.path == "/nöws"
    assert request.query.to_dict() == {"topic": "nöws", "raw": "ü"}
    assert wsgi_text("\xff") == "\ufffd"
    odd = Request.from_environ({"HTTP_COOKIE": "a=\xff; b=c"})  # not UTF-8: no traceback, U+FFFD
    assert dict(odd.cookies) == {"a": "\ufffd", "b": "c"}
    assert wsgi_text("ok ✓") == "ok ✓"  # not a WSGI string: left as it is


@pytest.mark.slow
def test_non_ascii_in_the_url_arrives_as_it_was_written(
    serve: Callable[..., wsthreads.RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Our client percent-encodes; a raw client sends UTF-8 bytes; the hook reads 'nöws' either way."""
    seen: list[tuple[str, dict[str, str]]] = []

    def remember(request: Request) -> str:
        seen.append((request.path, request.query.to_dict()))
        return "anyone"

    server = serve(authenticate=remember)
    with wsthreads.WebSocketClient(f"{server.url}?topic=nöws&name=José Ü"):
        pass
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    request = (
        "GET /ws?topic=nöws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(request.encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 101")
    assert seen[0] == ("/ws", {"topic": "nöws", "name": "José Ü"})
    assert seen[1] == ("/ws", {"topic": "nöws"})
    with (
        caplog.at_level(logging.INFO, logger="wsthreads"),
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
    ):
        raw.sendall(request.replace("/ws?topic=nöws", "/n%C3%B6ws").encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 404")
    assert any(record.getMessage().startswith("refused GET /nöws: 404") for record in caplog.records)


@pytest.mark.parametrize(
    ("trusted", "remote", "forwarded", "client"),
    [
        ((), "10.0.0.2", "203.0.113.7", "10.0.0.2"),  # nobody trusted: the header is the client's word
        (("10.0.0.0/8",), "10.0.0.2", "203.0.113.7", "203.0.113.7"),
        (("10.0.0.0/8",), "192.0.2.1", "203.0.113.7", "192.0.2.1"),  # not from a trusted proxy
        (("10.0.0.0/8",), "10.0.0.2", "6.6.6.6, 203.0.113.7, 10.0.0.3", "203.0.113.7"),  # spoofed left
        (("10.0.0.0/8",), "10.0.0.2", "", "10.0.0.2"),
        (("10.0.0.0/8",), "10.0.0.2", "10.0.0.9", "10.0.0.9"),  # all trusted: the leftmost
        (("unix",), "", "203.0.113.7", "203.0.113.7"),
        ((), "", "203.0.113.7", ""),
        (("::1",), "::1", "2001:db8::5", "2001:db8::5"),
        (("127.0.0.1",), "::ffff:127.0.0.1", "203.0.113.7", "203.0.113.7"),  # a server on :: sees v4 so
        ((" unix ",), "", "203.0.113.7", "203.0.113.7"),
    ],
)
def test_the_client_address_comes_from_trusted_proxies_only(
    trusted: tuple[str, ...], remote: str, forwarded: str, client: str
) -> None:
    environ = {"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": forwarded}
    assert Request.from_environ(environ, TrustedProxies.parse(trusted)).remote_addr == client


@pytest.mark.parametrize("entry", ["foo", "10.0.0.0/33", "", "unix:/run/x.sock"])
def test_a_bad_trusted_proxy_is_a_one_line_error(entry: str) -> None:
    with pytest.raises(ValueError) as raised:
        wsthreads.ServerConfig(trusted_proxies=(entry,))
    expected = f"not an address, a network or 'unix' for trusted_proxies: {entry!r}"
    assert str(raised.value) == f"{expected} (e.g. 127.0.0.1, 10.0.0.0/8, unix)"
    with pytest.raises(TypeError):
        wsthreads.ServerConfig(trusted_proxies="127.0.0.1")  # type: ignore[arg-type]
