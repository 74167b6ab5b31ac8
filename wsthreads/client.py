"""The client: dial with websocket-client, then run the same connection core as the server.

websocket-client does what it is good at: the URL, the HTTP handshake,
headers. We open the TCP connection and the TLS session ourselves, so that a
deadline bounds the whole dial (websocket-client's timeout bounds each read,
and a server that drips its answer one byte at a time never trips it) and a
``close()`` from another thread can cut a dial short. We check the server's
answer strictly (:func:`wsthreads.handshake.check_response`) and follow no
redirect. Then a :class:`~wsthreads.connection.Connection` owns the socket.

:class:`Client` is the one lifecycle of both the command-line client and
:class:`WebSocketClient`: dial, run a session, and with ``reconnect`` dial
again after a growing backoff when the session ended with a code that means
"try again"; ``close()`` wins over a pending dial.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Callable
from urllib.parse import urlsplit

import websocket

from .connection import (
    CLOSE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    NORMAL_CLOSURE,
    RETRYABLE_CODES,
    WRITE_TIMEOUT,
    Closed,
    Connection,
    Message,
    shut_down,
)
from .deadlines import deadlines
from .handshake import check_response, new_key
from .session import Handler, run_session

log = logging.getLogger("wsthreads.client")

DEFAULT_URL = "ws://localhost:8080/ws"
#: Seconds for the whole dial: TCP connect, TLS, and the opening handshake.
DIAL_TIMEOUT = 10.0
#: First and largest delay between two dials when reconnecting (seconds).
BACKOFF = (0.5, 30.0)
#: A session that lasted this long (seconds) was a success: the backoff starts over.
STABLE_SESSION = 10.0
#: HTTP statuses of a refused handshake that are worth another try later.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class ConnectError(Exception):
    """The client could not open a session; the message is one line.

    ``retryable`` is False when dialing again cannot help: a bad URL, a
    refusal such as 403 or 404, an untrusted certificate, a wrong handshake.
    """

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class NotConnected(Exception):
    """``send()`` found no open connection: not yet, no longer, or between reconnects.

    The client raises rather than queues: a message is either on the wire or
    the caller knows it is not, so nothing is silently held and lost.
    """


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How the client dials, and the limits its connections run under.

    Attributes:
        timeout: seconds for the whole dial (TCP, TLS, opening handshake).
        cafile: PEM file of CA certificates to trust for ``wss://``
            (default: the system's).
        max_message_size: largest incoming message in bytes (None: no limit);
            a larger one closes with 1009 before its payload is read.
        write_timeout: seconds one write may take before the server counts
            as not reading.
        close_timeout: seconds a close may take before the connection is cut.
    """

    timeout: float = DIAL_TIMEOUT
    cafile: str | None = None
    max_message_size: int | None = MAX_MESSAGE_SIZE
    write_timeout: float = WRITE_TIMEOUT
    close_timeout: float = CLOSE_TIMEOUT


def parse_url(url: str) -> tuple[str, int, bool]:
    """Host, port and whether TLS is used; ConnectError for anything but ``ws://`` or ``wss://``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConnectError(f"invalid URL {url!r}: {error}", retryable=False) from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConnectError(
            f"invalid URL {url!r}: expected ws://HOST:PORT/PATH or wss://HOST:PORT/PATH", retryable=False
        )
    secure = parts.scheme == "wss"
    return parts.hostname, port or (443 if secure else 80), secure


def dial(
    url: str,
    config: ClientConfig | None = None,
    *,
    track: Callable[[socket.socket], None] | None = None,
    name: str = "reader",
) -> Connection:
    """Open a connection to ``url`` within ``config.timeout`` seconds, all steps together.

    ``track`` is told the socket as soon as it exists (and again after TLS
    wraps it), so another thread can shut it down to cut the dial short.
    Returns the connection, its reader not started yet. Raises ConnectError
    with a one-line explanation on any failure.
    """
    config = config or ClientConfig()
    host, port, secure = parse_url(url)
    deadline = time.monotonic() + config.timeout
    sock = open_tcp(url, host, port, config, deadline, track)
    armed = deadlines.arm(sock, max(deadline - time.monotonic(), 0))
    try:
        if secure:
            context = ssl.create_default_context(cafile=config.cafile)
            sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            deadlines.retarget(armed, sock)  # the plain socket object gave its descriptor away
            if track is not None:
                track(sock)
            sock.do_handshake()
        key = new_key()
        ws = websocket.create_connection(
            url,
            socket=sock,
            header={"Sec-WebSocket-Key": key},
            redirect_limit=0,
            enable_multithread=False,
        )
        if ws.getstatus() != 101:
            problem: str | None = f"HTTP {ws.getstatus()} instead of 101 (redirects are not followed)"
        else:
            problem = check_response(ws.getheaders() or {}, key)
        if problem is not None:
            raise ConnectError(f"{url} answered the handshake wrongly: {problem}", retryable=False)
    except ConnectError:
        sock.close()
        raise
    except Exception as error:
        sock.close()
        message = describe_dial_error(url, config, error, deadline)
        raise ConnectError(message, retryable=is_retryable(error)) from error
    finally:
        deadlines.disarm(armed)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # websocket-client reads the response one byte at a time: nothing of the
    # first frames is left in its buffers, and from here on we read.
    return Connection(
        sock,
        client=True,
        max_message_size=config.max_message_size,
        write_timeout=config.write_timeout,
        close_timeout=config.close_timeout,
        name=name,
    )


def open_tcp(
    url: str,
    host: str,
    port: int,
    config: ClientConfig,
    deadline: float,
    track: Callable[[socket.socket], None] | None,
) -> socket.socket:
    """TCP-connect to the first address of ``host`` that answers, all within the deadline.

    Each socket is shown to ``track`` before it connects, so a close() can
    cut even this step short.
    """
    error: OSError = TimeoutError()
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as failure:
        raise ConnectError(describe_dial_error(url, config, failure, deadline)) from failure
    for family, kind, proto, _, address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            if track is not None:
                track(sock)
            sock.settimeout(left)
            sock.connect(address)
            return sock
        except OSError as failure:
            sock.close()
            error = failure
        except BaseException:
            sock.close()
            raise
    raise ConnectError(describe_dial_error(url, config, error, deadline)) from error


def describe_dial_error(url: str, config: ClientConfig, error: BaseException, deadline: float) -> str:
    """One line telling why dialing ``url`` failed."""
    if isinstance(error, websocket.WebSocketBadStatusException):
        return f"{url} refused the WebSocket handshake: HTTP {describe_status(error)}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the TLS certificate of {url} is not trusted: {error.verify_message} (see --cafile)"
    if time.monotonic() >= deadline or isinstance(error, (websocket.WebSocketTimeoutException, TimeoutError)):
        return f"no answer from {url} within {config.timeout:g} s"
    if isinstance(error, socket.gaierror):
        return f"cannot find the host of {url}: {error.strerror or error}"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake with {url} failed: {error.reason or error}"
    if isinstance(error, ConnectionRefusedError):
        return f"cannot connect to {url}: connection refused (is the server running?)"
    if isinstance(error, websocket.WebSocketException) and "Redirect" in str(error):
        return f"{url} answered with a redirect, which is not followed"
    if isinstance(error, websocket.WebSocketException) and "Header" in str(error):
        return f"{url} answered the handshake wrongly ({error})"
    if isinstance(error, websocket.WebSocketConnectionClosedException):
        return f"{url} closed the connection during the handshake"
    return f"cannot connect to {url}: {error}"


def is_retryable(error: BaseException) -> bool:
    """Whether a dial that failed with ``error`` may succeed later."""
    if isinstance(error, websocket.WebSocketBadStatusException):
        return error.status_code in RETRYABLE_STATUSES
    if isinstance(error, (ssl.SSLCertVerificationError, ValueError)):
        return False
    return not (isinstance(error, websocket.WebSocketException) and "Header" in str(error))


def describe_status(error: websocket.WebSocketBadStatusException) -> str:
    """``404 Not Found: no such path; ...``: the status line and the server's one-line reason."""
    # websocket-client < 1.9.1 (the last for Python 3.9) does not keep the reason phrase.
    phrase = getattr(error, "status_message", None)
    if not phrase:
        try:
            phrase = HTTPStatus(error.status_code).phrase
        except ValueError:
            phrase = ""
    text = f"{error.status_code} {phrase}".strip()
    body = getattr(error, "resp_body", None)
    if isinstance(body, bytes):
        line = body.decode(errors="replace").strip().splitlines()
        if line and len(line[0]) <= 200 and "<" not in line[0]:
            text += f": {line[0]}"
    return text


def backoff_delays(first: float = BACKOFF[0], cap: float = BACKOFF[1]) -> Iterator[float]:
    """Delays before reconnect attempts: exponential, capped, with jitter.

    Doubles from ``first`` up to ``cap``; each delay is drawn between half
    and all of that ("equal jitter"), so clients that lost the same server at
    the same moment do not all come back at the same moment.
    """
    ceiling = first
    while True:
        yield random.uniform(ceiling / 2, ceiling)
        ceiling = min(cap, ceiling * 2)


class Client:
    """One client's lifecycle, for the command line and for :class:`WebSocketClient`.

    :meth:`run` dials (unless given a first connection), runs a session with a
    handler, and with ``reconnect`` dials again after the session ends with a
    code that means "try again" (1001, 1006, 1011-1014): a policy violation or
    a protocol error is final. The backoff keeps growing across sessions that
    end quickly and starts over after one that lasted :data:`STABLE_SESSION`.
    :meth:`close` may come from any thread at any time and wins: over a
    session (closed with its code), a backoff delay, and a dial in progress.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        config: ClientConfig | None = None,
        *,
        reconnect: bool = False,
        backoff: tuple[float, float] = BACKOFF,
        reader_name: str = "reader",
    ) -> None:
        self.url = url
        self.config = config or ClientConfig()
        self.reconnect = reconnect
        self.backoff = backoff
        self.reader_name = reader_name
        self._closing = threading.Event()
        self._close_with = (NORMAL_CLOSURE, "")
        self._lock = threading.Lock()  # guards the two fields below
        self._conn: Connection | None = None
        self._dialing: socket.socket | None = None

    @property
    def connection(self) -> Connection | None:
        """The open connection, if there is one now."""
        with self._lock:
            conn = self._conn
        return conn if conn is not None and not conn.done.is_set() else None

    def in_reader(self) -> bool:
        """True when called from the reader thread of the current connection."""
        with self._lock:
            conn = self._conn
        return conn is not None and threading.current_thread() is conn.reader

    def dial(self) -> Connection:
        """Dial once; the connection, its reader not started. ConnectError on failure or after close()."""
        try:
            conn = dial(self.url, self.config, track=self._track, name=self.reader_name)
        finally:
            with self._lock:
                self._dialing = None
        with self._lock:
            if not self._closing.is_set():
                self._conn = conn
                log.info("connected to %s", self.url)
                return conn
        # close() came during the dial: this connection is ours to end, cleanly.
        conn.start()
        conn.close(*self._close_with)
        conn.wait_closed()
        raise ConnectError(f"the client was closed while dialing {self.url}", retryable=False)

    def run(
        self, handler: Handler, *, linger: float | None = None, first: Connection | None = None
    ) -> Closed:
        """Sessions with ``handler`` until one ends for good; how the last one ended.

        The first dial's ConnectError is raised; later failed dials are
        logged and retried (unless they cannot succeed).
        """
        conn = first or self.dial()
        delays = backoff_delays(*self.backoff)
        while True:
            started = time.monotonic()
            closed = run_session(conn, handler, linger=linger)
            with self._lock:
                self._conn = None
            if self._closing.is_set() or not self.reconnect or closed.code not in RETRYABLE_CODES:
                return closed
            if time.monotonic() - started >= STABLE_SESSION:
                delays = backoff_delays(*self.backoff)
            again = self._redial(delays)
            if again is None:
                return closed
            conn = again

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """End everything from any thread: the session with ``code``, a dial, the reconnecting."""
        with self._lock:
            if not self._closing.is_set():
                self._close_with = (code, reason)
                self._closing.set()
            conn, dialing = self._conn, self._dialing
        shut_down(dialing)
        if conn is not None:
            conn.close(code, reason)

    def _redial(self, delays: Iterator[float]) -> Connection | None:
        for delay in delays:
            log.info("reconnecting to %s in %.1f s", self.url, delay)
            if self._closing.wait(delay):
                return None
            try:
                return self.dial()
            except ConnectError as error:
                if self._closing.is_set():
                    return None
                log.warning("reconnect failed: %s", error)
                if not error.retryable:
                    return None
        raise AssertionError("backoff_delays never ends")

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closing.is_set():
                raise ConnectError(f"the client was closed while dialing {self.url}", retryable=False)
            self._dialing = sock


class _Deliver:
    """The handler of :class:`WebSocketClient`: hand every message over; nothing of its own to send."""

    def __init__(self, deliver: Callable[[Message], None]) -> None:
        self.deliver = deliver

    def on_message(self, conn: Connection, message: Message) -> None:
        """Pass it on (in the reader thread)."""
        self.deliver(message)

    def run(self, conn: Connection) -> None:
        """Nothing: the caller sends with :meth:`WebSocketClient.send`."""


class WebSocketClient:
    """A WebSocket connection for synchronous code, usable from any thread.

    ::

        with WebSocketClient("ws://localhost:8080/ws", on_message=print) as client:
            client.send("job 1: 10 % done")

    Threads: the first connection is dialed in the caller's thread, so a
    failure raises ConnectError right there. Then a ``reader`` thread
    delivers every message to ``on_message`` (or, without one, to the
    ``messages`` queue), and a ``supervisor`` thread runs the sessions and,
    with ``reconnect``, dials again after a backoff. ``send()`` may be called
    from any thread; it raises NotConnected while there is no open
    connection. ``close()`` is idempotent, ends the reader, the supervisor
    and the socket, and returns within ``close_timeout`` plus a second.

    Args:
        url: the server, ``ws://`` or ``wss://``.
        on_message: called in the reader thread with every message;
            without it messages go to the ``messages`` queue.
        reconnect: dial again when the server goes away or the connection
            drops (1001, 1006, 1011-1014), until close().
        backoff: first and largest delay between two dials.
        **settings: the fields of :class:`ClientConfig` (``timeout``,
            ``cafile``, ``max_message_size``, ...).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        on_message: Callable[[Message], None] | None = None,
        reconnect: bool = False,
        backoff: tuple[float, float] = BACKOFF,
        **settings: object,
    ) -> None:
        self.url = url
        #: Messages received, when no ``on_message`` was given.
        self.messages: queue.Queue[Message] = queue.Queue()
        self._handler = _Deliver(on_message or self.messages.put)
        self._client = Client(url, ClientConfig(**settings), reconnect=reconnect, backoff=backoff)  # type: ignore[arg-type]
        self._lock = threading.Lock()  # guards _supervisor
        self._supervisor: threading.Thread | None = None
        #: How the last session ended, once it has.
        self.closed: Closed | None = None

    def connect(self) -> WebSocketClient:
        """Open the connection; raises ConnectError if the first dial fails (or close() came)."""
        # Under the lock for the whole dial: a close() meanwhile cuts the dial short,
        # then waits here, and so never misses a supervisor about to start.
        with self._lock:
            if self._supervisor is None:
                first = self._client.dial()
                self._supervisor = threading.Thread(
                    target=self._supervise, args=(first,), name="supervisor", daemon=True
                )
                self._supervisor.start()
        return self

    @property
    def connected(self) -> bool:
        """True while a connection is open (it may still drop at any time)."""
        return self._client.connection is not None

    def send(self, message: Message) -> None:
        """Send text (str) or binary (bytes) from any thread; NotConnected if there is no connection."""
        conn = self._client.connection
        if conn is None:
            raise NotConnected(f"not connected to {self.url}")
        try:
            conn.send(message)
        except Closed as closed:
            raise NotConnected(f"connection to {self.url} closed: {closed}") from None

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Close with ``code`` and stop reconnecting; idempotent and bounded.

        From your ``on_message`` (the reader thread) it only asks and returns:
        the reader must be free to finish the closing handshake.
        """
        self._client.close(code, reason)
        with self._lock:
            supervisor = self._supervisor
        if supervisor is not None and not self._client.in_reader():
            supervisor.join(self._client.config.close_timeout + 1.0)

    def __enter__(self) -> WebSocketClient:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _supervise(self, first: Connection) -> None:
        self.closed = self._client.run(self._handler, first=first)
