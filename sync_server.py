"""The article's server, with threads: upgrade /ws, read in one thread, send in another.

Go::

    http.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
        conn, _ := upgrader.Upgrade(w, r, nil)
        go reader(conn)
        for i := 0; i < 5; i++ { conn.WriteMessage(...); time.Sleep(time.Second) }
    })
    http.ListenAndServe("localhost:8080", nil)

Python: Werkzeug's threaded server runs each request in its own thread (the
``conn-N`` thread, Go's per-request goroutine). :class:`WebSocketApp`
upgrades ``/ws`` with simple-websocket, starts a ``conn-N-reader`` thread
(``go reader(conn)``) and runs the sender loop in the request's own thread.
The reader is the only thread reading the socket: it also answers pings and
close frames (see :class:`ServerTransport`), so a connection costs two
threads.

Run ``python sync_server.py --help`` for the options. Importing this module
has no side effects: :func:`create_app` gives a plain WSGI application and
:func:`start_server` serves it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import functools
import itertools
import logging
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple, NoReturn
from urllib.parse import urlsplit

import simple_websocket
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from common import (
    ABNORMAL_CLOSURE,
    CLOSE_TIMEOUT,
    DEFAULT_COUNT,
    DEFAULT_HOST,
    DEFAULT_INTERVAL,
    DEFAULT_PORT,
    GOING_AWAY,
    INTERNAL_ERROR,
    MESSAGE_TOO_BIG,
    WS_PATH,
    CloseRequired,
    EchoHandler,
    Message,
    OneLineParser,
    SenderHandler,
    Session,
    SessionClosed,
    SessionHandler,
    add_sender_options,
    count_arg,
    fail,
    positive_seconds_arg,
    run_session,
    run_until_signal,
    seconds_arg,
    setup_logging,
    shut_down,
)

log = logging.getLogger("wsdemo.server")

#: Where the browser page is served.
PAGE_PATH = "/"
#: Bytes read from the socket at a time.
READ_SIZE = 65536
#: Payloads up to this size go out in one write with their frame header;
#: larger ones are sent after it, uncopied.
SMALL_FRAME = 16384
OPCODE_TEXT, OPCODE_BINARY = 0x1, 0x2
#: Default limit on the size of one incoming message, in bytes (1 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
#: Default seconds between keepalive pings (proxies often drop connections
#: idle for 60 s; a peer that has not answered by the next ping is dead).
DEFAULT_PING_INTERVAL = 25.0
#: Default limit on sessions open at once; each costs two threads.
DEFAULT_MAX_CONNECTIONS = 1000
#: Seconds a client may take to send its whole HTTP request (and, with TLS, its
#: TLS handshake) before the connection is dropped.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: poll(2) where there is one: unlike select(2) it takes descriptors over
#: 1023, and unlike epoll it costs no file descriptor per connection.
_Poller: type[selectors.BaseSelector] = getattr(selectors, "PollSelector", selectors.SelectSelector)
#: Pending connections the kernel queues for us (Werkzeug's default, 128,
#: overflows when many clients connect at once).
LISTEN_BACKLOG = 1024


class _NoThread:
    """Stands in for the reader thread simple-websocket starts per connection.

    simple-websocket does the opening handshake; after that our own reader
    thread drives the connection (see :class:`ServerTransport`), so its
    thread would only be a third thread per connection fighting ours for
    the socket.
    """

    def __init__(self, target: Callable[[], None]) -> None:
        self.name = "unused"

    def start(self) -> None:
        """Start nothing: the session's reader does this thread's work."""


class ServerTransport:
    """The :class:`common.Transport` for the server side of one connection.

    After simple-websocket's handshake we drive its wsproto connection
    ourselves, which gives us what the library leaves out:

    * the session's reader thread is the only thread reading the socket;
    * every write (messages, pongs, close frames) goes through one lock and
      ``sendall``, so frames never interleave or go out truncated;
    * messages over ``max_message_size`` *bytes* end the session with 1009
      as soon as the excess arrives, whatever the frame header announced;
    * keepalive: with ``ping_interval`` the reader pings a quiet peer, and
      closes with 1011 if the next ping is due before the pong came back.

    Args:
        conn: the wsproto connection, opened by the handshake.
        sock: the connection's socket (owned by the server, not by us).
        max_message_size: largest message accepted, in bytes; None: no limit.
        ping_interval: seconds between keepalive pings; None: no pings.
        pending: bytes that arrived together with the handshake request.
    """

    def __init__(
        self,
        conn: WSConnection,
        sock: socket.socket,
        *,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        pending: bytes = b"",
    ) -> None:
        self.conn = conn
        self.sock = sock
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.wire_lock = threading.Lock()
        self._inbox: deque[Message] = deque()
        self._parts: list[Message] = []
        self._size = 0
        self._end: SessionClosed | CloseRequired | None = None
        self._awaiting_pong = False
        self._next_ping = time.monotonic() + (ping_interval or 0)
        # Waits for the socket to be readable or a ping to be due (ping_interval only).
        self._poller: selectors.BaseSelector | None = None
        if ping_interval:
            self._poller = _Poller()
            self._poller.register(sock, selectors.EVENT_READ)
        if pending:
            self._feed(pending)

    # --- reading: only ever called from the session's reader thread -------

    def receive(self) -> Message:
        """Next whole message; SessionClosed or CloseRequired at the end."""
        while not self._inbox:
            if self._end is not None:
                raise self._end
            self._feed(self._recv())
        return self._inbox.popleft()

    def _recv(self) -> bytes:
        if self.ping_interval:
            self._wait_readable_pinging()
        try:
            data = self.sock.recv(READ_SIZE)
        except OSError as error:
            raise SessionClosed(ABNORMAL_CLOSURE, str(error)) from None
        if not data:
            raise SessionClosed(ABNORMAL_CLOSURE, "the client went away without a close frame")
        return data

    def _wait_readable_pinging(self) -> None:
        assert self.ping_interval is not None and self._poller is not None
        while True:
            now = time.monotonic()
            if now >= self._next_ping:
                if self._awaiting_pong:
                    raise CloseRequired(INTERNAL_ERROR, "keepalive ping timeout")
                self._send_control(Ping(b"keepalive"))
                self._awaiting_pong = True
                self._next_ping = now + self.ping_interval
            if self._poller.select(self._next_ping - now):
                return

    def _feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._add_part(event)
            elif isinstance(event, Ping):
                self._send_control(event.response())
            elif isinstance(event, Pong):
                self._awaiting_pong = False
            elif isinstance(event, CloseConnection):
                if self.conn.state is ConnectionState.OPEN:
                    # wsproto could not parse what arrived (bad frame, bad
                    # UTF-8, bad close code): it reports the close code to
                    # send, without any close frame having been received.
                    self._end = CloseRequired(event.code, event.reason or "protocol error")
                else:
                    self._end = SessionClosed(event.code, event.reason or "")
            if self._end is not None:
                return

    def _announced_remainder(self) -> int:
        """Bytes the header of the frame being received announces but that have not come yet.

        Counting them lets us refuse a frame whose header announces more than
        the limit as soon as its first bytes arrive, before the rest is sent.
        wsproto has no public API for that header, so this peeks at its
        decoder, and counts nothing (only what has arrived) if that changes.
        """
        proto = getattr(getattr(self.conn, "connection", None), "_proto", None)
        decoder = getattr(proto, "_frame_decoder", None)
        header = getattr(decoder, "header", None)
        return max(getattr(header, "payload_len", 0) - getattr(decoder, "payload_consumed", 0), 0)

    def _add_part(self, event: TextMessage | BytesMessage) -> None:
        data = event.data
        self._size += len(data) if isinstance(data, (bytes, bytearray)) else len(data.encode())
        limit = self.max_message_size
        if limit is not None and self._size + self._announced_remainder() > limit:
            self._parts, self._size = [], 0
            self._end = CloseRequired(MESSAGE_TOO_BIG, f"message over {limit} bytes")
            return
        self._parts.append(data if isinstance(data, str) else bytes(data))
        if event.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            if len(parts) == 1:
                self._inbox.append(parts[0])
            elif isinstance(data, str):
                self._inbox.append("".join(parts))  # type: ignore[arg-type]
            else:
                self._inbox.append(b"".join(parts))  # type: ignore[arg-type]

    # --- writing: any thread, one at a time --------------------------------

    def send(self, message: Message) -> None:
        """Send text (str) or binary (bytes); raises SessionClosed if closing.

        We frame data messages ourselves instead of asking wsproto: a server's
        frames are unmasked and we declined compression, so the frame is a
        header of 2 to 10 bytes in front of the payload, and wsproto keeps no
        state for it. wsproto would copy the payload three times (1.9 ms per
        MiB, measured); here a large payload is not copied at all.
        """
        payload = message.encode() if isinstance(message, str) else message
        header = frame_header(OPCODE_TEXT if isinstance(message, str) else OPCODE_BINARY, len(payload))
        with self.wire_lock:
            if self.conn.state is not ConnectionState.OPEN:
                raise SessionClosed(GOING_AWAY, "the session is closing", by_peer=False)
            if len(payload) <= SMALL_FRAME:
                self._sendall(header + payload)  # one segment for small messages
            else:
                self._sendall(header)
                self._sendall(payload)

    def close(self, code: int, reason: str) -> None:
        """Send a close frame (or the reply to the peer's), once; never raises."""
        with self.wire_lock:
            if self.conn.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                return
            try:
                self._sendall(self.conn.send(CloseConnection(code, reason)))
            except SessionClosed:
                pass  # the peer is gone; nothing left to tell it

    def abort(self) -> None:
        """Shut the socket down: blocked reads and sends return at once."""
        shut_down(self.sock)

    def finish(self) -> None:
        """End the TCP connection cleanly once the session is over.

        Half-closes (the peer sees EOF after our close frame), then reads and
        discards what the peer still sends, for at most CLOSE_TIMEOUT: closing
        a socket with unread data sends a reset, and the peer would see 1006
        instead of our close code.
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + CLOSE_TIMEOUT
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(READ_SIZE):
                    break
        except OSError:
            pass  # reset, timed out, or already shut down: we are done either way
        self.abort()
        if self._poller is not None:
            self._poller.close()

    def _send_control(self, event: Ping | Pong) -> None:
        with self.wire_lock:
            if self.conn.state is ConnectionState.OPEN:
                try:
                    self._sendall(self.conn.send(event))
                except SessionClosed:
                    pass  # the reader finds out on its next recv

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise SessionClosed(ABNORMAL_CLOSURE, str(error)) from None


class Refusal(NamedTuple):
    """An HTTP answer instead of a session: status, one line of text, headers."""

    status: str
    text: str
    headers: tuple[tuple[str, str], ...] = ()


def frame_header(opcode: int, length: int) -> bytes:
    """The header of a final, unmasked frame (RFC 6455, section 5.2)."""
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, length)
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def is_websocket_upgrade(environ: dict[str, Any]) -> bool:
    """True if the request asks to switch to WebSocket (RFC 6455, 4.2.1)."""
    upgrade = environ.get("HTTP_UPGRADE", "").lower()
    connection = environ.get("HTTP_CONNECTION", "").lower()
    return "websocket" in upgrade and "upgrade" in (t.strip() for t in connection.split(","))


def is_valid_key(key: str) -> bool:
    """A Sec-WebSocket-Key must be 16 random bytes in base64 (RFC 6455, 4.1)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str] = ()) -> bool:
    """The origin check that stops cross-site WebSocket hijacking.

    A request without ``Origin`` comes from a program, not a browser page:
    allowed. A browser page may connect if it was served by this server
    (its origin's host:port is the request's Host) or its origin is listed
    in ``allowed`` (``*`` allows every origin).
    """
    if origin is None or "*" in allowed:
        return True
    if origin.rstrip("/").lower() in (a.rstrip("/").lower() for a in allowed):
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or not host:
        return False
    default_port = 443 if parts.scheme == "https" else 80
    try:
        origin_port = parts.port or default_port
        host_parts = urlsplit(f"//{host}")
        host_port = host_parts.port or default_port
    except ValueError:
        return False
    return (parts.hostname, origin_port) == (host_parts.hostname, host_port)


def check_handshake(environ: dict[str, Any], allowed_origins: Sequence[str] = ()) -> Refusal | None:
    """Why this request may not become a session, or None if it may."""
    if environ.get("PATH_INFO", "") != WS_PATH:
        return Refusal("404 Not Found", f"no such path; the WebSocket endpoint is {WS_PATH}")
    if not is_websocket_upgrade(environ):
        return Refusal(
            "400 Bad Request",
            f"{WS_PATH} speaks WebSocket only: send 'Connection: Upgrade' and 'Upgrade: websocket'",
        )
    if environ.get("REQUEST_METHOD") != "GET":
        return Refusal("405 Method Not Allowed", "a WebSocket handshake is a GET", (("Allow", "GET"),))
    if environ.get("SERVER_PROTOCOL") not in ("HTTP/1.1", "HTTP/2", "HTTP/2.0", "HTTP/3"):
        return Refusal("400 Bad Request", "a WebSocket handshake needs HTTP/1.1")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        return Refusal(
            "426 Upgrade Required",
            "only WebSocket version 13 is supported",
            (("Sec-WebSocket-Version", "13"),),
        )
    if not is_valid_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")):
        return Refusal("400 Bad Request", "Sec-WebSocket-Key must be 16 bytes in base64")
    if not origin_allowed(environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST"), allowed_origins):
        return Refusal("403 Forbidden", f"origin {environ.get('HTTP_ORIGIN')} is not allowed")
    return None


@functools.lru_cache(maxsize=1)
def page() -> bytes:
    """The browser page (``page.html``), read once on first use."""
    return (Path(__file__).resolve().parent / "page.html").read_bytes()


def page_response(start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``GET /``: a page that opens a WebSocket to ``/ws`` on the same host."""
    body = page()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            # Everything is inline; nothing may come from elsewhere.
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self' ws: wss:",
            ),
        ],
    )
    return [body]


def plain_response(start_response: Callable[..., Any], refusal: Refusal) -> Iterable[bytes]:
    """A one-line text/plain answer for a request that gets no session."""
    body = f"{refusal.text}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(refusal.status, [*headers, *refusal.headers])
    return [body]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What the server's sessions do, and the limits they run under.

    Attributes:
        count: messages the server sends to each client.
        interval: seconds between two of them.
        echo: instead of sending its own messages, send every message
            received straight back, text as text and binary as binary.
        max_message_size: largest incoming message in bytes (None: no
            limit); a larger one closes the session with 1009.
        ping_interval: seconds between keepalive pings (None: none); a
            client that has not answered one by the next closes with 1011.
        max_connections: sessions open at once; more get 503.
        allowed_origins: browser origins allowed besides the server's own
            (``*``: all).
        handler: your own per-connection logic (see
            :class:`common.SessionHandler`); it replaces count, interval and
            echo, and keeps everything else: accept, reader thread, limits,
            close. One handler object serves every connection, from several
            threads at once.
    """

    count: int = DEFAULT_COUNT
    interval: float = DEFAULT_INTERVAL
    echo: bool = False
    max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE
    ping_interval: float | None = DEFAULT_PING_INTERVAL
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    allowed_origins: tuple[str, ...] = ()
    handler: SessionHandler | None = None

    def session_handler(self) -> SessionHandler:
        """What each session does: ``handler`` if given, else echo or the demo sender."""
        if self.handler is not None:
            return self.handler
        return EchoHandler() if self.echo else SenderHandler(self.count, self.interval, "server")


class WebSocketApp:
    """The WSGI application: ``/ws`` runs a session, anything else is refused.

    Each session runs in the server's request thread. Requests that cannot
    become a session get a one-line answer (see :func:`check_handshake`):
    404 for other paths, 400 for a plain GET on ``/ws`` or a malformed
    handshake, 405, 426, 403 for a foreign origin, and 503 beyond
    ``max_connections`` or once :meth:`shutdown` has begun. Works on
    Werkzeug's threaded server and on gunicorn's gthread worker (the servers
    simple-websocket can take the socket from).

    Args:
        config: what the sessions do and the limits they run under.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._numbers = itertools.count(1)
        # Guards the three fields below; notified whenever a session ends.
        self._sessions_changed = threading.Condition()
        self._admitted = 0  # requests between admission and the end of their session
        self._sessions: set[Session] = set()
        self._accepting = True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Handle one request (the WSGI entry point)."""
        if environ.get("PATH_INFO") == PAGE_PATH and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return page_response(start_response)
        refusal = check_handshake(environ, self.config.allowed_origins) or self._admit()
        if refusal is not None:
            log.info(
                "refused %s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), refusal.status
            )
            return plain_response(start_response, refusal)
        try:
            return self._serve_session(environ, start_response)
        finally:
            with self._sessions_changed:
                self._admitted -= 1
                self._sessions_changed.notify_all()

    def shutdown(
        self, code: int = GOING_AWAY, reason: str = "server shutting down", timeout: float = 3 * CLOSE_TIMEOUT
    ) -> bool:
        """Refuse new sessions, close every open one with ``code``, and wait.

        Returns True if every session has ended within ``timeout`` seconds.
        """
        with self._sessions_changed:
            self._accepting = False
            sessions = list(self._sessions)
        for session in sessions:
            session.close(code, reason)
        with self._sessions_changed:
            return self._sessions_changed.wait_for(lambda: self._admitted == 0, timeout)

    @property
    def session_count(self) -> int:
        """Sessions open right now."""
        with self._sessions_changed:
            return len(self._sessions)

    def sessions(self) -> list[Session]:
        """The sessions open right now. Any thread may ``send()`` on them."""
        with self._sessions_changed:
            return list(self._sessions)

    def _admit(self) -> Refusal | None:
        with self._sessions_changed:
            if not self._accepting:
                return Refusal("503 Service Unavailable", "the server is shutting down")
            if self._admitted >= self.config.max_connections:
                limit = self.config.max_connections
                return Refusal("503 Service Unavailable", f"too many connections (limit {limit})")
            self._admitted += 1
            return None

    def _serve_session(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        name = f"conn-{next(self._numbers)}"
        thread = threading.current_thread()
        server_thread_name, thread.name = thread.name, name
        try:
            try:
                ws = simple_websocket.Server.accept(without_compression(environ), thread_class=_NoThread)
            except Exception as error:  # wsproto refused what we let through
                return plain_response(start_response, Refusal("400 Bad Request", f"bad handshake: {error}"))
            transport = ServerTransport(
                ws.ws,
                ws.sock,
                max_message_size=self.config.max_message_size,
                ping_interval=self.config.ping_interval,
                pending=unread_request_bytes(environ, ws.sock),
            )
            self._run(transport, name, peer=f"{environ.get('REMOTE_ADDR')}:{environ.get('REMOTE_PORT')}")
        finally:
            thread.name = server_thread_name
        end_hijacked_request(ws.mode)

    def _run(self, transport: ServerTransport, name: str, peer: str) -> None:
        sock = transport.sock
        sock.settimeout(None)  # the request timeout must not apply to the session
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(transport)
        with self._sessions_changed:
            self._sessions.add(session)
            if not self._accepting:  # shutdown began during our handshake
                session.close(GOING_AWAY, "server shutting down")
        try:
            log.info("connected: %s", peer)
            run_session(session, self.config.session_handler(), reader_name=f"{name}-reader")
        finally:
            # Go: defer conn.Close(). Whatever happened, the connection ends here.
            transport.finish()
            with self._sessions_changed:
                self._sessions.discard(session)


def without_compression(environ: dict[str, Any]) -> dict[str, Any]:
    """The request as simple-websocket should see it: offering no extensions.

    simple-websocket accepts permessage-deflate whenever a client offers it;
    declining it (RFC 7692 lets a server) avoids wsproto 1.3.2 delivering
    fragments still compressed when a ping arrives between them, and
    inflation with no output limit (a small frame can inflate to megabytes
    before any size check).
    """
    return {k: v for k, v in environ.items() if k != "HTTP_SEC_WEBSOCKET_EXTENSIONS"}


def unread_request_bytes(environ: dict[str, Any], sock: socket.socket) -> bytes:
    """Bytes the client sent right behind its request, if the server read them.

    Werkzeug reads the request through a buffered file, which may already
    hold the start of the client's first frame. We take those bytes back
    without blocking; the reader feeds them to wsproto before reading on.
    """
    rfile = environ.get("wsgi.input")
    peek = getattr(rfile, "peek", None)
    if peek is None:
        return b""
    sock.setblocking(False)
    try:
        buffered = peek(READ_SIZE)
        data: bytes = rfile.read(len(buffered)) if buffered else b""  # type: ignore[union-attr]
    except OSError:
        data = b""
    finally:
        sock.setblocking(True)
    return data


def end_hijacked_request(mode: str) -> NoReturn:
    """End a request whose socket was taken over, without writing a response.

    Returning a response would put HTTP bytes on the wire after the close
    frame. Werkzeug treats ConnectionError as a dropped connection and writes
    nothing; gunicorn does the same for StopIteration (as flask-sock does).
    """
    if mode == "gunicorn":
        raise StopIteration
    raise ConnectionAbortedError("WebSocket session over")


def create_app(config: ServerConfig | None = None, **settings: Any) -> WebSocketApp:
    """Build the WSGI application.

    ``create_app(echo=True)`` changes single settings of the default
    :class:`ServerConfig`; ``create_app(config)`` takes a whole one.
    """
    return WebSocketApp(dataclasses.replace(config or ServerConfig(), **settings))


def format_url(host: str, port: int, secure: bool = False) -> str:
    """``ws://host:port/ws`` (``wss://`` if secure), brackets around IPv6."""
    if ":" in host:
        host = f"[{host}]"
    return f"{'wss' if secure else 'ws'}://{host}:{port}{WS_PATH}"


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen, raising OSError (rather than Werkzeug's SystemExit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler, with a deadline and TLS in the connection's thread.

    Werkzeug has no request timeout, so a client that opens a connection and
    never finishes its request holds a thread for ever; here it is dropped
    after ``handshake_timeout``. With TLS, Werkzeug would do the TLS
    handshake in the acceptor thread, where one silent client stalls every
    other; here each connection does its own, under the same deadline.
    """

    server: WebSocketServer

    def setup(self) -> None:
        """Name the thread, apply the deadline and, with TLS, do the TLS handshake."""
        # socketserver names it "Thread-N (process_request_thread)"; the app
        # renames it conn-N for a session, and this is its name until then.
        threading.current_thread().name = f"request-{self.client_address[1]}"
        self.request.settimeout(self.server.handshake_timeout)  # the session clears it
        self.tls_failed = False
        context = self.server.tls_context
        if context is not None:
            # The TLS socket inherits the deadline.
            self.request = context.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
            try:
                self.request.do_handshake()
            except OSError as error:  # ssl.SSLError, a timeout, or a reset
                self.tls_failed = True
                log.warning("TLS handshake with %s failed: %s", self.client_address[0], error)
        super().setup()

    def handle(self) -> None:
        """Serve the connection's requests, unless its TLS handshake failed."""
        if not self.tls_failed:
            super().handle()

    def finish(self) -> None:
        """Close the connection's files and, with TLS, the TLS socket itself."""
        super().finish()
        if self.server.tls_context is not None:
            self.request.close()  # socketserver closes only the plain socket it accepted


class WebSocketServer(ThreadedWSGIServer):
    """Werkzeug's threaded server with our request handler and its settings."""

    def __init__(
        self,
        sock: socket.socket,
        app: WebSocketApp,
        *,
        tls_context: ssl.SSLContext | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        host, port = sock.getsockname()[:2]
        # Werkzeug duplicates the descriptor of a socket it is handed.
        super().__init__(host, port, app, handler=RequestHandler, fd=sock.fileno())
        self.tls_context = tls_context
        self.handshake_timeout = handshake_timeout
        # Tells Werkzeug to report https:// to the application.
        self.ssl_context = tls_context


class RunningServer:
    """A :class:`WebSocketApp` served by Werkzeug's threaded server.

    The ``acceptor`` thread accepts connections; Werkzeug gives each one a
    thread of its own. Use :func:`start_server` to create one.
    """

    def __init__(self, app: WebSocketApp, httpd: WebSocketServer, host: str) -> None:
        self.app = app
        self.httpd = httpd
        self.port: int = httpd.port
        self.url = format_url(host, self.port, secure=httpd.tls_context is not None)
        #: Set when the acceptor has stopped (after :meth:`shutdown`).
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, name="acceptor")

    def _accept(self) -> None:
        try:
            self.httpd.serve_forever(poll_interval=0.1)
        finally:
            self.stopped.set()

    def shutdown(self, timeout: float = 3 * CLOSE_TIMEOUT) -> bool:
        """Stop accepting, close every session with 1001, wait for them.

        Returns True if everything ended within ``timeout`` seconds. Call it
        from any thread but the acceptor (socketserver's rule).
        """
        self.httpd.shutdown()
        self.thread.join()
        return self.app.shutdown(timeout=timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def start_server(
    app: WebSocketApp,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    tls_context: ssl.SSLContext | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> RunningServer:
    """Listen on ``host:port`` (0 picks a free port) and serve ``app`` in threads.

    With ``tls_context`` the server speaks ``wss://``. A client gets
    ``handshake_timeout`` seconds to send its request (and TLS handshake).
    Returns once the socket is listening, so clients may connect at once.
    Raises OSError if the address cannot be used (port in use, bad host).
    """
    sock = listen(host, port)
    try:
        httpd = WebSocketServer(sock, app, tls_context=tls_context, handshake_timeout=handshake_timeout)
    finally:
        sock.close()
    server = RunningServer(app, httpd, host)
    server.thread.start()
    return server


def tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server-side TLS context from a PEM certificate (chain) and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


# --- Running under gunicorn (see gunicorn.conf.py) -----------------------------


def close_sessions_on_graceful_stop(worker: Any) -> None:
    """gunicorn ``post_worker_init`` hook: a graceful stop closes sessions with 1001.

    gunicorn owns the signals, so our SIGTERM handler never runs there. On
    SIGTERM its gthread worker stops accepting and waits up to
    ``graceful_timeout`` for open requests, and an open WebSocket session is
    one. We chain its handler: it still begins the stop, and a thread closes
    every session with 1001 so that their requests end within a second or so.
    """
    app = worker.wsgi
    begin_stop = worker.handle_exit

    def handle_exit(signum: int, frame: object) -> None:
        begin_stop(signum, frame)
        if isinstance(app, WebSocketApp):
            threading.Thread(target=app.shutdown, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, handle_exit)


def close_sessions_on_quick_stop(worker: Any) -> None:
    """gunicorn ``worker_int`` hook: Ctrl+C (SIGINT, SIGQUIT) closes sessions with 1001 first."""
    if isinstance(worker.wsgi, WebSocketApp):
        worker.wsgi.shutdown()


def build_parser() -> OneLineParser:
    """The command line of ``sync_server.py``."""
    parser = OneLineParser(
        prog="sync_server.py",
        description="WebSocket server: sends COUNT messages to each client and prints what it receives.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port",
        type=port_arg,
        default=DEFAULT_PORT,
        help=f"port, 0 for any free one (default {DEFAULT_PORT})",
    )
    add_sender_options(parser)
    parser.add_argument(
        "--echo", action="store_true", help="send every message back instead of sending our own"
    )
    parser.add_argument(
        "--max-message-size",
        type=count_arg,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help="largest message accepted; larger ones close with 1009; 0: no limit"
        f" (default {DEFAULT_MAX_MESSAGE_SIZE})",
    )
    parser.add_argument(
        "--ping-interval",
        type=seconds_arg,
        default=DEFAULT_PING_INTERVAL,
        metavar="SECONDS",
        help="keepalive ping period; a client that has not answered a ping by the next is"
        f" dropped; 0: off (default {DEFAULT_PING_INTERVAL:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=count_arg,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"sessions open at once; more get HTTP 503 (default {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=positive_seconds_arg,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="time a client has to send its whole request (and TLS handshake) before it is"
        f" dropped (default {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    parser.add_argument("--certfile", help="PEM certificate (chain): serve wss:// instead of ws://")
    parser.add_argument("--keyfile", help="PEM private key, if it is not in --certfile")
    parser.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed to connect besides the server's own, e.g."
        " https://example.com; repeatable; '*' allows all",
    )
    return parser


def port_arg(text: str) -> int:
    """argparse type: a TCP port, 0-65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until Ctrl+C or SIGTERM; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # we log refusals ourselves
    app = create_app(
        count=args.count,
        interval=args.interval,
        echo=args.echo,
        max_message_size=args.max_message_size or None,
        ping_interval=args.ping_interval or None,
        max_connections=args.max_connections,
        allowed_origins=tuple(args.allowed_origin),
    )
    context = None
    if args.certfile:
        try:
            context = tls_context(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as error:
            fail(parser.prog, f"cannot use the certificate {args.certfile}: {error.strerror or error}")
    elif args.keyfile:
        fail(parser.prog, "--keyfile needs --certfile", status=2)
    try:
        server = start_server(
            app, args.host, args.port, tls_context=context, handshake_timeout=args.handshake_timeout
        )
    except OSError as error:
        fail(parser.prog, f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    log.info("listening on %s", server.url)
    run_until_signal(server.stopped, on_signal=server.shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
