"""What the server and the client share.

The Go article's reading goroutine is "the exact same as on the server", and
so it is here: :func:`read_messages` and :func:`send_messages` are the one
reader loop and the one sender loop that both programs run. They do not know
which WebSocket library sits underneath; each program wraps its library in a
small :class:`Transport` adapter and hands it to a :class:`Session`, which
adds what Go gets from the runtime or from discipline:

* a ``done`` event the reader sets when it ends (Go: ``defer close(done)``),
* a ``stop`` event that interrupts the sender's sleeps (Go: ``select`` on
  ``done`` and a ticker), so shutdown never waits out an interval,
* a send lock, so frames from several threads never interleave
  (gorilla: "one concurrent writer"),
* a close that is idempotent and bounded in time.

Importing this module has no side effects: logging and signals are only set
up by the programs' ``main()``.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Callable, NoReturn, Protocol, Union

# --- Defaults, as in the article: localhost:8080, path /ws -----------------

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
WS_PATH = "/ws"
DEFAULT_URL = f"ws://localhost:{DEFAULT_PORT}{WS_PATH}"

#: Messages each side sends, and the pause between two of them (seconds).
DEFAULT_COUNT = 5
DEFAULT_INTERVAL = 1.0
#: Seconds the client allows for TCP connect plus the opening handshake.
DEFAULT_TIMEOUT = 10.0
#: Seconds of silence after which the client, done sending, closes. It must
#: exceed the server's interval, or the client hangs up between two messages.
DEFAULT_LINGER = 3.0
#: Seconds we wait for the peer to answer our close frame before we cut the
#: TCP connection anyway. Shutdown and close are bounded by it.
CLOSE_TIMEOUT = 1.0

# --- Close codes (RFC 6455, section 7.4.1) -----------------------------------

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
#: Never sent on the wire: "the close frame had no code" and "no close frame
#: at all, the connection just went away".
NO_STATUS = 1005
ABNORMAL_CLOSURE = 1006

CLOSE_CODE_NAMES = {
    NORMAL_CLOSURE: "normal closure",
    GOING_AWAY: "going away",
    PROTOCOL_ERROR: "protocol error",
    1003: "unsupported data",
    NO_STATUS: "no status code",
    ABNORMAL_CLOSURE: "connection lost",
    INVALID_DATA: "invalid data",
    1008: "policy violation",
    1009: "message too big",
    1010: "mandatory extension",
    INTERNAL_ERROR: "internal error",
}

Message = Union[str, bytes]

log = logging.getLogger("wsdemo")
#: The per-message lines ("received: ...", "sent: ..."), apart so that
#: ``--quiet`` can silence them and keep connection and close lines.
message_log = logging.getLogger("wsdemo.messages")


class SessionClosed(Exception):
    """The WebSocket session is over: how it ended.

    Args:
        code: the close code the peer sent, or the one we sent if we closed
            first; 1005 for a close frame without a code, 1006 when the
            connection was lost without any close frame.
        reason: the close reason text, or what went wrong for a 1006.
        by_peer: True when the peer started the close (or vanished).
    """

    def __init__(self, code: int, reason: str = "", by_peer: bool = True) -> None:
        self.code = code
        self.reason = reason
        self.by_peer = by_peer
        super().__init__(describe_close(code, reason))

    @property
    def clean(self) -> bool:
        """True for an orderly end: a close frame with 1000 or 1001."""
        return self.code in (NORMAL_CLOSURE, GOING_AWAY)


class CloseRequired(Exception):
    """The session must be closed with ``code``, for ``reason``.

    Raised by a transport's ``receive`` when the peer broke the protocol
    (1002), sent text that is not UTF-8 (1007), a message over the size limit
    (1009), or stopped answering pings (1011). The reader answers it with a
    close frame carrying that code.
    """

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{reason} ({code})")


def describe_close(code: int, reason: str = "") -> str:
    """Render a close code for people: ``1001 (going away) 'bye'``."""
    name = CLOSE_CODE_NAMES.get(code, "application code" if code >= 3000 else "unknown")
    text = f"{code} ({name})"
    return f"{text} {reason!r}" if reason else text


def message_text(label: str, number: int, count: int) -> str:
    """The text of the sender's message ``number`` out of ``count``."""
    return f"{label} message {number} of {count}"


def describe_message(message: Message) -> str:
    """How a received or sent message is printed: text verbatim, binary by size."""
    if isinstance(message, str):
        return message
    return f"<binary message, {len(message)} bytes>"


# --- The adapter each program provides ---------------------------------------


class Transport(Protocol):
    """One WebSocket connection, as a library exposes it.

    Implementations wrap simple-websocket (server) and websocket-client
    (client). Only the session's reader thread calls :meth:`receive`; only
    :class:`Session` calls :meth:`send` and :meth:`close`, under its send lock.
    """

    def receive(self) -> Message:
        """Block until a whole message arrives; raise SessionClosed at the end
        and CloseRequired when the session must be closed with a given code."""

    def send(self, message: Message) -> None:
        """Send one message (str as text, bytes as binary); raise SessionClosed
        if the connection is gone."""

    def close(self, code: int, reason: str) -> None:
        """Send a close frame; never raise, even if the connection is gone."""

    def abort(self) -> None:
        """Cut the connection now (wakes up a blocked receive or send)."""


class Session:
    """A transport plus the thread plumbing both programs need.

    Threads and ownership: exactly one reader thread calls :meth:`receive`
    (see :func:`read_messages`); any thread may call :meth:`send`, and sends
    are serialised by ``send_lock``; any thread may call :meth:`close`.
    The program that created the transport owns the socket and closes it
    after the reader has ended.

    Args:
        transport: the library adapter.

    ``stop`` is the event that ends the sender's loop and the waits: the
    reader sets it when the session ends, :meth:`close` sets it, and a
    :class:`StopSignal` sets it on request.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.stop = threading.Event()
        #: Set by the reader when it has ended (Go: ``defer close(done)``).
        self.done = threading.Event()
        #: How the session ended, once the reader has seen it end.
        self.closed: SessionClosed | None = None
        #: ``time.monotonic()`` of the last message received (or of the start).
        self.last_received = time.monotonic()
        self.send_lock = threading.Lock()
        self._close_sent: SessionClosed | None = None

    def send(self, message: Message) -> None:
        """Send one message; thread-safe. Raises SessionClosed once closing."""
        with self.send_lock:
            if self._close_sent is not None:
                raise self._close_sent
            self.transport.send(message)

    def receive(self) -> Message:
        """Next message; for the reader thread only. Raises SessionClosed."""
        try:
            message = self.transport.receive()
        except SessionClosed as closed:
            # If we closed first, what ends the session is our own close.
            raise self._close_sent or closed from None
        self.last_received = time.monotonic()
        return message

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the close handshake; idempotent, thread-safe, bounded.

        Stops the sender at once. If another thread is stuck in a send (the
        peer stopped reading), waits at most CLOSE_TIMEOUT for the send lock
        and then aborts the connection instead.
        """
        self.stop.set()
        if not self.send_lock.acquire(timeout=CLOSE_TIMEOUT):
            self.transport.abort()
            return
        try:
            if self._close_sent is not None:
                return
            self._close_sent = SessionClosed(code, reason, by_peer=False)
            self.transport.close(code, reason)
        finally:
            self.send_lock.release()


class StopSignal:
    """A stop request that reaches whichever session is running when it comes.

    Go would put an ``interrupt`` channel in every ``select``. A Python
    thread waits on one event at a time, so a request is fanned out instead:
    :meth:`request` sets the ``stop`` event of every attached session, and
    a session attached after the request is stopped at once. The request
    itself is never confused with a session's own end.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: set[Session] = set()
        self._requested = threading.Event()

    def request(self) -> None:
        """Ask every attached session, and any attached later, to stop."""
        with self._lock:
            self._requested.set()
            sessions = list(self._sessions)
        for session in sessions:
            session.stop.set()

    @property
    def requested(self) -> bool:
        """True once :meth:`request` has been called."""
        return self._requested.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking at once on a request; True if requested."""
        return self._requested.wait(timeout)

    def attach(self, session: Session) -> None:
        """Let a request stop ``session`` (at once, if one came already)."""
        with self._lock:
            self._sessions.add(session)
            if self._requested.is_set():
                session.stop.set()

    def detach(self, session: Session) -> None:
        """Forget a session that has ended."""
        with self._lock:
            self._sessions.discard(session)


def shut_down(sock: socket.socket | None) -> None:
    """Shut a socket down both ways: the peer sees EOF, and blocked reads and sends return."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down, or reset by the peer


# --- The reading goroutine and the sending loop ------------------------------


def read_messages(session: Session, on_message: Callable[[Message], None] | None = None) -> None:
    """The article's reading goroutine: print every message until the end.

    Runs in the session's reader thread. Each message is logged verbatim,
    then passed to ``on_message`` (the echo mode sends it back). When the
    peer closes, answers its close frame (a no-op where the library already
    did), records how the session ended in ``session.closed``, and sets
    ``session.stop`` and ``session.done``: the Go ``defer close(done)``.
    """
    try:
        while True:
            message = session.receive()
            message_log.info("received: %s", describe_message(message))
            if on_message is not None:
                deliver(on_message, message)
    except SessionClosed as closed:
        session.closed = closed
        if closed.by_peer and closed.code != ABNORMAL_CLOSURE:
            # Answer with the peer's code (RFC 6455 5.5.1); 1005 is never sent.
            session.close(closed.code if closed.code != NO_STATUS else NORMAL_CLOSURE)
        log_end(closed)
    except CloseRequired as required:
        log.warning("closing with %s", describe_close(required.code, required.reason))
        session.closed = SessionClosed(required.code, required.reason, by_peer=False)
        session.close(required.code, required.reason)
    except Exception as error:  # an on_message callback failed: not the peer's fault
        log.error("closing after an error in the message handler: %r", error)
        session.closed = SessionClosed(INTERNAL_ERROR, "internal error", by_peer=False)
        session.close(INTERNAL_ERROR, "internal error")
    finally:
        session.stop.set()
        session.done.set()


def deliver(on_message: Callable[[Message], None], message: Message) -> None:
    """Hand one message to ``on_message``; a reply that can no longer be sent is not the end.

    The peer's last messages and its close frame often arrive in one read;
    by the time the handler answers the first of them, the session is
    already closing and its ``send()`` raises SessionClosed. That is the
    handler's business, not a sign that reading is over: the reader must
    still deliver the rest and then see the close itself.
    """
    try:
        on_message(message)
    except SessionClosed:
        log.debug("reply not sent, the session is closing")


def log_end(closed: SessionClosed) -> None:
    """One line saying how a session ended: stdout if orderly, else stderr."""
    if closed.code == ABNORMAL_CLOSURE:
        log.warning("connection lost: %s", closed.reason or "no close frame")
    elif closed.by_peer:
        level = logging.INFO if closed.clean or closed.code == NO_STATUS else logging.WARNING
        log.log(level, "peer closed the connection: %s", describe_close(closed.code, closed.reason))
    else:
        log.info("closed: sent %s", describe_close(closed.code, closed.reason))


def send_messages(session: Session, count: int, interval: float, label: str) -> None:
    """The article's sender: ``count`` messages, ``interval`` seconds apart.

    ``session.stop.wait(interval)`` is the interruptible ``time.Sleep``: it
    returns at once when the session is stopping, so a shutdown never waits
    out a pause. Returns early if the session closes underneath.
    """
    for number in range(1, count + 1):
        if session.stop.is_set():
            return
        text = message_text(label, number, count)
        try:
            session.send(text)
        except SessionClosed:
            return
        message_log.info("sent: %s", text)
        if number < count and session.stop.wait(interval):
            return


def start_reader(
    session: Session, name: str, on_message: Callable[[Message], None] | None = None
) -> threading.Thread:
    """``go reader(conn)``: start the reading loop in its own named thread.

    Daemon, so that a reader stuck on a dead network can never keep the
    process alive; :func:`run_session` still joins it, bounded, every time.
    """
    thread = threading.Thread(target=read_messages, args=(session, on_message), name=name, daemon=True)
    thread.start()
    return thread


def wait_until_quiet(session: Session, linger: float | None) -> None:
    """Wait for the session to stop, or (with ``linger``) for a silence.

    With ``linger=None`` waits until the peer closes or the session is
    stopped. Otherwise also returns once nothing has arrived for ``linger``
    seconds.
    """
    if linger is None:
        session.stop.wait()
        return
    while True:
        quiet_for = time.monotonic() - session.last_received
        if quiet_for >= linger or session.stop.wait(linger - quiet_for):
            return


class SessionHandler(Protocol):
    """Per-connection logic, plugged into a session's lifecycle by :func:`run_session`.

    ``on_message`` runs in the reader thread for every message received;
    ``run`` runs in the session's own thread once the reader has started.
    When ``run`` returns, the session waits for the peer to close (or to go
    quiet, on the client), then closes. Both may ``session.send()``.
    """

    def on_message(self, session: Session, message: Message) -> None:
        """Handle one message (the reader thread)."""

    def run(self, session: Session) -> None:
        """Do the session's own work, e.g. send messages (the session's thread)."""


class SenderHandler:
    """The article's behaviour: send ``count`` messages ``interval`` apart; just print what arrives."""

    def __init__(self, count: int, interval: float, label: str) -> None:
        self.count, self.interval, self.label = count, interval, label

    def on_message(self, session: Session, message: Message) -> None:
        """Nothing to do: the reader has printed it."""

    def run(self, session: Session) -> None:
        """Send the messages (Go: the loop with ``time.Sleep``)."""
        send_messages(session, self.count, self.interval, self.label)


class EchoHandler:
    """Send every message straight back, text as text and binary as binary; nothing else."""

    def on_message(self, session: Session, message: Message) -> None:
        """Echo it (once the session is closing, the send fails and the reader goes on)."""
        session.send(message)

    def run(self, session: Session) -> None:
        """Nothing of our own to send."""


def run_session(
    session: Session,
    handler: SessionHandler,
    *,
    reader_name: str,
    linger: float | None = None,
) -> SessionClosed:
    """One side of a session, start to finish; both programs call this.

    Starts the reader (Go: ``go reader(conn)``), runs ``handler.run`` in
    the calling thread, waits until the peer closes or (``linger``) goes
    quiet, closes with 1000 if nobody has closed yet, and waits for the
    reader to see the end. Returns how the session ended. The caller still
    owns the socket and must release it afterwards.
    """
    reader = start_reader(session, reader_name, lambda message: handler.on_message(session, message))
    handler.run(session)
    wait_until_quiet(session, linger)
    session.close(NORMAL_CLOSURE)
    if not session.done.wait(CLOSE_TIMEOUT):
        log.warning("peer did not answer the close within %.1f s; dropping it", CLOSE_TIMEOUT)
        session.transport.abort()
    reader.join(CLOSE_TIMEOUT)
    return session.closed or SessionClosed(ABNORMAL_CLOSURE, "no close handshake", by_peer=False)


def backoff_delays(first: float = 0.5, cap: float = 30.0) -> Iterator[float]:
    """Delays before reconnect attempts: exponential, capped, with jitter.

    Doubles from ``first`` up to ``cap``; each delay is drawn between half
    and all of that ("equal jitter"), so clients that lost the same server
    at the same moment do not all come back at the same moment.
    """
    ceiling = first
    while True:
        yield random.uniform(ceiling / 2, ceiling)
        ceiling = min(cap, ceiling * 2)


# --- Program plumbing: logging, options, signals ------------------------------


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def setup_logging(level: int = logging.INFO, quiet: bool = False) -> None:
    """Log lines as ``time [thread] event``: events to stdout, errors to stderr.

    Both streams are line-buffered (a program reading our stdout through a
    pipe sees each line at once) and never fail on characters the terminal
    cannot encode. ``quiet`` leaves out the line for every message.
    """
    message_log.setLevel(logging.WARNING if quiet else logging.NOTSET)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True, errors="backslashreplace")
    formatter = logging.Formatter("%(asctime)s.%(msecs)03d [%(threadName)s] %(message)s", datefmt="%H:%M:%S")
    events = logging.StreamHandler(sys.stdout)
    events.addFilter(_BelowWarning())
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.WARNING)
    root = logging.getLogger()
    for handler in (events, errors):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)


def fail(prog: str, message: str, status: int = 1) -> NoReturn:
    """Print one line on stderr and exit: the programs' only way to fail."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see --help)`` and exit 2, without the usage block."""
        fail(self.prog, f"{message} (see --help)", status=2)


def count_arg(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seconds_arg(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def positive_seconds_arg(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = seconds_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def add_sender_options(parser: argparse.ArgumentParser) -> None:
    """The options both programs have: --count, --interval and --quiet."""
    parser.add_argument(
        "--quiet", action="store_true", help="do not print every message, only connections and closes"
    )
    parser.add_argument(
        "--count",
        type=count_arg,
        default=DEFAULT_COUNT,
        help=f"messages to send (default {DEFAULT_COUNT})",
    )
    parser.add_argument(
        "--interval",
        type=seconds_arg,
        default=DEFAULT_INTERVAL,
        help=f"seconds between two messages (default {DEFAULT_INTERVAL})",
    )


def run_until_signal(finished: threading.Event, on_signal: Callable[[], object]) -> bool:
    """Main thread: wait until ``finished`` is set, or for Ctrl+C / SIGTERM.

    Signals reach only Python's main thread, so the main thread does nothing
    but wait here while named threads do the work (Go: ``signal.Notify`` and
    a ``select`` on the interrupt channel). On a signal calls ``on_signal``
    and returns True; returns False once ``finished`` is set. SIGINT is
    installed explicitly: a program started in the background by a shell
    inherits it ignored.

    We wait on an Event, not with ``Thread.join()``: up to Python 3.12, a
    KeyboardInterrupt inside ``join()`` marks the still-running thread as
    stopped (bpo-45274), and every later ``join()`` returns at once.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        finished.wait()
        return False
    except KeyboardInterrupt:
        # Shutdown is bounded; a second Ctrl+C must not cut it short with a
        # traceback.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        log.info("interrupted: shutting down")
        on_signal()
        return True
