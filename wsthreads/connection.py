"""One WebSocket connection, server or client side, after its opening handshake.

The concurrency contract (gorilla's ``doc.go``, in threads):

* **The reader owns the connection.** It is the only one that reads the
  socket. It feeds the bytes to the frame layer (:mod:`wsthreads.frames`),
  answers pings, pings the peer every ``ping_interval``, delivers each
  message to ``on_message``, runs the closing handshake (its state is
  :class:`wsthreads.closing.Closing`, which the reader alone moves), and at its end
  closes the socket (Go: ``defer conn.Close()``). Nothing else closes the
  socket; other threads may only :meth:`Connection.abort` it (shut it
  down), which wakes the reader. The reader runs in *turns* that never wait
  for the peer (:meth:`Connection._turn`): in a thread of its own, which
  waits between two turns, or parked in the netpoller
  (:mod:`wsthreads.netpoller`), whose worker threads run a turn when bytes
  come or something is due, one at a time per connection.
* **Any thread may send.** Every write (messages, pongs, close frames) goes
  out under one lock, ``wire_lock``, with a deadline (``write_timeout``): a
  peer that stops reading is dropped instead of holding a thread.
  :meth:`Connection.send_nowait` and broadcasts never wait for the lock or
  the peer: they write at once what the socket takes, and leave the rest to
  the connection's writer thread (gorilla's write pump), started only then;
  a :meth:`Connection.send` writes what waits before its own message. With
  permessage-deflate and context takeover, a message is compressed as it
  goes on the wire, under the same lock: the peer's history is the wire's
  order (:class:`Deferred`).
* **Any thread may close, and close never blocks.** :meth:`Connection.close`
  records the request and wakes the reader, which sends the close frame and
  waits for the answer for at most ``close_timeout``; :meth:`Connection.wait_closed`
  waits for the end, bounded.

So every wait has a bound: reads wait for the next ping, the close deadline or
the wake-up; writes for ``write_timeout``; the close for ``close_timeout``.
The only unbounded code is yours: ``on_message`` runs in the reader's turn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import frames, trace
from .closing import CloseCode, Closed, Closing, State, close_reason, describe_close, sendable_code
from .lines import describe_message, printable
from .logs import SessionLogger, handler_log, with_fields
from .queues import OVERFLOW_CLOSE, Inbox, Outbox, check_policy

if TYPE_CHECKING:
    from .deflate import Agreement, Compressor
    from .limits import InboundLimit
    from .netpoller import Netpoller, Watch
    from .request import Request

Message = str | bytes

log = logging.getLogger("wsthreads")
#: The per-message lines ("received: ...", "sent: ..."), apart so that a
#: program's ``--quiet`` can silence them and keep connection and close lines.
message_log = logging.getLogger("wsthreads.messages")

# --- Timing: each constant bounds one wait --------------------------------------

#: Seconds one write may take before the peer counts as not reading and is
#: dropped (gorilla's ``writeWait``).
WRITE_TIMEOUT = 10.0
#: Seconds from a close request to the end of the connection: our close frame
#: out, the peer's answer in, the TCP connection wound down. After it we cut.
CLOSE_TIMEOUT = 1.0
#: Default limit on one incoming message, in bytes (1 MiB, as websockets).
MAX_MESSAGE_SIZE = 1 << 20
#: Received messages that may wait for ``recv()`` before the reader stops
#: reading (websockets' ``max_queue``).
MAX_QUEUE = 16
#: Bytes that may wait for a connection's writer (``send_nowait``, broadcasts):
#: a message that comes when more waits meets the overflow policy.
OUTBOUND_LIMIT = 1 << 20

#: Bytes read from the socket at a time.
READ_SIZE = 65536
#: Payloads up to this size go out in one write with their frame header;
#: larger ones are written after it, uncopied.
SMALL_FRAME = 16384
#: Reads one turn of the reader does at most before it lets other connections' turns go first.
READS_PER_TURN = 16
#: Bytes a peer closed for going over a rate limit may still send after the close frames,
#: read and discarded so that closing does not reset the connection under our close frame;
#: more, and it is cut. (Any other peer is read until the close deadline: it may be
#: finishing a message it began, and must still see our close code.)
DRAIN_LIMIT = 1 << 20
#: Seconds between looks at a requested close while a write waits for the peer (but the reader's,
#: which its wake-up tells).
WRITE_LOOK = 0.1


@dataclasses.dataclass
class Traffic:
    """What a connection has carried so far: plain counts, kept by its threads (:mod:`wsthreads.metrics`).

    Bytes are the socket's: frame headers and control frames included.
    """

    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Why we dropped the peer as too slow, if we did: ``"close"`` (1013, too
    #: much waiting for it) or ``"write-deadline"`` (a write outlasted ``write_timeout``).
    slow_client: str | None = None


def opcode_and_payload(message: Message) -> tuple[int, bytes]:
    """What a message goes out as: text as UTF-8, binary as it is; TypeError for anything else."""
    if isinstance(message, str):
        try:
            return frames.TEXT, message.encode()
        except UnicodeEncodeError as error:
            raise ValueError(f"text to send is not valid Unicode: {error.reason} at {error.start}") from None
    if isinstance(message, bytes):
        return frames.BINARY, message  # a subclass too: its own bytes, not what __bytes__ says
    if isinstance(message, (bytearray, memoryview)):
        return frames.BINARY, bytes(message)
    raise TypeError(f"a message is str (text) or bytes (binary), not {type(message).__name__}")


def message_size(message: Message) -> int:
    """A message's size in bytes, as it goes on the wire (text: UTF-8)."""
    return len(message.encode() if isinstance(message, str) else message)


def frame_text(data: bytes) -> str | bytes:
    """What a frame we built holds, for a trace: its text, or its payload (unmasked; compressed as sent)."""
    length = data[1] & 0x7F
    start = 2 + {126: 2, 127: 8}.get(length, 0)
    payload = data[start:]
    if data[1] & 0x80:
        payload = frames.mask(data[start : start + 4], data[start + 4 :])
    plain_text = data[0] & 0x0F == frames.TEXT and not data[0] & frames.RSV1
    return payload.decode(errors="replace") if plain_text else payload


class Deferred:
    """A message queued as it is, to be compressed only as it goes on the wire.

    With context takeover the peer inflates our messages in the order they
    arrive, through one history: each must be compressed in that same order,
    so under the wire lock, by whoever writes it (:meth:`Connection._on_wire`).
    Its length is what the outbox counts (the uncompressed size: an upper bound).
    """

    __slots__ = ("opcode", "payload")

    def __init__(self, opcode: int, payload: bytes) -> None:
        self.opcode = opcode
        self.payload = payload

    def __len__(self) -> int:
        return len(self.payload)


#: What waits in a connection's outbox: a whole frame, or a message whose compression waits for the wire.
Queued = bytes | Deferred


def wait_for(sock: socket.socket, events: int, timeout: float | None, wakeup: _Wakeup | None = None) -> bool:
    """Wait until ``sock`` is ready for ``events`` (POLLIN/POLLOUT); False on timeout.

    With ``wakeup``, a ring ends the wait too (False, unless the socket is
    ready as well), and is cleared: the caller looks at what changed.
    A fresh poll object per wait: it holds no descriptor, so there is
    nothing to close and nothing another thread could close under us.
    For TLS the kernel's readiness is not all: bytes OpenSSL decrypted
    already wait in ``pending()``, which the reader looks at (under its TLS
    lock) before it waits here.
    """
    poller = select.poll()
    poller.register(sock, events)
    if wakeup is not None:
        poller.register(wakeup.fd, select.POLLIN)
    ready = {fd for fd, _ in poller.poll(None if timeout is None else max(timeout, 0) * 1000)}
    if wakeup is not None and wakeup.fd in ready:
        wakeup.clear()
    return sock.fileno() in ready


def log_message(what: str, message: Message, fields: Mapping[str, str] | None = None) -> None:
    """The line for one message, ``received: hello``, on :data:`message_log`, with its session's ``fields``.

    Without the caller lookup ``Logger.info`` makes for every record (a
    third of a line's cost, and these lines all come from here); handlers,
    levels and filters apply as to any record.
    """
    if message_log.isEnabledFor(logging.INFO):
        args = (what, describe_message(message))
        record = message_log.makeRecord(message_log.name, logging.INFO, "", 0, "%s: %s", args, None)
        message_log.handle(with_fields(record, fields or {}))


#: Characters of a user, as a log line shows it.
USER_TEXT = 100


def user_text(user: object) -> str:
    """What the ``authenticate`` hook returned, for a log line: ``str(user)``, escaped and cut short.

    A ``__str__`` that fails gives the type's name instead: a log line must not end a session.
    """
    try:
        text = str(user)
    except Exception:
        return f"<{type(user).__name__}>"
    return printable(text[:USER_TEXT]) + ("..." if len(text) > USER_TEXT else "")


def shut_down(sock: socket.socket | None) -> None:
    """Shut a socket down both ways: the peer sees EOF, and blocked reads and writes return."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down, closed, or reset by the peer


def log_end(closed: Closed, fields: Mapping[str, str]) -> None:
    """One line saying how a connection ended: stdout if orderly, else stderr."""
    if closed.code == CloseCode.ABNORMAL_CLOSURE:
        log.warning("connection lost: %s", closed.reason or "no close frame", extra=fields)
    elif closed.by_peer:
        level = logging.INFO if closed.clean or closed.code == CloseCode.NO_STATUS else logging.WARNING
        log.log(
            level, "peer closed the connection: %s", describe_close(closed.code, closed.reason), extra=fields
        )
    else:
        log.info("closed: sent %s", describe_close(closed.code, closed.reason), extra=fields)


class _Wakeup:
    """A descriptor the reader polls beside the socket, so another thread can wake it.

    An eventfd where there is one (one descriptor), else a pipe. Only the
    reader closes it, under ``lock``, and :meth:`ring` writes under the same
    lock, so a ring can never hit a descriptor that was closed and reused.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        if hasattr(os, "eventfd"):
            self.fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            self.fd, self._write_fd = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self._write_fd, False)
        self._closed = False

    def ring(self) -> None:
        with self.lock:
            if not self._closed:
                try:
                    os.write(self._write_fd, (1).to_bytes(8, "little"))
                except BlockingIOError:
                    pass  # already ringing

    def clear(self) -> None:
        try:
            os.read(self.fd, 64)
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self.lock:
            self._closed = True
            os.close(self.fd)
            if self._write_fd != self.fd:
                os.close(self._write_fd)


class _Lost(Exception):
    """The TCP connection failed or ended under us: the session ends with 1006."""


class _CloseTimeout(_Lost):
    """The close deadline passed before the closing handshake was over."""


class _Fail(Exception):
    """We must close with ``code`` now: the peer broke the protocol, or went silent."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(reason)


def writer_name(reader_name: str) -> str:
    """The writer thread's name for a reader's: ``conn-1-reader`` -> ``conn-1-writer``."""
    if reader_name.endswith("reader"):
        return reader_name.removesuffix("reader") + "writer"
    return f"{reader_name}-writer"


class Connection:
    """A WebSocket connection whose opening handshake is done: the same class for both sides.

    Start its reader with :meth:`start`: with a callback, every message goes
    to it in the reader thread; without one, to a bounded queue that
    :meth:`recv` and ``for message in conn`` read. Then, from any thread,
    :meth:`send` (waits for the socket, bounded), :meth:`send_nowait` (writes
    what the socket takes at once, queues the rest for the connection's
    writer, never waits), :meth:`close`, and
    :meth:`wait_closed` for the end. The ``stop`` event is set as soon as the
    session winds down (a close began on either side, the connection was
    lost, or a stop was requested): a sender sleeps with
    ``stop.wait(interval)``. ``done`` is set once the reader has ended and
    the socket is released; ``closed`` then says how it ended, for good.

    Args:
        sock: the connected socket (plain or TLS), handed over: from now on
            the reader owns it and closes it.
        client: True on the client side (we mask our frames, the peer must not).
        pending: bytes received right behind the handshake, not yet parsed.
        max_message_size: largest incoming message in bytes; a larger one is
            refused with 1009 as soon as its frame header announces it.
            None: no limit.
        ping_interval: seconds between keepalive pings to a quiet peer; a
            peer that has not answered one by the next is closed with 1011.
            None: no pings.
        write_timeout: seconds one write may take.
        close_timeout: seconds a close may take, from request to release.
        name: the reader thread's name; the writer's ends in ``writer``
            instead of ``reader`` (``conn-1-reader``, ``conn-1-writer``).
        max_queue: received messages that may wait for :meth:`recv`; when
            that many wait, the reader stops reading until one is taken.
        outbound_limit: bytes that may wait for the writer (:meth:`send_nowait`).
        on_overflow: what happens when they would exceed it: ``"close"``
            (1013, "try again later") or ``"drop-oldest"``.
        request: on the server, the HTTP request the session began with.
        user: on the server, what the ``authenticate`` hook returned.
        subprotocol: the subprotocol both sides agreed on, or None.
        key: the handshake's Sec-WebSocket-Key: it names the connection on
            both ends, in a trace (see :mod:`wsthreads.trace`).
        response_headers: on the client, the headers of the server's 101
            (names in lower case).
        inbound_limit: messages and bytes a second the peer may send; a
            peer over it is closed with 1008 (see :mod:`wsthreads.limits`).
        compression: what the handshake agreed for permessage-deflate (see
            :mod:`wsthreads.deflate`), or None: no message is compressed.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        client: bool,
        pending: bytes = b"",
        max_message_size: int | None = MAX_MESSAGE_SIZE,
        ping_interval: float | None = None,
        write_timeout: float = WRITE_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        name: str = "reader",
        max_queue: int = MAX_QUEUE,
        outbound_limit: int = OUTBOUND_LIMIT,
        on_overflow: str = OVERFLOW_CLOSE,
        request: Request | None = None,
        user: Any = None,
        subprotocol: str | None = None,
        key: str = "",
        response_headers: dict[str, str] | None = None,
        inbound_limit: InboundLimit | None = None,
        compression: Agreement | None = None,
    ) -> None:
        self.sock = sock
        self._inbound_limit = inbound_limit
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # not a Unix socket, which has no Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a frame goes out when written
        #: The headers of the server's 101, on a client (names in lower case); empty on a server.
        self.response_headers = response_headers or {}
        #: The HTTP request of the opening handshake (server side; None on a client).
        self.request = request
        #: Who the client is, as the server's ``authenticate`` hook said (None without one).
        self.user = user
        #: The negotiated subprotocol, or None.
        self.subprotocol = subprotocol
        self.key = key
        #: What it has carried so far (its counts number the messages in a trace, too).
        self.traffic = Traffic()
        self._closing_started: float | None = None  # the closing handshake's span, when tracing
        self.client = client
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.write_timeout = write_timeout
        self.close_timeout = close_timeout
        self.name = name
        self.stop = threading.Event()
        self.done = threading.Event()
        #: How the connection ended, once ``done`` is set.
        self.closed: Closed | None = None
        #: ``time.monotonic()`` of the last message received (or of the start).
        self.last_received = time.monotonic()
        #: Serialises every write to the socket (only the reader touches the frame layer).
        self.wire_lock = threading.Lock()
        #: What the handshake agreed for permessage-deflate, or None (see :mod:`wsthreads.deflate`).
        self.compression = compression
        self._compressor: Compressor | None = compression.compressor() if compression else None
        self._parser = frames.Parser(
            client=client,
            max_message_size=max_message_size,
            decompressor=compression.decompressor(max_message_size) if compression else None,
        )
        self._pending = pending
        self.traffic.bytes_in += len(pending)  # read by the HTTP server, behind the handshake
        self._log_fields: dict[str, str] | None = None
        self._drain_left: int | None = None  # bytes still read after a limit's close (see _wind_down)
        # The wire lock's holder: None while it prepares its write (compressing: CPU), then
        # its write's deadline (see _acquire_wire); and how long it compressed in this write.
        self._writing_until: float | None = None
        self._compressed_for = 0.0
        # How the reader is woken when another thread asks for a close: its own
        # eventfd when it has a thread, its watch when it waits in the netpoller.
        self._wakeup: _Wakeup | None = None
        self._watch: Watch | None = None
        self._in_turn: threading.Thread | None = None  # the thread running the reader's turn now
        self._parked_since: float | None = None  # in the netpoller, between two turns: when tracing
        self._closing = Closing(close_timeout)  # the closing handshake's state (moved by the reader)
        self._at_end: list[Callable[[Connection], None]] = []
        self._awaiting_pong = False
        self._next_ping = time.monotonic() + (ping_interval or 0)
        self._on_message: Callable[[Message], None] | None = None
        # The two queues are made when first used (see inbox and _outbox_for_put): a
        # session that gets its messages in on_message and only sends needs neither,
        # and together they hold about 9 KiB of objects. _queues_lock guards their
        # making against the lifecycle steps that change them (close, abort, the end).
        self._queues_lock = threading.Lock()
        self._inbox: Inbox[Message] | None = None
        self._inbox_end: BaseException | None = None  # what recv() raises once the reader is over
        self._max_queue = max_queue
        self._outbox: Outbox[Queued] | None = None
        check_policy(on_overflow)
        self._outbound_limit = outbound_limit
        self._on_overflow = on_overflow
        #: The reader thread, once started (None while the netpoller reads it).
        self.reader: threading.Thread | None = None
        #: Why :meth:`send` must raise RuntimeError now, if it must: the app sets it while
        #: its extensions open the session, before the 101 has gone out.
        self.sends_refused: str | None = None
        # OpenSSL's connection object may not be used by two threads at once, so
        # with TLS every (non-blocking, so short) recv and send takes this lock.
        self._tls_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if isinstance(sock, ssl.SSLSocket) else contextlib.nullcontext()
        )
        sock.setblocking(False)  # every wait below is a poll with a timeout

    # --- the lifecycle, from any thread ---------------------------------------------

    def start(
        self, on_message: Callable[[Message], None] | None = None, *, poller: Netpoller | None = None
    ) -> threading.Thread | None:
        """``go reader(conn)``: start the reader thread; ``on_message`` gets every message in it.

        Daemon, so that a reader stuck in your ``on_message`` can never keep
        the process alive; everything else it waits on is bounded.

        With a ``poller`` (:data:`wsthreads.netpoller.netpoller`) the
        connection holds no thread while it waits for its peer: it is parked
        there, and a worker thread reads it only while bytes have come or
        something is due (see :mod:`wsthreads.netpoller`); ``on_message``
        runs in that worker, one message at a time, in order. It needs
        ``on_message``: ``recv()`` would have to hold a thread. Returns the
        reader thread, or None with a poller.
        """
        self._on_message = on_message
        if poller is not None:
            if on_message is None:
                raise ValueError("a connection in the netpoller hands its messages to on_message")
            try:
                self._watch = poller.watch(self.sock.fileno(), self._turn, self.name)
            except BaseException:  # no thread to be had: the connection ends here, released
                self._closing.end(Closed(CloseCode.ABNORMAL_CLOSURE, "no thread to read it", by_peer=False))
                self._release()
                raise
            if self._pending or self.stop.is_set() or isinstance(self.sock, ssl.SSLSocket):
                self._watch.wake()  # a first turn: what came with the handshake (or OpenSSL holds), a close
            else:  # nothing to do until bytes come: no turn (a close asked for from now on wakes it)
                self._parked_since = trace.begin()
                self._watch.park(self._next_ping if self.ping_interval is not None else None)
            return None
        self._wakeup = _Wakeup()
        self.reader = threading.Thread(target=self._read_loop, name=self.name, daemon=True)
        self.reader.start()
        return self.reader

    @property
    def log_fields(self) -> dict[str, str]:
        """What every log line about this connection carries (see :mod:`wsthreads.logs`).

        ``session`` (``conn-17``); on a server also ``remote`` (the client's
        address), ``path`` and, when the ``authenticate`` hook said, ``user``.
        """
        if self._log_fields is None:  # once: the request and the user never change
            fields = {"session": self.name.removesuffix("-reader")}
            if self.request is not None:
                fields["remote"] = printable(self.request.remote_addr)
                fields["path"] = printable(self.request.path)
            if self.user is not None:
                fields["user"] = user_text(self.user)
            self._log_fields = fields
        return self._log_fields

    @property
    def logger(self) -> SessionLogger:
        """A logger for your handler's lines: each carries this session's :attr:`log_fields`.

        It logs to ``wsthreads.handler``; ``SessionLogger(your_logger, conn.log_fields)``
        does the same for a logger of your own.
        """
        return SessionLogger(handler_log, self.log_fields)

    @property
    def _log(self) -> SessionLogger:
        """The library's own lines about this connection, on ``wsthreads``, with its fields."""
        return SessionLogger(log, self.log_fields)

    @property
    def messages_dropped(self) -> int:
        """Messages dropped under the ``drop-oldest`` overflow policy, in all."""
        outbox = self._outbox
        return outbox.dropped if outbox is not None else 0

    @property
    def inbox(self) -> Inbox[Message]:
        """Received messages for :meth:`recv`, when the reader was started without a callback."""
        inbox = self._inbox
        if inbox is None:
            with self._queues_lock:
                if self._inbox is None:
                    self._inbox = Inbox(self._max_queue)
                    if self.stop.is_set():
                        self._inbox.stop_waiting()
                    if self._inbox_end is not None:
                        self._inbox.end(self._inbox_end)
                inbox = self._inbox
        return inbox

    def recv(self, timeout: float | None = None) -> Message:
        """The next message (reader started without a callback); waits at most ``timeout`` s.

        Raises TimeoutError when none came in time, and :class:`Closed` (with
        the code and reason) once the session is over and every message
        received before the end has been taken. RuntimeError if the reader
        was started with a callback (``on_message`` gets the messages then).
        """
        if self._on_message is not None:
            raise RuntimeError(
                "this connection hands its messages to on_message; recv() needs a handler function"
            )
        return self.inbox.recv(timeout)

    def __iter__(self) -> Iterator[Message]:
        """``for message in conn``: every message until the session ends (then the loop ends)."""
        return self.inbox.until(Closed)

    def send(self, message: Message, *, compress: bool = True) -> None:
        """Send text (str) or binary (bytes); thread-safe; its write bounded by ``write_timeout``.

        A write already under way goes first, within its own bound. Raises
        Closed once the session is closing or over. A small message goes out
        in one write with its header; a large one after it, uncopied (on a
        client: masked, one copy). What :meth:`send_nowait` queued
        before goes out first. With compression agreed, ``compress=False``
        sends this message as it is: a secret never shares a compressed
        history with text an attacker chose (see docs/compression.md).
        """
        if self.sends_refused is not None:
            raise RuntimeError(self.sends_refused)
        framed = self._framed(message, compress)
        if isinstance(framed, Deferred):
            self._send_wire(framed, data=message)
        else:
            self._send_wire(*framed, data=message)

    def send_nowait(self, message: Message, *, compress: bool = True) -> bool:
        """Send a message without waiting for the peer, and return at once; thread-safe.

        If nothing waits and the socket's buffer has room, it is written from
        the calling thread; otherwise what does not fit waits for this
        connection's writer thread. Messages sent this way go out in order. False if it was not queued:
        the session is closing, or the peer is so far behind that the
        ``on_overflow`` policy closed it. Under ``drop-oldest`` the oldest
        waiting messages make room instead. A peer that stops reading is
        dropped after ``write_timeout``, as with :meth:`send`. ``compress``: as for :meth:`send`.
        """
        if self.sends_refused is not None:
            raise RuntimeError(self.sends_refused)
        framed = self._framed(message, compress)
        return self._queue_frame(framed if isinstance(framed, Deferred) else b"".join(framed))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what :meth:`send_nowait` queued is written (default: ``write_timeout``)."""
        outbox = self._outbox
        return outbox is None or outbox.flush(self.write_timeout if timeout is None else timeout)

    def _queue_frame(self, frame: Queued) -> bool:
        """Send a framed message without waiting: at once if the socket takes it, else by the writer.

        gorilla's write pump, without a wake-up per message: when nobody is
        writing and nothing waits, the calling thread writes what the socket
        buffer takes, without blocking (a broadcast to thousands of idle
        connections wakes no thread). Only what does not fit waits for the
        connection's writer thread: the whole frame, or the end of it.
        """
        if self.stop.is_set():
            return False
        if self.wire_lock.acquire(blocking=False):
            self._writing_until = None  # ours: preparing (see _acquire_wire)
            try:
                if self._closing.write_refusal(queued=False) is None and (
                    self._outbox is None or self._outbox.empty
                ):
                    return self._write_at_once(self._on_wire(frame))
            finally:
                self.wire_lock.release()
        return self._outbox_for_put().put(frame)

    def _write_at_once(self, frame: bytes) -> bool:
        """One non-blocking write of ``frame`` (under wire_lock); its end, if cut short, to the writer."""
        at = trace.begin()
        try:
            with self._tls_lock:
                sent = self.sock.send(frame)
        except BlockingIOError:
            if not self._in_wire_order(frame):
                return self._outbox_for_put().put(frame)  # nothing of it left: an ordinary queued frame
            sent = 0  # compressed into the history already: it must go next, and no policy may drop it
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            # OpenSSL may hold part of it already, and its next write must start
            # with the same bytes: the whole frame is the rest of a cut frame.
            sent = 0
        except OSError as error:
            self._give_up(str(error) or type(error).__name__)
            return False
        self.traffic.bytes_out += sent
        self._count_sent([frame], at, framed=True)
        if sent < len(frame):
            # A view, not a copy: a broadcast's frame is one buffer for every connection.
            self._outbox_for_put().put_rest(memoryview(frame)[sent:])
        return True

    def _outbox_for_put(self) -> Outbox[Queued]:
        """The outbox, made on the first frame queued; one made once the session is closing takes none."""
        outbox = self._outbox
        if outbox is None:
            with self._queues_lock:
                if self._outbox is None:
                    self._outbox = Outbox(
                        self._write_queued,
                        limit=self._outbound_limit,
                        policy=self._on_overflow,
                        overflow=self._overflowed,
                        name=writer_name(self.name),
                    )
                    if self.stop.is_set():
                        self._outbox.stop()
                outbox = self._outbox
        return outbox

    def _overflowed(self, waiting: int) -> None:
        self._log.warning(
            "%s: the peer is too slow (%d bytes waiting, limit %d): closing",
            self.name,
            waiting,
            self._outbound_limit,
        )
        self.traffic.slow_client = "close"
        self.close(CloseCode.TRY_AGAIN_LATER, "too slow: too many messages waiting")

    def _framed(self, message: Message, compress: bool = True) -> tuple[bytes, bytes] | Deferred:
        """A data frame's header and payload, masked on the client, compressed if agreed and ``compress``.

        With context takeover, the message as it is, to be compressed as it goes on the wire.
        """
        opcode, payload = opcode_and_payload(message)
        compressor = self._compressor if compress else None
        if compressor is None:
            return frames.frame(opcode, payload, masked=self.client)
        if compressor.in_wire_order:
            return Deferred(opcode, payload)
        return self._compressed_frame(compressor, opcode, payload)

    def _compressed_frame(self, compressor: Compressor, opcode: int, payload: bytes) -> tuple[bytes, bytes]:
        return frames.frame(opcode, compressor.compress(payload), masked=self.client, compressed=True)

    def _on_wire(self, queued: Queued) -> bytes:
        """A queued message as the frame that goes on the wire now (under wire_lock: in wire order)."""
        return b"".join(self._framed_now(queued)) if isinstance(queued, Deferred) else queued

    def _framed_now(self, deferred: Deferred) -> tuple[bytes, bytes]:
        """A deferred message compressed and framed (under wire_lock: in wire order).

        The time it takes is the CPU's, not the peer's: it is added to :attr:`_compressed_for`,
        by which the write's deadline moves, and writers waiting for the lock meanwhile keep waiting.
        """
        assert self._compressor is not None
        started = time.monotonic()
        try:
            return self._compressed_frame(self._compressor, deferred.opcode, deferred.payload)
        finally:
            self._compressed_for += time.monotonic() - started

    def _acquire_wire(self) -> bool:
        """The wire lock, once the write before ours is done; False if it outlasts its own bound.

        Every holder is bounded: while it prepares its write (compressing, under the lock
        with context takeover) by the CPU, and while it writes by its write's deadline (moved
        by what it compressed). So the wait goes on while the holder prepares or its deadline
        has not passed, and ends in False only past that: a fast peer is never dropped as one
        that does not read because another thread had much to compress.
        """
        timeout = self.write_timeout
        while not self.wire_lock.acquire(timeout=timeout):
            until = self._writing_until
            if until is None:  # preparing: CPU, not the peer
                continue
            left = until - time.monotonic()
            if left <= 0:
                return False
            timeout = left + WRITE_LOOK  # the holder gives up at its deadline: a moment for that
        self._writing_until = None
        return True

    def _in_wire_order(self, frame: bytes) -> bool:
        """True for a frame compressed through our history (context takeover): it may not be dropped."""
        compressor = self._compressor
        return compressor is not None and compressor.in_wire_order and bool(frame[0] & frames.RSV1)

    def _broadcast_frame(self, opcode: int, payload: bytes, plain: bytes, shared: dict[Any, bytes]) -> Queued:
        """What a broadcast queues here: the one plain frame, or one compressed frame for every
        connection compressing alike without context takeover (``shared``), or with it, its own."""
        compressor, agreement = self._compressor, self.compression
        if compressor is None or agreement is None:
            return plain
        if compressor.in_wire_order:
            return Deferred(opcode, payload)
        key = (agreement.send_window_bits, agreement.memory_level)
        frame = shared.get(key)
        if frame is None:
            frame = shared[key] = b"".join(self._compressed_frame(compressor, opcode, payload))
        return frame

    def _write_queued(self) -> None:
        """The writer thread's write: everything queued, taken under the wire lock, bounded like :meth:`send`.

        Frames queued before a close() still go out, up to our close frame:
        the reader drains what is left under the same lock before writing it.
        """
        self._send_wire(b"", queued=True)

    def _send_wire(
        self,
        header: bytes | Deferred,
        payload: bytes = b"",
        *,
        queued: bool = False,
        data: Message | None = None,
    ) -> None:
        started = trace.begin()
        frames: list[bytes] | None = None
        taken: list[Queued] = []  # what send_nowait queued, written first: settled at the end
        written = False
        if not self._acquire_wire():
            self._give_up("a write waited too long for the one before it")
            raise Closed(CloseCode.ABNORMAL_CLOSURE, "the peer is not reading", by_peer=False)
        outbox = self._outbox
        try:
            deadline = time.monotonic() + self.write_timeout
            self._compressed_for = 0.0
            error = self._closing.write_refusal(queued)
            if error is not None:
                raise error
            # What send_nowait queued goes first: the wire keeps the order in which
            # messages were compressed (context takeover) and sent.
            if outbox is not None and not (outbox.empty and not queued):
                taken = outbox.drain()
                frames = [self._on_wire(frame) for frame in taken]
                if queued and not frames and outbox.empty:
                    return  # the reader took them for its close, or they were discarded
            if isinstance(header, Deferred):
                header, payload = self._framed_now(header)
            if frames:
                header = b"".join([*frames, header])
            deadline += self._compressed_for  # the write's time is the peer's, not the compression's
            sent_at = trace.begin()  # before the write: the peer may see the message before it returns
            if len(payload) <= SMALL_FRAME:
                self._write(header + payload, deadline)  # one segment for small messages
            else:
                self._write(header, deadline)
                self._write(payload, deadline)
            written = True
            if frames:
                self._count_sent(frames, sent_at, framed=True)
            if data is not None:
                self._count_sent([data], sent_at, framed=False)
        finally:
            if taken and outbox is not None:
                outbox.settled(sum(map(len, taken)), written)  # flush() waited for them, and now knows
            self.wire_lock.release()
            trace.end(started, "send (under the wire lock)", messages=len(frames) if frames else 1)

    def _count_sent(self, messages: list[Message] | list[bytes], at: float | None, *, framed: bool) -> None:
        """Number the messages just written (under wire_lock: the wire's order), for a trace.

        ``messages`` are the messages themselves or, ``framed``, the frames queued for them.
        """
        for message in messages:
            self.traffic.messages_out += 1
            if at is not None:
                flow = trace.flow_id(self.key, self.client, self.traffic.messages_out) if self.key else None
                if isinstance(message, str):
                    shown: str | bytes = message
                else:
                    shown = frame_text(message) if framed else bytes(message)
                trace.message("sent", describe_message(shown), message_size(shown), flow, at)

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Ask for the closing handshake with ``code``; returns at once, idempotent.

        The reader sends the close frame and waits for the answer, for at
        most ``close_timeout``. What :meth:`send_nowait` queued before goes
        out first, within the same bound: a peer that has not read it all by
        then is cut (1006), and :meth:`flush` returns False; to be sure it
        arrives, ``flush()`` before closing. 1005 and 1006 cannot be sent and
        become 1000; a reason is cut to the 123 bytes a close frame holds.
        """
        self.stop.set()
        with self._queues_lock:
            if self._inbox is not None:
                self._inbox.stop_waiting()
            if self._outbox is not None:
                self._outbox.seal()  # what send_nowait queued before still goes out, before the close frame
            self._closing.request(code, reason, time.monotonic())
        # Read after the request is set: a reader that has not seen it yet is woken.
        watch = self._watch  # once: the last turn lets go of it
        if watch is not None:
            watch.wake()
        elif self._wakeup is not None:
            self._wakeup.ring()

    def abort(self) -> None:
        """Cut the connection now: the reader and any blocked writer return at once."""
        self._closing.cut()  # before the shutdown: the reader must not read on what is still queued
        self.stop.set()
        self._stop_queues()
        shut_down(self.sock)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait for the reader to end (at most ``timeout`` s, default: the close bound); True if it has.

        If it has not ended by then, the connection is aborted, and we wait
        a little more for the reader to see it.
        """
        if self.done.wait(self.close_timeout + 0.5 if timeout is None else timeout):
            return True
        self.abort()
        return self.done.wait(0.5)

    def _stop_queues(self, end: BaseException | None = None) -> None:
        """Discard what waits to be written; with ``end``, what recv() raises once the rest is taken."""
        with self._queues_lock:
            if self._outbox is not None:
                self._outbox.stop()
            self._inbox_end = end or self._inbox_end
            if self._inbox is not None:
                self._inbox.stop_waiting()
                if end is not None:
                    self._inbox.end(end)

    def at_end(self, callback: Callable[[Connection], None]) -> None:
        """Call ``callback(conn)`` once the connection is over and its socket released.

        It runs in the thread that released it (the reader, or a netpoller
        worker), or at once if that has happened already; keep it short.
        """
        with self._queues_lock:
            if not self.done.is_set():
                self._at_end.append(callback)
                return
        callback(self)

    # --- the reader: turns that never wait for the peer -------------------------------------

    def _read_loop(self) -> None:
        """The reader thread: a turn, then wait for bytes, the next due time or a wake-up; until over."""
        while True:
            due = self._turn()
            if self._closing.state is State.OVER:
                return
            self._wait_readable(due)

    def _turn(self) -> float | None:
        """Handle what has come and do what is due, without waiting for the peer; when to run again.

        Returns the ``time.monotonic()`` by which the reader must run again,
        or None: only when bytes come (or a wake-up). The reader's thread
        calls it in a loop; the netpoller, once per event. The last turn
        releases the socket.
        """
        self._in_turn = threading.current_thread()
        if self._watch is not None:
            trace.end(self._parked_since, "parked (no thread)")
        try:
            due = self._advance()
        except BaseException as error:  # a bug of ours: report it, still release the socket
            self._log.exception("reader failed")
            self._closing.end(Closed(CloseCode.ABNORMAL_CLOSURE, f"internal error: {error!r}", by_peer=False))
            due = None
        else:
            if self._closing.state is State.OVER:
                outcome = self._closing.outcome or Closed(
                    CloseCode.ABNORMAL_CLOSURE, "the reader failed", by_peer=False
                )
                log_end(outcome, self.log_fields)
        finally:
            self._in_turn = None
            if self._closing.state is State.OVER:
                self._release()
            elif self._watch is not None:
                self._parked_since = trace.begin()
        return due

    def _release(self) -> None:
        """The reader's end: discard what waits, release the socket (Go: ``defer conn.Close()``)."""
        self.closed = self._closing.outcome or Closed(
            CloseCode.ABNORMAL_CLOSURE, "the reader failed", by_peer=False
        )
        try:
            trace.end(self._closing_started, "closing handshake")
            self.stop.set()
            self._stop_queues(self.closed)
            if self._wakeup is not None:
                self._wakeup.close()
            if self._watch is not None:
                self._watch.close()
            # Both hold this connection (the watch its turn, on_message a closure over
            # it): let go, so that it is freed when its last user drops it, not by the
            # garbage collector (a full collection over thousands of ended sessions).
            self._watch = self._on_message = None
            shut_down(self.sock)
            # A writer may still be inside a write; after the shutdown it fails at
            # once, and only then may the socket be closed under it.
            locked = self.wire_lock.acquire(timeout=self.write_timeout)
            self._writing_until = None  # closing the socket, quickly: see _acquire_wire
            self.sock.close()
            if locked:
                self.wire_lock.release()
        finally:
            with self._queues_lock:
                self.done.set()
                at_end, self._at_end = self._at_end, []
            for callback in at_end:
                try:
                    callback(self)
                except Exception:
                    self._log.exception("an at_end callback failed")

    def _advance(self) -> float | None:
        """The reader's part of the closing state machine (:mod:`wsthreads.closing`), one turn of it.

        Reading while OPEN or CLOSING, winding down TCP while ENDING; the
        next due time, or None once OVER (see :meth:`_turn`).
        """
        closing = self._closing
        try:
            if closing.state < State.ENDING:
                due = self._read_what_came()
                if closing.state < State.ENDING:
                    return due
            return self._wind_down()
        except _CloseTimeout:
            outcome = closing.timed_out()
            if outcome is closing.ours:
                self._log.warning(
                    "peer did not answer the close within %.1f s; dropping it", self.close_timeout
                )
            closing.end(outcome)
        except _Lost as lost:
            closing.end(closing.lost(str(lost)))
        return None

    def _read_what_came(self) -> float | None:
        """Dispatch what has come, doing what is due between reads; the next due time.

        Settles the session once its end is known. Stops after
        :data:`READS_PER_TURN` reads, so that one busy peer cannot keep a
        netpoller worker from the others: it runs again at once.
        """
        try:
            data: bytes | None
            data, self._pending = self._pending, b""
            drained = False
            for _ in range(READS_PER_TURN):
                if data:
                    ended = self._dispatch(data)
                    if ended is not None:
                        self._begin_wind_down(ended)
                        return None
                due = self._do_what_is_due()
                if drained:
                    return due
                data = self._recv_nowait()
                if data is None:
                    return due
                drained = self._drained(data)
            self._pending = data or b""
            return time.monotonic()
        except _Fail as failure:
            self._log.warning("closing with %s", describe_close(failure.code, failure.reason))
            self._send_close(failure.code, failure.reason)
            self._begin_wind_down(self._closing.failed(failure.code, failure.reason))
            return None

    def _recv_nowait(self) -> bytes | None:
        """What the peer has sent, without waiting; None if nothing has come."""
        if self._closing.is_cut:
            raise _Lost("the connection was cut")
        try:
            with self._tls_lock:
                data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except OSError as error:
            raise _Lost(str(error) or type(error).__name__) from None
        if not data:
            raise _Lost(f"the {'server' if self.client else 'client'} went away without a close frame")
        self.traffic.bytes_in += len(data)
        return data

    def _drained(self, data: bytes) -> bool:
        """True if a read of ``data`` took everything that had come: the next read would find nothing.

        A plain socket's short read did; with TLS, OpenSSL may still hold decrypted bytes.
        """
        if len(data) >= READ_SIZE:
            return False
        if isinstance(self.sock, ssl.SSLSocket):
            with self._tls_lock:
                return not self.sock.pending()
        return True

    def _wait_readable(self, due: float | None) -> None:
        """The reader thread's wait: for bytes, the ``due`` time, or a wake-up (a close was asked for)."""
        assert self._wakeup is not None
        started = trace.begin()
        wait_for(self.sock, select.POLLIN, None if due is None else due - time.monotonic(), self._wakeup)
        trace.end(started, "recv (blocked)")

    def _do_what_is_due(self) -> float | None:
        """Do what is due (send a requested close, a ping; give up on a close); when the next is due."""
        now = time.monotonic()
        requested = self._closing.close_due()
        if requested is not None:
            self._send_close(*requested)
        deadline = self._closing.deadline
        if deadline is not None:
            if now >= deadline:
                raise _CloseTimeout
            return deadline
        if self.ping_interval is None:
            return None
        if now >= self._next_ping:
            if self._awaiting_pong:
                raise _Fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self._send_control(frames.PING, b"keepalive")
            self._awaiting_pong = True
            self._next_ping = now + self.ping_interval
        return self._next_ping

    def _dispatch(self, data: bytes) -> Closed | None:
        """Feed bytes to the frame layer and act on what they complete; how the session ended, if it did."""
        limit = self._inbound_limit if self._closing.state is State.OPEN else None
        failure = None
        try:
            events = self._parser.receive(data)
        except frames.ProtocolError as error:  # what came before the broken rule still counts
            events, failure = error.events, _Fail(error.code, error.reason)
        # Every byte counts, fragments and control frames too, and a compressed message what it
        # inflates to; but a read that brings the peer's close ends the session anyway: it is
        # answered, not failed.
        growth = self._parser.take_growth()
        if limit is not None and not any(isinstance(event, frames.Close) for event in events):
            over = limit.bytes_over(len(data) + max(growth, 0))
            if over is not None:  # none of it delivered: the close says why
                self._drain_left = DRAIN_LIMIT
                raise _Fail(CloseCode.POLICY_VIOLATION, over)
        for event in events:
            if limit is not None and not isinstance(event, frames.Close):
                over = limit.messages_over()  # a ping or a pong too: each costs us a turn (and a pong)
                if over is not None:  # not delivered: the close says why
                    self._drain_left = DRAIN_LIMIT
                    raise _Fail(CloseCode.POLICY_VIOLATION, over)
            if isinstance(event, (str, bytes)):
                self._deliver(event)
            elif isinstance(event, frames.Ping):
                self._send_control(frames.PONG, event.payload)
            elif isinstance(event, frames.Pong):
                self._awaiting_pong = False
            else:
                return self._closed_by(event)
        if failure is not None:
            raise failure
        return None

    def _closed_by(self, close: frames.Close) -> Closed:
        """The peer's close frame: the answer to ours, or the peer closing first."""
        outcome = self._closing.received(close.code, close.reason)
        if self._closing.must_answer:  # the peer closed first: answer with its code (RFC 6455 5.5.1)
            self._closing_started = trace.begin()
            trace.instant("close frame received", code=close.code, reason=close.reason)
            self._send_close(close.code, "")
        return outcome

    def _deliver(self, message: Message) -> None:
        self.last_received = time.monotonic()
        log_message("received", message, self.log_fields)
        self.traffic.messages_in += 1
        if trace.active():
            flow = trace.flow_id(self.key, not self.client, self.traffic.messages_in) if self.key else None
            trace.message("received", describe_message(message), message_size(message), flow)
        if self._on_message is None:
            self.inbox.deliver(message)  # waits while the queue is full: TCP pushes back
            return
        try:
            self._on_message(message)
        except Closed:
            # A reply that fails because the session is closing (the peer's
            # close often arrives in the same read as its last messages): the
            # reader must still see that close itself.
            self._log.debug("reply not sent: the connection is closing")
        except BaseException as error:  # your code failed, not the peer: 1011, one line
            self._log.error("closing after an error in the message handler: %r", error)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _begin_wind_down(self, outcome: Closed) -> None:
        """After the close frames (the session ended as ``outcome``): TCP ends cleanly, by the close deadline.

        The server closes TCP first (RFC 6455 7.1.1): it half-closes, so the
        peer sees EOF after our close frame. Both sides then read and discard
        until the peer's EOF (:meth:`_wind_down`): closing with unread data
        would send a reset, and the peer would see 1006 instead of our close code.
        """
        self.stop.set()
        self._closing.settle(outcome, time.monotonic())
        if not self.client:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._closing.end()  # the connection is gone already: nothing to wait for

    def _wind_down(self) -> float | None:
        """Discard what comes until the peer's EOF; when to run again (the close deadline), or over.

        At most :data:`READS_PER_TURN` reads a turn, like any turn; and from a
        peer closed for going over a rate limit, at most :data:`DRAIN_LIMIT`
        bytes in all: still flooding, it is cut, not read for the rest of the
        close deadline.
        """
        closing = self._closing
        for _ in range(READS_PER_TURN):
            if closing.state is not State.ENDING or time.monotonic() >= (deadline := closing.deadline or 0.0):
                break
            try:
                with self._tls_lock:
                    data = self.sock.recv(READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return deadline
            except OSError:
                break
            if not data:
                break
            self.traffic.bytes_in += len(data)
            if self._drain_left is not None:
                self._drain_left -= len(data)
                if self._drain_left < 0:
                    break
        else:
            return time.monotonic()  # more may have come: the next turn goes on, after the others'
        closing.end()
        return None

    # --- writing, under wire_lock -------------------------------------------------------

    def _send_close(self, code: int, reason: str) -> None:
        """Send our close frame once (the reader only), and start the close deadline."""
        code, reason = sendable_code(code), close_reason(reason)
        self._closing_started = self._closing_started or trace.begin()
        trace.instant("close frame sent", code=code, reason=reason)
        now = time.monotonic()
        deadline = self._closing.start_deadline(now)
        self.stop.set()
        if not self.wire_lock.acquire(timeout=max(deadline - now, 0)):
            self._give_up("a write held the connection past the close deadline")
            raise _CloseTimeout
        self._writing_until = None  # ours: preparing (see _acquire_wire)
        try:
            by_peer = self._closing.peers is not None
            if not self._closing.frame_out(code, reason):
                return
            # Our own close: the frames send_nowait queued before it go first (by the close deadline).
            outbox = self._outbox  # None: nothing was ever queued (stop is set: none will be)
            rest = b"" if outbox is None else outbox.take_rest()  # a cut frame's end: always first
            taken = [] if by_peer or outbox is None else outbox.drain()
            queued = [self._on_wire(frame) for frame in taken]
            size = len(rest) + sum(map(len, taken))  # in flight until settled: flush() waits
            close = frames.frame(frames.CLOSE, frames.close_payload(code, reason), self.client)
            data = b"".join([rest, *queued, *close])
            if outbox is not None:
                outbox.stop()  # nothing may follow a close frame
            try:
                self._write(data, deadline)
            except Closed as failed:
                if outbox is not None:
                    outbox.settled(size, written=False)  # what send_nowait queued did not get through
                raise _Lost(failed.reason) from None
            if outbox is not None:
                outbox.settled(size, written=True)
            self._count_sent(queued, trace.begin(), framed=True)
        finally:
            self.wire_lock.release()

    def _send_control(self, opcode: int, payload: bytes) -> None:
        """A ping or a pong, unless a close frame has gone out (nothing may follow it)."""
        with self.wire_lock:
            self._writing_until = None  # ours: preparing (see _acquire_wire)
            if self._closing.state is State.OPEN:
                try:
                    data = b"".join(frames.frame(opcode, payload, self.client))
                    self._write(data, time.monotonic() + self.write_timeout)
                except Closed:
                    pass  # the reader finds out on its next read

    def _write(self, data: bytes, deadline: float) -> None:
        """Write all of ``data`` by ``deadline``, or drop the peer (the caller holds wire_lock).

        A requested close shortens the wait to the close deadline, in any
        thread: the close frame (and the reader, for a pong) waits for this
        write's lock, and the close must be over by then.
        """
        outbox = self._outbox
        if outbox is not None:
            rest = outbox.take_rest()  # the end of a cut frame goes first (not joined: it may be big)
            if rest:
                try:
                    self._write_all(memoryview(rest), deadline)
                except Closed:
                    outbox.settled(len(rest), written=False)
                    raise
                outbox.settled(len(rest), written=True)
        self._write_all(memoryview(data), deadline)

    def _write_all(self, view: memoryview, deadline: float) -> None:
        """Write all of ``view`` by ``deadline`` (see :meth:`_write`)."""
        in_reader = threading.current_thread() is self._in_turn
        self._writing_until = deadline
        while view:
            try:
                with self._tls_lock:
                    sent = self.sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            except OSError as error:
                raise Closed(
                    CloseCode.ABNORMAL_CLOSURE, str(error) or type(error).__name__, by_peer=False
                ) from None
            self.traffic.bytes_out += sent
            view = view[sent:]
            if view and not self._wait_writable(deadline, in_reader):
                if time.monotonic() < deadline:
                    self._give_up("a write was still waiting for the peer to read at the close deadline")
                else:
                    self.traffic.slow_client = "write-deadline"
                    self._give_up(f"a write took over {self.write_timeout:g} s: the peer is not reading")
                raise Closed(CloseCode.ABNORMAL_CLOSURE, "the peer is not reading", by_peer=False)

    def _wait_writable(self, deadline: float, in_reader: bool) -> bool:
        """Wait for room in the socket's buffer until ``deadline``; False if none came."""
        while True:
            requested_by = self._closing.requested_by
            if requested_by is not None:  # no write may hold the wire (and the close frame) past it
                deadline = min(deadline, requested_by)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wakeup = self._wakeup if in_reader else None  # a ring: a close was requested, by when?
            if wakeup is None:  # another thread's write, or a netpoller worker: it looks now and then
                left = min(left, WRITE_LOOK)
            if wait_for(self.sock, select.POLLOUT, left, wakeup):
                return True

    def _give_up(self, why: str) -> None:
        """Drop a peer that does not read; the reader reports ``why``."""
        self._closing.cut(why)  # the reader's last line says it: "connection lost: WHY"
        self.abort()


def broadcast(connections: Iterable[Connection], message: Message) -> int:
    """:meth:`Connection.send_nowait` ``message`` to each connection; never blocks.

    Frames it once for every server-side connection (their frames are not
    masked, so one buffer serves all), and writes it from the calling thread
    wherever the socket takes it: only a connection that is behind gets it
    queued for its writer thread. Returns how many connections took it.
    """
    # Framed before the loop: a wrong type raises even with nobody connected.
    opcode, payload = opcode_and_payload(message)
    plain = b"".join(frames.frame(opcode, payload, masked=False))
    shared: dict[Any, bytes] = {}  # compressed once for every connection compressing alike
    queued = 0
    for conn in connections:
        if conn.client:
            queued += conn.send_nowait(message)
        else:
            queued += conn._queue_frame(conn._broadcast_frame(opcode, payload, plain, shared))
    return queued
