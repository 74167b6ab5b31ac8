"""The documentation stays true: every snippet runs and prints what it says, every example runs as
documented, and the lesson's links resolve and its experiments hold.

Each section below holds one page's (or one kind of page's) checks; they all run whole programs,
so the file is slow (see the README)."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import CLIENT, ROOT, WAIT, Program, ServerProgram, free_port, wait_until, websocket_client

from wsthreads.pool import REQUEST_THREAD_IDLE

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README


# --- The how-to guides' and the README's snippets ----------------------------------------------------
# Every Python snippet of the how-to guides (docs/howto/*.md) and of the README runs, and says what they say.
#
# Each fenced block marked ``python`` is a complete program: it is written to a
# file and run with this interpreter in a fresh subprocess, from an empty
# directory (so it can only use the installed ``wsthreads``). Snippets start
# their own servers on port 0 and shut them down, so they need nothing else.
# A program must exit with status 0 and print no traceback. When the next
# fenced block after it is marked ``text``, that block is what the program
# prints on stdout, line for line, with three allowances:
#
# * times (``20:56:57.191``) and ports (``127.0.0.1:41235``) may differ;
# * ``...`` in an expected line stands for any text (as in doctest);
# * trailing spaces do not count.
#
# Stderr is not compared (Werkzeug's request log and our warnings go there),
# but it is shown when a snippet fails.


HOWTO = ROOT / "docs" / "howto"
README = ROOT / "README.md"
#: Seconds one snippet may take; they are written to take one or two.
SNIPPET_TIMEOUT = 20.0

FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
TIME = re.compile(r"\b\d{2}:\d{2}:\d{2}\.\d{3}\b")
PORT = re.compile(r"\b(127\.0\.0\.1|localhost):\d{1,5}\b")


class Snippet(NamedTuple):
    """A ``python`` block, where it is, and the ``text`` block after it (None if there is none)."""

    path: Path
    line: int
    code: str
    expected: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets(path: Path) -> list[Snippet]:
    """The python blocks of a Markdown file, each with the expected output that follows it."""
    text = path.read_text()
    blocks = [
        (match.group(1), match.group(2), text.count("\n", 0, match.start()) + 1)
        for match in FENCE.finditer(text)
    ]
    found = []
    for index, (lang, body, line) in enumerate(blocks):
        if lang != "python":
            continue
        follows = blocks[index + 1] if index + 1 < len(blocks) else None
        expected = follows[1] if follows is not None and follows[0] == "text" else None
        found.append(Snippet(path, line, body, expected))
    return found


def guides() -> list[Path]:
    return sorted(HOWTO.glob("*.md"))


ALL = [snippet for path in [*guides(), README] for snippet in snippets(path)]


def normalized(text: str) -> list[str]:
    """Lines with times and ports replaced by placeholders, trailing spaces gone."""
    text = PORT.sub(r"\1:PORT", TIME.sub("HH:MM:SS.mmm", text))
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


def line_pattern(expected: str) -> re.Pattern[str]:
    """An expected line as a pattern: literal, except that ``...`` matches anything."""
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")))


def mismatch(expected: str, actual: str) -> str | None:
    """Why ``actual`` is not what ``expected`` says, or None if it is."""
    want, got = normalized(expected), normalized(actual)
    for number, (pattern, line) in enumerate(zip(want, got, strict=False), 1):
        if not line_pattern(pattern).fullmatch(line):
            return f"line {number}: expected {pattern!r}, got {line!r}"
    if len(want) != len(got):
        return f"expected {len(want)} lines, got {len(got)}"
    return None


@pytest.mark.parametrize("snippet", ALL, ids=[snippet.name for snippet in ALL])
def test_snippet_runs_and_prints_what_the_page_says(snippet: Snippet, tmp_path: Path) -> None:
    program = tmp_path / "snippet.py"
    program.write_text(snippet.code)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SNIPPET_TIMEOUT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONIOENCODING": "utf-8"},
    )
    took = time.monotonic() - started
    report = (
        f"{snippet.name} (exit {result.returncode}, {took:.1f} s)\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
    assert result.returncode == 0, report
    assert "Traceback" not in result.stderr, report
    if snippet.expected is not None:
        problem = mismatch(snippet.expected, result.stdout)
        assert problem is None, f"{problem}\n{report}"


def test_every_guide_has_snippets_and_each_shows_its_output() -> None:
    """A guide is a runnable snippet and what it prints: no snippet without its output."""
    assert len(guides()) >= 8
    for path in guides():
        if path.name == "README.md":
            continue
        found = snippets(path)
        assert found, f"{path.name} has no python snippet"
        for snippet in found:
            assert snippet.expected is not None, f"{snippet.name}: no ```text block with its output"


def test_the_readme_embedding_snippets_are_run_too() -> None:
    readme = snippets(README)
    assert readme, "the README's embedding section lost its snippets"
    assert all(snippet.expected is not None for snippet in readme)


def test_the_index_and_the_readme_link_every_guide() -> None:
    index = (HOWTO / "README.md").read_text()
    readme = README.read_text()
    for path in guides():
        if path.name == "README.md":
            continue
        assert f"]({path.name})" in index, f"docs/howto/README.md does not link {path.name}"
        assert f"](docs/howto/{path.name})" in readme, f"README.md does not link {path.name}"


#: Submodules a snippet may import: the optional integrations and the pub/sub layer, each
#: with its own public names.
INTEGRATIONS = {
    "django": {"authenticate", "closing_db"},
    "pubsub": {"Broker", "BrokerError", "MemoryBroker", "Resume", "open_broker", "publish"},
}


def test_snippets_use_only_the_public_names() -> None:
    """``from wsthreads import X`` and ``wsthreads.X``: X is in ``wsthreads.__all__``; of the
    submodules, only an integration's own names (``from wsthreads.django import authenticate``)."""
    import wsthreads

    for snippet in ALL:
        for module, line in re.findall(r"^from wsthreads\.(\w+) import (.+)$", snippet.code, re.MULTILINE):
            assert {name.strip() for name in line.split(",")} <= INTEGRATIONS.get(module, set()), snippet.name
        code = re.sub(r"^from wsthreads\.(\w+) import .+$", "", snippet.code, flags=re.MULTILINE)
        assert not re.search(r"\b(from|import) wsthreads\.", code), snippet.name
        imported = re.findall(r"^from wsthreads import (.+)$", code, re.MULTILINE)
        names = {name.strip() for line in imported for name in line.split(",")}
        names |= set(re.findall(r"\bwsthreads\.(\w+)", code))
        assert names <= set(wsthreads.__all__), f"{snippet.name}: {names - set(wsthreads.__all__)}"


def test_relative_links_and_cited_tests_exist() -> None:
    """Links to files resolve, and every ``tests/test_x.py::test_name`` cited names a real test."""
    for path in [*guides(), README]:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text):
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"
        for test_file, test_name in re.findall(r"(tests/test_\w+\.py)::(test_\w+)", text):
            defined = re.search(rf"^def {test_name}\(", (ROOT / test_file).read_text(), re.MULTILINE)
            assert defined, f"{path.name}: no {test_file}::{test_name}"
        for test_file in re.findall(r"\btests/test_\w+\.py\b", text):
            assert (ROOT / test_file).exists(), f"{path.name}: no {test_file}"


def test_the_figures_the_pages_state_are_the_codes() -> None:
    """Each default the prose gives in numbers is the constant it comes from (or a test says it)."""
    from wsthreads.app import PING_INTERVAL
    from wsthreads.backoff import BACKOFF, STABLE_SESSION
    from wsthreads.client import CLIENT_MAX_QUEUE, DIAL_TIMEOUT, RETRYABLE_STATUSES
    from wsthreads.closing import RETRYABLE_CODES
    from wsthreads.connection import CLOSE_TIMEOUT, MAX_QUEUE, OUTBOUND_LIMIT, WRITE_TIMEOUT

    redial = {1001, 1006, 1011, 1012, 1013, 1014}
    statuses = {408, 429, 500, 502, 503, 504}
    figures = [
        ("own-loop.md", "16 by default on the server", MAX_QUEUE == 16),
        ("own-loop.md", "and 1024 on the client", CLIENT_MAX_QUEUE == 1024),
        ("own-loop.md", "the server every 25 s by default", PING_INTERVAL == 25),
        ("own-loop.md", "its `write_timeout` (10 s by default)", WRITE_TIMEOUT == 10),
        ("broadcast.md", "`outbound_limit` bytes (1 MiB by default", OUTBOUND_LIMIT == 1 << 20),
        ("broadcast.md", "limit 1048576", OUTBOUND_LIMIT == 1048576),
        ("broadcast.md", "`close_timeout`, 1 s,", CLOSE_TIMEOUT == 1),
        ("broadcast.md", "(`write_timeout`, 10 s by default)", WRITE_TIMEOUT == 10),
        ("reconnect.md", "the first redial after 0.25 to 0.5 s", BACKOFF[0] == 0.5),
        ("reconnect.md", "`backoff=(0.5, 30.0)` by default", BACKOFF == (0.5, 30.0)),
        ("reconnect.md", "end within 10 s of their start", STABLE_SESSION == 10),
        ("reconnect.md", "1001 (going away", 1001 in RETRYABLE_CODES),
        ("reconnect.md", "and 1013 (try again later", redial == RETRYABLE_CODES),
        ("errors.md", "408, 429, 500, 502, 503 or 504", statuses == RETRYABLE_STATUSES),
        ("errors.md", "`timeout` (10 s by default)", DIAL_TIMEOUT == 10),
        ("../../README.md", "`outbound_limit` (1 MiB)", OUTBOUND_LIMIT == 1 << 20),
        ("../../README.md", "about 2 s (the close bound plus a second)", CLOSE_TIMEOUT + 1 == 2),
        ("../../README.md", "1001, 1006 and 1011-1014", redial == RETRYABLE_CODES),
    ]
    for page, phrase, holds in figures:
        text = " ".join((HOWTO / page).read_text().split())
        assert phrase in text, f"{page} no longer says {phrase!r}: update this list"
        assert holds, f"{page} says {phrase!r}, which the code no longer does"


def test_the_output_check_itself() -> None:
    """The allowances, and nothing more: times, ports, ``...``, trailing spaces."""
    assert mismatch("20:56:57.191 ws://127.0.0.1:41235/ws", "09:01:02.003 ws://127.0.0.1:5/ws  ") is None
    assert mismatch("got 0000 ... 0299 (... of 300)", "got 0000 0001 0299 (64 of 300)") is None
    assert mismatch("a\nb", "a\nc") is not None
    assert mismatch("a", "a\nb") is not None
    assert mismatch("a\nb", "a") is not None
    assert mismatch("x (1+1)", "x (2)") is not None  # no other pattern syntax


# --- The examples ------------------------------------------------------------------------------------
# The examples run as documented: a legacy batch job and a server with its own handler.


def test_progress_client_against_shout_server() -> None:
    """The batch job reports all its progress; the handler answers each report in capitals."""
    server = Program(str(ROOT / "examples" / "shout_server.py"), "0")
    try:
        url = server.wait_for(r"listening on (ws://\S+)").group(1)
        job = subprocess.run(
            [sys.executable, "examples/progress_client.py", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert job.returncode == 0, job.stderr
        assert "server says: hello! I shout back whatever you say" in job.stdout
        server.wait_for(r"received: progress 100%")
        server.wait_for(r"received: done")
        server.wait_for(r"peer closed the connection: 1000")
    finally:
        server.signal()
        assert server.wait() == 0


def test_progress_client_without_a_server_is_one_line() -> None:
    job = subprocess.run(
        [sys.executable, "examples/progress_client.py", "ws://127.0.0.1:9/ws"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 1
    assert len(job.stderr.strip().splitlines()) == 1 and "connection refused" in job.stderr


# --- The article's naive ports (examples/minimal_*.py) -----------------------------------------------
# The naive ports of the article (examples/minimal_*.py) do what the article's programs do.


MINIMAL_SERVER = str(ROOT / "examples" / "minimal_server.py")
MINIMAL_CLIENT = str(ROOT / "examples" / "minimal_client.py")

#: Short, but one interval is each side's margin between the other's last message and its close.
INTERVAL = "0.2"


def test_minimal_client_and_server_exchange_five_messages_each() -> None:
    server = Program(MINIMAL_SERVER, "--port", str(free_port()), "--interval", INTERVAL)
    try:
        url = server.wait_for(r"listening on (ws://\S+)").group(1)
        client = subprocess.run(
            [sys.executable, MINIMAL_CLIENT, "--url", url, "--interval", INTERVAL],
            capture_output=True,
            text=True,
            encoding="utf-8",
            cwd=ROOT,
            timeout=30,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONIOENCODING="utf-8"),
        )
        assert client.returncode == 0, client.stdout + client.stderr
        for i in range(1, 6):
            assert f"received: server message {i} of 5" in client.stdout.splitlines(), client.stdout
        for i in range(1, 6):
            server.wait_for(rf"^received: client message {i} of 5$", timeout=WAIT)
    finally:
        server.kill()


# --- The lesson (docs/threads-vs-goroutines.md) ------------------------------------------------------
# docs/threads-vs-goroutines.md stays true: its links resolve, its experiment holds.


LESSON = ROOT / "docs" / "threads-vs-goroutines.md"


def test_every_linked_name_exists() -> None:
    """Each [`name`](../file.py) in the lesson is a def or class in that file."""
    text = LESSON.read_text()
    links = re.findall(r"\[`([\w.]+)`\]\(\.\./([\w/]+\.py)\)", text)
    assert len(links) > 15
    for name, path in links:
        source = (ROOT / path).read_text()
        for part in name.split("."):
            assert re.search(rf"^\s*(def|class) {part}\b", source, re.MULTILINE), f"{name} not in {path}"
    for doc in re.findall(r"\]\(([\w-]+\.md)\)", text):
        assert (LESSON.parent / doc).exists(), doc


FRAME = 256 * 1024


def test_unlocked_sends_interleave() -> None:
    """Exercise 2 on a bare TCP pair: 8 threads sendall() big frames with no lock, and
    the reader finds a frame whose payload mixes two threads' bytes."""
    # Small kernel buffers: every 256 KiB sendall() becomes many partial writes,
    # each a chance for another thread's bytes to land in between.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    writer = socket.socket()
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    writer.connect(listener.getsockname())
    reader, _ = listener.accept()
    threads, frames_each = 8, 8

    def send(n: int) -> None:
        frame = struct.pack("!BI", n, FRAME) + bytes([n]) * FRAME
        for _ in range(frames_each):
            writer.sendall(frame)  # deliberately without a lock

    senders = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
    for s in senders:
        s.start()
    total = threads * frames_each * (5 + FRAME)
    data = bytearray()
    while len(data) < total:
        data += reader.recv(1 << 20)
    for s in senders:
        s.join()
    for sock in (writer, reader, listener):
        sock.close()

    mixed = 0
    at = 0
    while at + 5 <= len(data):
        owner, length = struct.unpack("!BI", data[at : at + 5])
        payload = data[at + 5 : at + 5 + length] if length == FRAME else b""
        if length != FRAME or payload.count(owner) != FRAME:
            mixed += 1
            break  # the stream is no longer framed: the peer would close with 1002
        at += 5 + length
    assert mixed, "frames came through whole without a lock; the lesson's claim needs a bigger test"


def threads_added_once_settled(server: ServerProgram, expected: range) -> int:
    """The server's threads beyond MainThread and acceptor, once they are in ``expected`` or the
    request threads left idle by the handshakes have had time to end."""
    wait_until(lambda: server.threads() - 2 in expected, timeout=REQUEST_THREAD_IDLE + 5)
    return server.threads() - 2


def test_threads_per_session_are_what_the_lesson_says(start_server: Callable[..., ServerProgram]) -> None:
    """Section 5's table: 2 threads per session, none parked, 3 in the client, counted from /proc.

    Counted once the request threads left idle by the handshakes have ended
    (REQUEST_THREAD_IDLE, 5 s: the table says so too).
    """
    sessions = 20
    expected = {False: range(2 * sessions, 2 * sessions + 1), True: range(1, 1 + 4 + 1)}
    added = {}
    for netpoller in (False, True):
        server = start_server("--count", "1", "--interval", "0", *(["--netpoller"] if netpoller else []))
        assert server.threads() == 2  # MainThread, acceptor
        peers = [websocket_client(server.url) for _ in range(sessions)]
        try:
            for peer in peers:
                assert peer.recv() == "server message 1 of 1"
            added[netpoller] = threads_added_once_settled(server, expected[netpoller])
        finally:
            for peer in peers:
                peer.close()
    assert added[False] == 2 * sessions
    # The netpoller thread and up to 4 workers, however many sessions; a worker idle for
    # IDLE (5 s, as long as the request threads) ends, so by now all of them may have.
    assert 1 <= added[True] <= 1 + 4

    server = start_server("--count", "0")
    client = Program(CLIENT, "--url", server.url, "--count", "3", "--interval", "0.5")
    try:
        client.wait_for(r"\[sender\] sent: client message 1 of 3")
        assert wait_until(
            lambda: len(os.listdir(f"/proc/{client.proc.pid}/task")) == 3
        )  # MainThread, sender, reader
    finally:
        client.kill()
