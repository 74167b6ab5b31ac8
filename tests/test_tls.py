"""wss:// with certificates made at test time (trustme): both programs, and mistakes."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

import pytest
import trustme
from helpers import SERVER, Program, ServerProgram, run_client


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A private CA and a certificate for 127.0.0.1 and localhost: (certfile, cafile)."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, cafile = folder / "server.pem", folder / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    return str(certfile), str(cafile)


def test_wss_session_with_a_private_ca(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """--certfile serves wss://; the client trusts it with --cafile and runs a full session."""
    certfile, cafile = pki
    server = start_server("--certfile", certfile, "--count", "2", "--interval", "0")
    assert server.url.startswith("wss://")
    result = run_client("--url", server.url, "--cafile", cafile, "--count", "2", "--linger", "0.3")
    assert result.returncode == 0, result.stderr
    assert "received: server message 2 of 2" in result.stdout
    server.wait_for(r"received: client message 2 of 2")


def test_untrusted_certificate_is_one_line(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """Without --cafile the system store does not know our CA: one line, exit 1."""
    server = start_server("--certfile", pki[0])
    result = run_client("--url", server.url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not trusted" in lines[0], result.stderr


def test_plain_ws_client_on_the_tls_port(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """ws:// to a wss:// server: a clean error on both sides, and the server keeps serving."""
    certfile, cafile = pki
    server = start_server("--certfile", certfile, "--count", "1")
    result = run_client("--url", f"ws://127.0.0.1:{server.port}/ws", "--timeout", "3")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    server.wait_for(r"TLS handshake with 127\.0\.0\.1 failed", stream="stderr")
    assert "Traceback" not in server.output() + result.stderr
    good = run_client("--url", server.url, "--cafile", cafile, "--count", "1", "--linger", "0.2")
    assert good.returncode == 0, good.stderr


def test_silent_tls_client_does_not_stall_the_acceptor(
    start_server: Callable[..., ServerProgram], pki: tuple[str, str]
) -> None:
    """A client that connects and never starts TLS holds its own thread, not the server."""
    certfile, cafile = pki
    server = start_server("--certfile", certfile, "--count", "1")
    with socket.create_connection(("127.0.0.1", server.port)):
        good = run_client("--url", server.url, "--cafile", cafile, "--count", "1", "--linger", "0.2")
        assert good.returncode == 0, good.stderr


def test_missing_certificate_file_is_one_line(tmp_path: Path) -> None:
    server = Program(SERVER, "--port", "0", "--certfile", str(tmp_path / "nope.pem"))
    assert server.wait() == 1
    assert len(server.stderr) == 1 and "cannot use the certificate" in server.stderr[0], server.output()
