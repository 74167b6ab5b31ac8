"""The article's client, with threads: dial, read in one thread, send in another.

Go::

    conn, _, _ := websocket.DefaultDialer.Dial("ws://localhost:8080/ws", nil)
    defer conn.Close()
    go reader(conn)
    for i := 0; i < 5; i++ { conn.WriteMessage(...); time.Sleep(time.Second) }

Python: :func:`connect` dials with websocket-client, :func:`run_client`
starts the ``reader`` thread (``go reader(conn)``) and runs the sender loop
in the calling thread, then lingers until the server closes or goes quiet,
and closes with 1000. The reader is :func:`common.read_messages`, the same
one the server runs.

Run ``python sync_client.py --help`` for the options. Importing this module
has no side effects.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

import websocket
from websocket import ABNF

from common import (
    ABNORMAL_CLOSURE,
    CLOSE_TIMEOUT,
    DEFAULT_COUNT,
    DEFAULT_INTERVAL,
    DEFAULT_LINGER,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    INVALID_DATA,
    NO_STATUS,
    NORMAL_CLOSURE,
    PROTOCOL_ERROR,
    CloseRequired,
    Message,
    OneLineParser,
    SenderHandler,
    Session,
    SessionClosed,
    StopSignal,
    add_sender_options,
    backoff_delays,
    fail,
    positive_seconds_arg,
    run_session,
    run_until_signal,
    setup_logging,
    shut_down,
    start_reader,
)

log = logging.getLogger("wsdemo.client")
T = TypeVar("T")


class ConnectError(Exception):
    """The client could not open a session; the message is one line."""


class WebSocketClientTransport:
    """The :class:`common.Transport` adapter for a websocket-client connection.

    websocket-client's ``recv()`` answers a close frame with a close of its
    own, even when we sent the first one, and hides the peer's code. So
    :meth:`receive` reads frames itself and leaves answering the close to
    the session. websocket-client's send lock keeps pongs and messages from
    interleaving.
    """

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        # UTF-8 is checked when the text is decoded (below): websocket-client's
        # own check runs byte by byte in Python, at about 1 MB/s.
        self._fragments = websocket.continuous_frame(fire_cont_frame=False, skip_utf8_validation=True)

    def receive(self) -> Message:
        """Next whole message. Raises SessionClosed at the end of the session,
        CloseRequired when the server breaks the protocol."""
        while True:
            frame = self._next_frame()
            if frame.mask_value:  # websocket-client accepts it; RFC 6455 5.1 does not
                raise CloseRequired(PROTOCOL_ERROR, "the server sent a masked frame")
            if frame.opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY, ABNF.OPCODE_CONT):
                message = self._assemble(frame)
                if message is not None:
                    return message
            elif frame.opcode == ABNF.OPCODE_CLOSE:
                raise SessionClosed(*parse_close_payload(frame.data))
            elif frame.opcode == ABNF.OPCODE_PING:
                self.ws.pong(frame.data)

    def send(self, message: Message) -> None:
        """Send text (str) or binary (bytes); raises SessionClosed if gone."""
        opcode = ABNF.OPCODE_TEXT if isinstance(message, str) else ABNF.OPCODE_BINARY
        try:
            self.ws.send(message, opcode)
        except (websocket.WebSocketConnectionClosedException, OSError) as error:
            raise SessionClosed(ABNORMAL_CLOSURE, str(error) or "connection closed") from None

    def close(self, code: int, reason: str) -> None:
        """Send a close frame; a vanished server is not an error here."""
        with contextlib.suppress(websocket.WebSocketConnectionClosedException, OSError):
            self.ws.send_close(code, reason.encode())

    def abort(self) -> None:
        """Shut the socket down, which wakes up a reader blocked in recv."""
        shut_down(self.ws.sock)

    def _next_frame(self) -> ABNF:
        try:
            frame: ABNF = self.ws.recv_frame()
            return frame
        except websocket.WebSocketConnectionClosedException:
            raise SessionClosed(ABNORMAL_CLOSURE, "the server went away without a close frame") from None
        except websocket.WebSocketProtocolException as error:
            raise CloseRequired(PROTOCOL_ERROR, str(error)) from None
        except OSError as error:
            raise SessionClosed(ABNORMAL_CLOSURE, str(error)) from None

    def _assemble(self, frame: ABNF) -> Message | None:
        """Add a data frame to the message being assembled; the whole message
        once its last frame has arrived, else None."""
        try:
            self._fragments.validate(frame)
            self._fragments.add(frame)
            if not self._fragments.is_fire(frame):
                return None
            opcode, whole = self._fragments.extract(frame)
        except websocket.WebSocketProtocolException as error:
            raise CloseRequired(PROTOCOL_ERROR, str(error)) from None
        data: bytes = whole.data
        if opcode != ABNF.OPCODE_TEXT:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise CloseRequired(INVALID_DATA, "text message is not valid UTF-8") from None


def parse_close_payload(payload: bytes | str) -> tuple[int, str]:
    """Code and reason of a close frame (1005 if it carries no code)."""
    if isinstance(payload, str):  # websocket-client types it loosely; frames carry bytes
        payload = payload.encode()
    if len(payload) < 2:
        return NO_STATUS, ""
    (code,) = struct.unpack("!H", payload[:2])
    return code, payload[2:].decode("utf-8", errors="replace")


def connect(
    url: str = DEFAULT_URL, timeout: float = DEFAULT_TIMEOUT, cafile: str | None = None
) -> websocket.WebSocket:
    """Dial ``url``: TCP connect and opening handshake within ``timeout`` s each.

    ``wss://`` URLs are checked against the system's trusted certificates,
    or against ``cafile`` (PEM) for a private CA. Raises ConnectError with a
    one-line explanation on any failure.
    """
    sslopt = {"ca_certs": cafile} if cafile else {}
    try:
        ws = websocket.create_connection(url, timeout=timeout, enable_multithread=True, sslopt=sslopt)
    except Exception as error:
        raise ConnectError(describe_connect_error(url, timeout, error)) from error
    # The timeout was for the handshake. From now on the reader waits for as
    # long as the session lasts; the session decides when to stop.
    ws.settimeout(None)
    return ws


def describe_connect_error(url: str, timeout: float, error: Exception) -> str:
    """One line telling why dialing ``url`` failed."""
    if isinstance(error, websocket.WebSocketBadStatusException):
        return f"{url} refused the WebSocket handshake: HTTP {describe_status(error)}"
    if isinstance(error, (websocket.WebSocketTimeoutException, socket.timeout)):
        return f"no answer from {url} within {timeout:g} s"
    if isinstance(error, websocket.WebSocketAddressException):
        return f"cannot find the host of {url}: {error}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the TLS certificate of {url} is not trusted: {error.verify_message} (see --cafile)"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake with {url} failed: {error.reason or error}"
    if isinstance(error, ConnectionRefusedError):
        return f"cannot connect to {url}: connection refused (is the server running?)"
    if isinstance(error, websocket.WebSocketException) and "Header" in str(error):
        return f"{url} answered the handshake wrongly ({error})"
    if isinstance(error, ValueError):
        return f"invalid URL {url!r}: {error} (expected ws://HOST:PORT/PATH or wss://...)"
    return f"cannot connect to {url}: {error}"


def describe_status(error: websocket.WebSocketBadStatusException) -> str:
    """``404 Not Found``: the status line of a refused handshake."""
    # websocket-client < 1.9.1 (the last for Python 3.9) does not keep the reason phrase.
    phrase = getattr(error, "status_message", None)
    if not phrase:
        try:
            phrase = HTTPStatus(error.status_code).phrase
        except ValueError:
            phrase = ""
    return f"{error.status_code} {phrase}".strip()


def release(ws: websocket.WebSocket) -> None:
    """Close our end of the TCP connection (Go: the deferred ``conn.Close()``)."""
    shut_down(ws.sock)
    ws.shutdown()


def run_client(
    url: str = DEFAULT_URL,
    *,
    count: int = DEFAULT_COUNT,
    interval: float = DEFAULT_INTERVAL,
    timeout: float = DEFAULT_TIMEOUT,
    linger: float = DEFAULT_LINGER,
    cafile: str | None = None,
    stop: StopSignal | None = None,
) -> SessionClosed:
    """Run one client session from start to end; returns how it ended.

    Sends ``count`` messages ``interval`` seconds apart, printing every
    message received, then waits until the server closes or nothing has
    arrived for ``linger`` seconds, and closes with 1000. ``cafile`` is a
    PEM file of CA certificates to trust for ``wss://``. ``stop.request()``
    from another thread ends the session early, also with 1000.

    Raises ConnectError if the session cannot be opened.
    """
    ws = connect(url, timeout, cafile)
    session = Session(WebSocketClientTransport(ws))
    if stop is not None:
        stop.attach(session)
    try:
        log.info("connected to %s", url)
        return run_session(
            session, SenderHandler(count, interval, "client"), reader_name="reader", linger=linger
        )
    finally:
        if stop is not None:
            stop.detach(session)
        release(ws)


def redial(
    url: str, backoff: tuple[float, float], stopped: Callable[[float], bool], dial: Callable[[], T]
) -> T | None:
    """Dial again until ``dial()`` succeeds, after backoff delays with jitter.

    ``stopped(delay)`` waits out one delay and says whether to give up
    (an ``Event.wait`` or :meth:`StopSignal.wait`, so a stop never waits out
    a delay); then None is returned. A failed dial is logged and retried.
    """
    for delay in backoff_delays(*backoff):
        log.info("reconnecting to %s in %.1f s", url, delay)
        if stopped(delay):
            return None
        try:
            return dial()
        except ConnectError as error:
            log.warning("reconnect failed: %s", error)
    raise AssertionError("backoff_delays never ends")


def run_client_reconnecting(
    url: str = DEFAULT_URL,
    *,
    stop: StopSignal,
    backoff: tuple[float, float] = (0.5, 30.0),
    **session: Any,
) -> SessionClosed:
    """:func:`run_client` again and again, until a session ends with 1000 or ``stop`` is requested.

    A server that goes away (1001) or a connection that is lost (1006) is
    dialed again after a backoff with jitter, and a new session starts. The
    first dial must succeed (ConnectError otherwise); later failed dials are
    retried. ``session`` takes the other arguments of :func:`run_client`.
    """
    closed = run_client(url, stop=stop, **session)
    while closed.code != NORMAL_CLOSURE and not stop.requested:
        again = redial(url, backoff, stop.wait, lambda: run_client(url, stop=stop, **session))
        if again is None:
            break
        closed = again
    return closed


class NotConnected(Exception):
    """``send()`` found no open connection: not yet, no longer, or between reconnects.

    The client raises rather than queues: a message is either on the wire or
    the caller knows it is not, so nothing is silently held and lost.
    """


class WebSocketClient:
    """A WebSocket connection for synchronous code, usable from any thread.

    ::

        with WebSocketClient("ws://localhost:8080/ws", on_message=print) as client:
            client.send("job 1: 10 % done")

    Threads: the first connection is opened in the caller's thread, so a
    failure raises ConnectError right there. Then a ``reader`` thread
    delivers every message to ``on_message`` (or, without one, to the
    ``messages`` queue), and a ``supervisor`` thread waits for the
    connection to end, releases its socket and, with ``reconnect``, dials
    again after a backoff with jitter (0.5 s doubling up to 30 s). ``send()``
    may be called from any thread; it raises NotConnected while there is no
    open connection. ``close()`` is idempotent and bounded in time.

    Args:
        url: the server, ``ws://`` or ``wss://``.
        on_message: called in the reader thread with every message;
            without it messages go to the ``messages`` queue.
        timeout: seconds for TCP connect plus the opening handshake.
        cafile: PEM file of CA certificates to trust for ``wss://``.
        reconnect: dial again whenever the connection ends, until close().
        backoff: first and largest delay between two dial attempts.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        on_message: Callable[[Message], None] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cafile: str | None = None,
        reconnect: bool = False,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.cafile = cafile
        self.reconnect = reconnect
        self.backoff = backoff
        #: Messages received, when no ``on_message`` was given.
        self.messages: queue.Queue[Message] = queue.Queue()
        self._deliver = on_message or self.messages.put
        self._closing = threading.Event()
        self._lock = threading.Lock()  # guards _session and _ws
        self._session: Session | None = None
        self._ws: websocket.WebSocket | None = None
        self._supervisor: threading.Thread | None = None

    def connect(self) -> WebSocketClient:
        """Open the connection; raises ConnectError if the first dial fails."""
        if self._supervisor is None:
            self._open()
            self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
            self._supervisor.start()
        return self

    @property
    def connected(self) -> bool:
        """True while a connection is open (it may still drop at any time)."""
        with self._lock:
            return self._session is not None and not self._session.done.is_set()

    def send(self, message: Message) -> None:
        """Send text (str) or binary (bytes) from any thread; NotConnected if there is no connection."""
        with self._lock:
            session = self._session
        if session is None or session.done.is_set():
            raise NotConnected(f"not connected to {self.url}")
        try:
            session.send(message)
        except SessionClosed as closed:
            raise NotConnected(f"connection to {self.url} closed: {closed}") from None

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Close with ``code`` and stop reconnecting; idempotent, returns within ~2 s."""
        self._closing.set()
        with self._lock:
            session = self._session
        if session is not None:
            session.close(code, reason)
        if self._supervisor is not None:
            self._supervisor.join(3 * CLOSE_TIMEOUT)

    def __enter__(self) -> WebSocketClient:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self) -> Session:
        ws = connect(self.url, self.timeout, self.cafile)
        session = Session(WebSocketClientTransport(ws))
        with self._lock:
            self._session, self._ws = session, ws
        start_reader(session, "reader", self._deliver)
        log.info("connected to %s", self.url)
        return session

    def _supervise(self) -> None:
        """Own the connection's end: release the socket, and reconnect if asked."""
        while True:
            with self._lock:
                session, ws = self._session, self._ws
            assert session is not None and ws is not None
            session.done.wait()
            release(ws)
            if self._closing.is_set() or not self.reconnect:
                return
            if redial(self.url, self.backoff, self._closing.wait, self._open) is None:
                return


def build_parser() -> OneLineParser:
    """The command line of ``sync_client.py``."""
    parser = OneLineParser(
        prog="sync_client.py",
        description="WebSocket client: sends COUNT messages and prints what it receives.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    add_sender_options(parser)
    parser.add_argument(
        "--timeout",
        type=positive_seconds_arg,
        default=DEFAULT_TIMEOUT,
        help=f"seconds allowed to connect and complete the handshake (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--linger",
        type=positive_seconds_arg,
        default=DEFAULT_LINGER,
        help="once our messages are sent, close after this many seconds without a message"
        f" from the server (default {DEFAULT_LINGER:g}); keep it above the server's interval",
    )
    parser.add_argument(
        "--cafile", help="PEM file of CA certificates to trust for wss:// (default: the system's)"
    )
    parser.add_argument(
        "--reconnect",
        action="store_true",
        help="when the server goes away or the connection drops, dial again (after 0.5 s, doubling to 30 s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one session; exit status 0 after a clean close, 1 otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet)
    stop = StopSignal()
    finished = threading.Event()
    outcome: list[SessionClosed | BaseException] = []

    def session() -> None:
        try:
            run = run_client_reconnecting if args.reconnect else run_client
            outcome.append(
                run(
                    args.url,
                    count=args.count,
                    interval=args.interval,
                    timeout=args.timeout,
                    linger=args.linger,
                    cafile=args.cafile,
                    stop=stop,
                )
            )
        except ConnectError as error:
            outcome.append(error)
        except BaseException as error:  # a bug: re-raised in the main thread below
            outcome.append(error)
        finally:
            finished.set()

    def interrupt() -> None:
        stop.request()
        finished.wait(3 * CLOSE_TIMEOUT)

    # Daemon: if Ctrl+C comes while the handshake is still pending, we exit
    # without waiting out --timeout.
    threading.Thread(target=session, name="sender", daemon=True).start()
    interrupted = run_until_signal(finished, on_signal=interrupt)
    if not outcome:
        return 0 if interrupted else 1
    result = outcome[0]
    if isinstance(result, ConnectError):
        fail(parser.prog, str(result))
    if not isinstance(result, SessionClosed):
        raise result
    return 0 if result.clean or interrupted else 1


if __name__ == "__main__":
    sys.exit(main())
