"""Test helpers: the two programs as real subprocesses, and a raw WebSocket peer.

Nothing here is mocked: servers listen on real ports (port 0), clients dial
them over loopback, and the raw peer speaks RFC 6455 byte by byte so tests
can check exactly what is on the wire.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = str(ROOT / "sync_server.py")
CLIENT = str(ROOT / "sync_client.py")

#: Bound for anything a test waits on; generous for a loaded CI machine.
WAIT = 10.0


def require(available: object, what: str, install: str) -> None:
    """Skip a test whose peer toolchain is missing, with the command that installs it.

    CI sets WSTHREADS_REQUIRE_PEERS=1: there a missing peer fails the test
    instead, so a green CI run means every pairing really ran.
    """
    if available:
        return
    message = f"{what} not installed; install with: {install}"
    if os.environ.get("WSTHREADS_REQUIRE_PEERS"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A port nothing listens on: bind to port 0, note the port, let it go."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def accepting(port: int, proc: subprocess.Popen[str]) -> bool:
    """Whether something accepts on 127.0.0.1:``port``, or ``proc`` has exited (no use waiting)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return proc.poll() is not None


def wait_until(condition: Callable[[], bool], timeout: float = WAIT, step: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(step)
    return True


class Program:
    """A program running as a subprocess, its output collected live.

    ``Program(SERVER, "--echo")`` runs one of our Python programs;
    ``Program("/path/to/binary", ...)`` runs anything else.
    """

    def __init__(self, program: str, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        command = [sys.executable, program] if program.endswith(".py") else [program]
        self.proc = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            text=True,
            encoding="utf-8",
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _collect(self, stream: object | None, lines: list[str]) -> None:
        assert stream is not None
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = WAIT, stream: str = "stdout") -> re.Match[str]:
        """Wait for a line of output matching ``pattern``; its match."""
        lines = self.stdout if stream == "stdout" else self.stderr
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found.extend(m for m in map(regex.search, lines) if m)
            return bool(found) or self.proc.poll() is not None

        with self._changed:
            self._changed.wait_for(seen, timeout)
        if not found:
            raise AssertionError(f"no line matching {pattern!r} in {stream}:\n{self.output()}")
        return found[0]

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = WAIT) -> int:
        """Wait for the exit status; then all output has been collected."""
        status = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def output(self) -> str:
        return "\n".join(["--- stdout", *self.stdout, "--- stderr", *self.stderr])

    def count_lines(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.stdout if regex.search(line))


class ServerProgram(Program):
    """``sync_server.py --port 0`` running, with its URL and port known."""

    def __init__(self, *args: str) -> None:
        super().__init__(SERVER, "--port", "0", *args)
        self.url = self.wait_for(r"listening on (wss?://\S+)").group(1)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def run_client(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``sync_client.py`` to completion."""
    return subprocess.run(
        [sys.executable, CLIENT, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONIOENCODING="utf-8"),
    )


# --- A raw WebSocket peer --------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One RFC 6455 frame; clients must mask, so mask by default.

    ``rsv`` sets the reserved bits (0-7); ``length`` announces a payload
    length other than the real one, for frames that lie.
    """
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    if length is None:
        length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def decode_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Every whole frame in ``data`` (masked or not): (opcode, unmasked payload)."""
    frames = []
    while len(data) >= 2:
        opcode, masked, length, at = data[0] & 0x0F, data[1] & 0x80, data[1] & 0x7F, 2
        if length == 126:
            (length,), at = struct.unpack("!H", data[2:4]), 4
        elif length == 127:
            (length,), at = struct.unpack("!Q", data[2:10]), 10
        key = data[at : at + 4] if masked else b"\0\0\0\0"
        at += 4 if masked else 0
        if len(data) < at + length:
            break
        frames.append((opcode, bytes(b ^ key[i % 4] for i, b in enumerate(data[at : at + length]))))
        data = data[at + length :]
    return frames


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class RawPeer:
    """A WebSocket client written on a bare socket, for checking the wire."""

    def __init__(
        self,
        port: int,
        path: str = "/ws",
        host: str = "127.0.0.1",
        *,
        headers: dict[str, str] | None = None,
        pipelined: bytes = b"",
    ) -> None:
        """Connect and upgrade; ``pipelined`` goes out in the same write as the request."""
        self.sock = socket.create_connection((host, port), timeout=WAIT)
        fields = {
            "Host": f"{host}:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
            **(headers or {}),
        }
        lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode() + pipelined)
        self.buffer = b""
        self.response_head = self._read_until(b"\r\n\r\n")
        self.status_line = self.response_head.split(b"\r\n", 1)[0].decode()
        if " 101 " not in self.status_line:
            raise AssertionError(f"handshake refused: {self.status_line}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buffer += data

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.sock.sendall(encode_frame(opcode, payload, **kwargs))

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        assert not second & 0x80, "the server masked a frame"
        return first & 0x0F, self._take(length)

    def read_until_close(self) -> tuple[list[tuple[int, bytes]], bytes]:
        """Frames up to and including the close frame; the close payload."""
        frames = []
        while True:
            opcode, payload = self.read_frame()
            frames.append((opcode, payload))
            if opcode == OP_CLOSE:
                return frames, payload

    def close_code(self) -> int:
        """Read up to the server's close frame; the code in it."""
        _, payload = self.read_until_close()
        code: int = struct.unpack("!H", payload[:2])[0]
        return code

    def rest_until_eof(self, timeout: float = WAIT) -> bytes:
        """Every byte the server sends until it closes the connection."""
        self.sock.settimeout(timeout)
        rest, self.buffer = self.buffer, b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return rest
            rest += data

    def reset(self) -> None:
        """Vanish: close with an RST instead of a close handshake."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455, 4.2.2)."""
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


class RawServer:
    """A one-connection WebSocket server on a bare socket, scripted by the test.

    ``script(conn)`` runs in a thread once the handshake is done; whatever it
    does to the socket is what the client under test meets.
    """

    def __init__(
        self, script: Callable[[socket.socket], None], answer: bytes | None = None, behind: bytes = b""
    ) -> None:
        """``answer``: send these bytes instead of the correct 101 response; ``behind``: in its write."""
        self.answer = answer
        self.behind = behind
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.script = script
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.IGNORECASE)
            assert key is not None
            conn.sendall(
                self.answer
                or b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {accept_key(key.group(1).decode())}\r\n\r\n".encode()
                + self.behind
            )
            self.script(conn)

    def close(self) -> None:
        self.thread.join(WAIT)
        self.listener.close()


def assert_stop_closes_sessions(
    server: Program, url: str, signum: int, within: float, first: str = "server message 1 of 1000"
) -> None:
    """Stop ``server`` with ``signum`` while a client is mid-session (once it has received ``first``).

    The client must see 1001 "server shutting down" and exit 0, and the
    server must exit 0 within ``within`` seconds, without a traceback.
    """
    client = Program(CLIENT, "--url", url, "--count", "1000", "--interval", "5")
    client.wait_for(rf"received: {first}")
    started = time.monotonic()
    server.signal(signum)
    assert server.wait(timeout=within + 10) == 0, server.output()
    assert time.monotonic() - started < within
    assert client.wait() == 0, client.output()
    client.wait_for(r"peer closed the connection: 1001 \(going away\) 'server shutting down'")
    assert "Traceback" not in server.output() + client.output()


def websocket_client(url: str) -> Any:
    """A plain websocket-client connection: an independent peer for our server."""
    import websocket

    return websocket.create_connection(url, timeout=WAIT)


def assert_close_cuts_the_dial_short(client: Any, after: float) -> None:
    """Connect ``client`` (a wsthreads.WebSocketClient) in a thread, close() it ``after`` seconds in:
    the dial must end with ConnectError within a second of the close."""
    from wsthreads import ConnectError

    errors: list[ConnectError] = []

    def dial() -> None:
        try:
            client.connect()
        except ConnectError as error:
            errors.append(error)

    dialer = threading.Thread(target=dial, name="test-dialer")
    dialer.start()
    time.sleep(after)
    started = time.monotonic()
    client.close()
    dialer.join(2.0)
    assert not dialer.is_alive() and errors
    assert time.monotonic() - started < 1.0
    assert str(errors[0]).startswith("the client was closed while dialing") and not errors[0].retryable


# --- Redis, for the broker tests -----------------------------------------

#: Debian's Redis (``apt-get install -y redis-server``), if it is installed.
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def pubsub_of(server: Any) -> Any:
    """The PubSub extension of a running server's app (``server.app``)."""
    from wsthreads import PubSub

    return next(extension for extension in server.app.config.extensions if isinstance(extension, PubSub))


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to (or replacing those in) its query: ``?stream=NAME``."""
    parts = urlsplit(url)
    kept = parse_qsl(parts.query, keep_blank_values=True)
    query = [(key, value) for key, value in kept if key not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """True if a Redis on ``port`` answers PING with PONG now (not while it loads its data)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` on a free loopback port, stoppable and restartable on that port.

    ``persistent``: an append-only file in ``directory``, so what it holds
    survives a stop (SIGTERM) and a start; otherwise nothing is saved.
    :meth:`kill` (in a ``finally``) stops it for good.
    """

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.directory = directory
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(3):  # the free port may be taken by someone else in between: another one
            self.port = free_port()
            if self.start(must=False):
                return
        raise AssertionError(f"redis-server did not start:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, must: bool = True) -> bool:
        """Start it (again) on its port; True once it answers PING (with ``must``, else AssertionError)."""
        assert self.proc is None or self.proc.poll() is not None, "redis-server is running already"
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "no"]
        command += ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        command += ["--save", "", "--appendonly", "yes" if self.persistent else "no"]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or redis_ping(self.port), timeout=WAIT, step=0.05)
        if redis_ping(self.port):
            return True
        self.kill()
        if must:
            raise AssertionError(f"redis-server did not answer on port {self.port}:\n{self.log()}")
        return False

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Stop it with ``signum`` (SIGTERM: it writes its data first) and wait; its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"redis-server did not stop within {WAIT:g} s") from None

    def kill(self) -> None:
        """Stop it at once, if it runs (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)

    def log(self) -> str:
        try:
            return (self.directory / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"


def upgrade(
    port: int,
    *,
    path: str = "/ws",
    source: str = "127.0.0.1",
    headers: str = "",
    receive_buffer: int | None = None,
) -> tuple[str, dict[str, str], socket.socket]:
    """A raw upgrade request from ``source`` (``headers``: more lines, each ending in CRLF).

    Returns the answer's status line, its headers (lower-case names) and the
    socket, blocking, with nothing after the answer's head read from it.
    """
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(WAIT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)  # byte by byte: nothing of the first frames is read here
        assert chunk, f"server closed during the handshake: {answer!r}"
        answer += chunk
    sock.settimeout(None)
    status, *lines = answer.decode().split("\r\n\r\n")[0].split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return status, {name.lower(): value for name, value in fields.items()}, sock


def open_client(port: int, receive_buffer: int | None = None, path: str = "/ws") -> socket.socket:
    """A raw WebSocket client of ``path``, handshake done (its frames are read by the caller)."""
    status, _, sock = upgrade(port, path=path, receive_buffer=receive_buffer)
    assert status == "HTTP/1.1 101 Switching Protocols", status
    return sock
