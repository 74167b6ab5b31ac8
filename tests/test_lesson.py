"""docs/threads-vs-goroutines.md stays true: its links resolve, its experiment holds."""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
from collections.abc import Callable

import pytest
from helpers import CLIENT, ROOT, Program, ServerProgram, wait_until, websocket_client

from wsthreads.serving import REQUEST_THREAD_IDLE

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

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
