"""The two programs against each other, as a person would run them."""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    CLIENT,
    ROOT,
    Program,
    ServerProgram,
    assert_stop_closes_sessions,
    run_client,
    wait_until,
    websocket_client,
)

from wsthreads.pool import REQUEST_THREAD_IDLE

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README


def test_server_and_client_see_all_of_each_others_messages_in_order(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Both sides print every message of the other, in order; 1000 at the end; exit 0."""
    server = start_server("--count", "4", "--interval", "0.05")
    client = run_client("--url", server.url, "--count", "4", "--interval", "0.05", "--linger", "0.5")

    assert client.returncode == 0, client.stderr
    assert client.stderr == ""
    received = re.findall(r"\[reader\] received: (.*)", client.stdout)
    assert received == [f"server message {i} of 4" for i in range(1, 5)]
    sent = re.findall(r"\[sender\] sent: (.*)", client.stdout)
    assert sent == [f"client message {i} of 4" for i in range(1, 5)]

    server.wait_for(r"\[conn-1-reader\] peer closed the connection: 1000 \(normal closure\)")
    got = [m for line in server.stdout if (m := re.search(r"\[conn-1-reader\] received: (.*)", line))]
    assert [m.group(1) for m in got] == [f"client message {i} of 4" for i in range(1, 5)]
    assert server.stderr == []


def test_log_lines_show_time_thread_and_event(start_server: Callable[..., ServerProgram]) -> None:
    """Every line reads 'HH:MM:SS.mmm [thread] event'."""
    server = start_server("--count", "1", "--interval", "0")
    client = run_client("--url", server.url, "--count", "1", "--linger", "0.3")
    line = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \[[\w-]+\] \S")
    assert client.stdout and all(line.match(x) for x in client.stdout.splitlines())
    assert all(line.match(x) for x in server.stdout)
    assert re.search(r"\[sender\] connected to ws://", client.stdout)
    assert server.wait_for(r"\[conn-1\] connected: 127\.0\.0\.1:\d+")


def test_non_ascii_text_is_printed_verbatim(start_server: Callable[..., ServerProgram]) -> None:
    """A message in any script arrives and is printed as it was sent."""
    server = start_server("--echo")
    from helpers import websocket_client as connect

    ws = connect(server.url)
    try:
        ws.send("héllo, мир, 世界 ✓")
        assert ws.recv() == "héllo, мир, 世界 ✓"
    finally:
        ws.close()
    server.wait_for("received: héllo, мир, 世界 ✓")


def test_a_peer_cannot_forge_log_lines(start_server: Callable[..., ServerProgram]) -> None:
    """Line breaks and escape sequences, in a message or a request path, are printed escaped on one line."""
    import socket

    from helpers import websocket_client as connect

    server = start_server("--echo")
    forged = "hi\n12:00:00.000 [conn-9-reader] peer closed the connection\r\x1b[2K\u2028end"
    ws = connect(server.url)
    try:
        ws.send(forged)
        assert ws.recv() == forged  # the message itself is untouched
    finally:
        ws.close()
    server.wait_for(
        re.escape(r"received: hi\n12:00:00.000 [conn-9-reader] peer closed the connection\r\x1b[2K\u2028end")
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /x%0A12:00:00.000%20[conn-7-reader]%20FORGED HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 404")
    server.wait_for(re.escape(r"refused GET /x\n12:00:00.000 [conn-7-reader] FORGED: 404"))
    assert not any(line.startswith(("12:00:00.000", "\x1b")) or "\r" in line for line in server.stdout)


def test_client_closes_with_1000_after_linger_when_server_stays_quiet(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Done sending and nothing arriving: the client closes after --linger seconds."""
    server = start_server("--count", "0")
    started = time.monotonic()
    client = run_client("--url", server.url, "--count", "1", "--linger", "0.5")
    assert client.returncode == 0, client.stderr
    assert 0.5 <= time.monotonic() - started < 5
    assert "closed: sent 1000 (normal closure)" in client.stdout
    server.wait_for(r"peer closed the connection: 1000")


@pytest.mark.parametrize("netpoller", [False, True], ids=["reader-threads", "netpoller"])
def test_server_and_client_print_the_same_lines_with_or_without_the_netpoller(
    start_server: Callable[..., ServerProgram], netpoller: bool
) -> None:
    """--netpoller changes who reads, not what the log says: the same lines, the same thread names."""
    server = start_server("--count", "2", "--interval", "0.05", *(["--netpoller"] if netpoller else []))
    client = run_client("--url", server.url, "--count", "2", "--interval", "0.05", "--linger", "0.5")
    assert client.returncode == 0, client.stderr
    server.wait_for(r"\[conn-1-reader\] peer closed the connection: 1000 \(normal closure\)")
    got = [m for line in server.stdout if (m := re.search(r"\[conn-1-reader\] received: (.*)", line))]
    assert [m.group(1) for m in got] == ["client message 1 of 2", "client message 2 of 2"]
    assert server.stderr == []


def test_with_the_netpoller_idle_sessions_hold_no_thread(start_server: Callable[..., ServerProgram]) -> None:
    """50 idle sessions: 50 reader threads by default, a handful in all with --netpoller.

    A handful: the netpoller thread and up to 4 workers, once the sender threads have
    ended and the request threads the handshakes left idle (more of them on a busy
    machine) have too, after REQUEST_THREAD_IDLE.
    """
    handful = 1 + 4
    counts = {}
    for netpoller in (False, True):
        server = start_server("--count", "1", "--interval", "0", *(["--netpoller"] if netpoller else []))
        before = server.threads()
        peers = [websocket_client(server.url) for _ in range(50)]
        for peer in peers:
            assert peer.recv() == "server message 1 of 1"
        if netpoller:
            wait_until(lambda: server.threads() - before <= handful, timeout=REQUEST_THREAD_IDLE + 5)  # noqa: B023
        counts[netpoller] = server.threads() - before
        for peer in peers:
            peer.close()
    assert counts[False] >= 50
    assert counts[True] <= handful


def test_sigint_on_server_closes_sessions_with_1001_and_exits_0_within_2s(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Ctrl+C on the server: the connected client sees 1001, the server exits 0 fast."""
    _server_shutdown_closes_sessions(start_server, signal.SIGINT)


def test_sigterm_on_server_behaves_like_ctrl_c(start_server: Callable[..., ServerProgram]) -> None:
    """SIGTERM: the same orderly shutdown as Ctrl+C."""
    _server_shutdown_closes_sessions(start_server, signal.SIGTERM)


def _server_shutdown_closes_sessions(start_server: Callable[..., ServerProgram], signum: int) -> None:
    server = start_server("--count", "1000", "--interval", "5")
    assert_stop_closes_sessions(server, server.url, signum, within=2.0)


def test_sigint_on_client_closes_with_1000_and_exits_0(start_server: Callable[..., ServerProgram]) -> None:
    """Ctrl+C on the client, mid-sleep: close 1000 at once, exit 0."""
    server = start_server("--count", "1000", "--interval", "5")
    client = Program(CLIENT, "--url", server.url, "--count", "1000", "--interval", "5")
    client.wait_for(r"sent: client message 1 of 1000")

    started = time.monotonic()
    client.signal(signal.SIGINT)
    assert client.wait() == 0, client.output()
    assert time.monotonic() - started < 2.0
    server.wait_for(r"peer closed the connection: 1000 \(normal closure\)")
    assert "Traceback" not in client.output()


def test_quiet_prints_connections_and_closes_but_not_messages(
    start_server: Callable[..., ServerProgram],
) -> None:
    """--quiet: no line per message, but still who connected and how it ended."""
    server = start_server("--count", "2", "--interval", "0", "--quiet")
    client = run_client("--url", server.url, "--count", "2", "--linger", "0.3", "--quiet")
    assert client.returncode == 0
    assert "connected to" in client.stdout and "closed: sent 1000" in client.stdout
    assert "received:" not in client.stdout and "sent:" not in client.stdout
    server.wait_for(r"peer closed the connection: 1000")
    assert not any("received:" in line or "sent:" in line for line in server.stdout)


def test_client_echo_sends_back_what_the_server_sends(start_server: Callable[..., ServerProgram]) -> None:
    """sync_client.py --echo: every server message comes back; the client stays until the server closes."""
    server = start_server("--count", "3", "--interval", "0.05")
    client = Program(CLIENT, "--url", server.url, "--echo")
    for n in (1, 2, 3):
        server.wait_for(rf"received: server message {n} of 3")
    assert client.proc.poll() is None  # no linger in echo mode
    server.signal()
    assert server.wait() == 0
    assert client.wait() == 0, client.output()
    client.wait_for(r"peer closed the connection: 1001")


def test_a_long_text_is_shown_by_its_first_200_characters_and_size(
    start_server: Callable[..., ServerProgram], tmp_path: Path
) -> None:
    """A 100 kB text is one short line, the same on both sides and in both traces; it arrives whole."""
    import json
    import threading

    from websockets.sync.server import ServerConnection, serve

    long_text = "ü\n" + "a" * 99_998  # 100,000 characters, 100,001 bytes
    preview = "ü\\n" + "a" * 197 + "... (100001 bytes in all)"  # 200 characters as shown
    server_trace, client_trace = tmp_path / "server.json", tmp_path / "client.json"
    server = start_server("--echo", "--trace", str(server_trace))
    ws = websocket_client(server.url)
    try:
        ws.send(long_text)
        assert ws.recv() == long_text
    finally:
        ws.close()
    server.wait_for(re.escape(f"[conn-1-reader] received: {preview}") + "$")

    echoed: list[str] = []

    def send_and_take_the_echo(conn: ServerConnection) -> None:
        conn.send(long_text)
        echoed.append(str(conn.recv(timeout=10)))

    with serve(send_and_take_the_echo, "127.0.0.1", 0) as peer:
        threading.Thread(target=peer.serve_forever, name="websockets-peer", daemon=True).start()
        url = f"ws://127.0.0.1:{peer.socket.getsockname()[1]}/"
        client = Program(CLIENT, "--url", url, "--echo", "--trace", str(client_trace))
        assert client.wait() == 0, client.output()
        peer.shutdown()
    assert echoed == [long_text]
    assert re.findall(r"\[reader\] received: (.*)", "\n".join(client.stdout)) == [preview]
    server.signal()
    assert server.wait() == 0
    for path in (server_trace, client_trace):
        events = json.loads(path.read_text())["traceEvents"]
        shown = [e["args"] for e in events if e["name"] == "received message"]
        assert shown == [{"text": preview, "size": 100_001}], path


def options_from_help(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    """The rows of an options table, made from the parser: (option, default, meaning).

    The help text as ``--help`` prints it (``%(default)s`` expanded); its
    ``(default 5)`` is the default column as code, and must be the option's
    real default; ``(default: the system's)`` is words. A flag without one is
    ``off``, any other option ``none``.
    """
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        option = ", ".join(action.option_strings)
        if action.nargs != 0:
            option += f" {action.metavar or action.dest.upper()}"
        help_text = formatter._expand_help(action)
        stated = re.search(r" \(default(:?) ([^)]*)\)", help_text)
        if stated and stated.group(1):
            default = stated.group(2)
        elif stated:
            default = f"`{stated.group(2)}`"
            assert same_value(stated.group(2), action.default), (option, stated.group(0), action.default)
        else:
            assert action.default in (None, False, []), f"{option}: the help does not say its default"
            default = "off" if action.nargs == 0 else "none"
        if stated:
            help_text = help_text.replace(stated.group(0), "")
        rows.append((f"`{option}`", default, help_text))
    return rows


def same_value(text: str, value: object) -> bool:
    """Whether ``text`` says ``value``: ``10`` says 10.0, ``/ws`` says '/ws'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(text) == value
    return text == str(value)


def options_in_readme(program: str) -> list[tuple[str, str, str]]:
    """The README's options table for ``python PROGRAM [options]``, code marks in the meaning dropped."""
    text = (Path(ROOT) / "README.md").read_text()
    table = text.split(f"`python {program} [options]`", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        option, default, meaning = (cell.strip() for cell in line.strip("|").split(" | "))
        rows.append((option, default, meaning.replace("`", "")))
    return rows


@pytest.mark.parametrize("program", ["sync_server.py", "sync_client.py"])
def test_the_readme_options_tables_are_what_help_says(program: str) -> None:
    """Every option, in --help's order, with its default and its help text: the tables cannot drift."""
    module = importlib.import_module(program.removesuffix(".py"))
    assert options_in_readme(program) == options_from_help(module.build_parser())


def test_the_demo_sender_leaves_topic_subscribers_alone(start_server: Callable[..., ServerProgram]) -> None:
    """A client on /ws?topic=NAME gets its topic's messages only; a plain client gets the demo's."""
    import json

    import websocket

    server = start_server("--count", "2", "--interval", "0.05")
    subscriber = websocket_client(f"{server.url}?topic=news")
    plain = websocket_client(server.url)
    try:
        assert [plain.recv(), plain.recv()] == ["server message 1 of 2", "server message 2 of 2"]
        server.wait_for(r"\[conn-2\] sent: server message 2 of 2")
        assert json.loads(subscriber.recv())["note"] == "subscribed"
        subscriber.settimeout(0.5)
        with pytest.raises(websocket.WebSocketTimeoutException):
            subscriber.recv()
    finally:
        subscriber.close()
        plain.close()
    assert not any("[conn-1] sent:" in line for line in server.stdout)
