"""The WSGI application: upgrade the endpoint to a WebSocket session, refuse everything else.

Works on Werkzeug's threaded server (see :mod:`wsthreads.serving`) and on
gunicorn's gthread worker (see :mod:`wsthreads.gunicorn`): the two servers
simple-websocket can take the socket from. simple-websocket does the
opening handshake; then a :class:`~wsthreads.connection.Connection` owns
the socket, and the session runs in the server's request thread.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, NoReturn

import simple_websocket

from . import trace
from .closing import CloseCode
from .connection import (
    CLOSE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MAX_QUEUE,
    OUTBOUND_LIMIT,
    READ_SIZE,
    WRITE_TIMEOUT,
    Connection,
    Message,
    broadcast,
    wait_for,
)
from .deflate import Agreement, Deflate, compression_setting
from .deflate import answer as compression_answer
from .extension import Extension, Opening, check_extensions
from .handshake import (
    Refusal,
    check_allowed_origin,
    check_request,
    is_websocket_upgrade,
    subprotocol_names,
)
from .limits import AddressLimits, InboundLimit
from .lines import printable
from .metrics import Metrics, check_available, process_metrics
from .netpoller import netpoller
from .queues import OVERFLOW_CLOSE, check_policy
from .request import Authenticate, Reject, Request, TrustedProxies, normalized, wsgi_text
from .session import Echo, SessionCode, park_session, run_session
from .settings import check_count, check_rate, check_seconds

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

log = logging.getLogger("wsthreads.server")

#: The endpoint, as in the article.
WS_PATH = "/ws"
#: Where the browser page is served.
PAGE_PATH = "/"
#: Where the metrics are served when asked for without a path (``--metrics``).
METRICS_PATH = "/metrics"
#: Seconds between keepalive pings (proxies often drop connections idle for
#: 60 s; a peer that has not answered by the next ping is dead).
PING_INTERVAL = 25.0
#: Sessions open at once: what one process was measured to hold with every bound
#: met (bench/scale.py, docs/performance.md), as Handler objects' sessions, parked
#: in the netpoller (``ServerConfig.netpoller``) with no thread. A handler
#: function's session holds a thread: a few thousand of those is the cliff.
MAX_CONNECTIONS = 9000
#: Sessions that hold a thread for their whole life (a handler function's, or any with
#: ``netpoller=False``) open at once: thousands of runnable threads are the cliff where
#: the GIL's switching takes the cores (docs/performance.md, "Where the constants come from").
MAX_SESSION_THREADS = 1000
#: Seconds :meth:`WebSocketApp.shutdown` takes at most, however many peers are stuck.
SHUTDOWN_TIMEOUT = 2.0
#: The environ key of a callable our Werkzeug handler puts there: calling it
#: ends the request's deadline, which must not cut the session that follows.
DISARM_KEY = "wsthreads.disarm_deadline"
#: The environ key of a callable our Werkzeug server puts there: calling it says
#: the request's thread now runs a session, which may hold it for long.
HOLD_KEY = "wsthreads.hold_thread"
#: The answer to a request that comes, or is authenticated, once shutdown has begun.
SHUTTING_DOWN = Refusal("503 Service Unavailable", "the server is shutting down", cause="shutting-down")


class Listen:
    """Send nothing; the reader prints what arrives. The default when no handler is given."""

    def on_message(self, conn: Connection, message: Any) -> None:
        """Nothing to do: the reader has logged it."""

    def run(self, conn: Connection) -> None:
        """Nothing of our own to send."""


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What the server's sessions do, and the limits they run under.

    Attributes:
        handler: your per-connection code: a function ``handler(conn)``
            called once per connection in its own thread, or a
            :class:`wsthreads.session.Handler` object (one object serves
            every connection, from several threads at once). Default: echo
            with ``echo``, else only print.
        echo: send every message straight back (when no handler is given).
        path: the endpoint; an upgrade on any other path gets 404.
        authenticate: ``authenticate(request)``, called before the upgrade
            with the :class:`~wsthreads.request.Request`: returns who the
            client is (anything but None; it becomes ``conn.user``), or
            refuses: None gives 401, ``raise Reject(403, "reason")`` any
            status with a one-line reason. Runs within the handshake deadline.
        subprotocols: the subprotocols the server speaks; it picks the first
            the client offers that is in this list (RFC 6455 4.2.2), and none
            (``conn.subprotocol`` None) if the client offers none of them.
        max_message_size: largest incoming message in bytes (None: no limit);
            a larger one closes the session with 1009.
        ping_interval: seconds between keepalive pings (None: none); a client
            that has not answered one by the next is closed with 1011.
        write_timeout: seconds one write may take; a client that does not
            read for that long is dropped.
        close_timeout: seconds a close may take before the connection is cut.
        max_connections: sessions open at once; more get 503.
        max_session_threads: the most sessions that hold a thread at once.
            When every session does, for its whole life (a handler
            function's, or ``netpoller=False``), the most open at once;
            else a new session is refused while that many run code in their
            thread (a Handler's ``run()`` that lasts). More get 503. None:
            ``max_connections`` alone.
        allowed_origins: browser origins allowed besides the server's own
            (``*``: all).
        max_queue: received messages that may wait for ``conn.recv()``.
        outbound_limit: bytes that may wait for a connection's writer
            (``send_nowait``, :meth:`WebSocketApp.broadcast`); a message
            that comes when more waits meets ``on_overflow``.
        on_overflow: what a client that far behind gets: ``"close"``, with
            1013 (try again later; a reconnecting client comes back), or
            ``"drop-oldest"``: its oldest waiting messages are dropped until
            no more than the limit waits.
        extensions: code that runs with every session beside the handler
            (:mod:`wsthreads.extension`), e.g.
            ``[wsthreads.PubSub("redis://...")]`` for publish and subscribe.
        netpoller: a :class:`~wsthreads.session.Handler`'s session holds no
            thread while it waits for its client: the connection waits in the
            process's netpoller (:mod:`wsthreads.netpoller`), ``on_message``
            runs in its workers, and the request's thread is free once
            ``run()`` has returned. False: every session keeps its request
            thread and a reader thread (the article's goroutine), for its
            whole life. A handler function (``handler(conn)``, reading with
            ``recv``) always keeps its threads.
        trusted_proxies: the proxies whose ``X-Forwarded-For`` gives the
            client's address (``request.remote_addr``, the log): addresses
            and networks (``"127.0.0.1"``, ``"10.0.0.0/8"``), and ``"unix"``
            for whatever connects over a Unix socket. Default: none; the
            address is the connection's.
        max_sessions_per_address: sessions one client address may have
            open at once (with handshakes in progress); more get 429 with
            ``Retry-After``. None: no limit. The address is the one
            ``trusted_proxies`` forwarded, if any (see :mod:`wsthreads.limits`).
        max_connection_rate: new connections one client address may open a
            second (a token bucket holding a second's worth); more get 429
            with ``Retry-After``. None: no limit.
        max_message_rate: messages a second one connection may send (a token
            bucket holding a second's worth); a client over it is closed
            with 1008, saying so. None: no limit.
        max_byte_rate: message bytes a second one connection may send, the
            same way. None: no limit.
        metrics_path: where the app serves its Prometheus metrics
            (``"/metrics"``; see :mod:`wsthreads.metrics`), which needs
            ``pip install "wsthreads[metrics]"``. None (the default): no
            metrics are kept or served.
        compression: permessage-deflate for the clients that offer it:
            ``"deflate"``, or a :class:`~wsthreads.deflate.Deflate` with its
            window, memory level and context takeover. None (the default):
            declined; every message goes as it is (see docs/compression.md).
    """

    handler: SessionCode | None = None
    echo: bool = False
    path: str = WS_PATH
    authenticate: Authenticate | None = None
    subprotocols: tuple[str, ...] = ()
    max_message_size: int | None = MAX_MESSAGE_SIZE
    ping_interval: float | None = PING_INTERVAL
    write_timeout: float = WRITE_TIMEOUT
    close_timeout: float = CLOSE_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    max_session_threads: int | None = MAX_SESSION_THREADS
    allowed_origins: tuple[str, ...] = ()
    max_queue: int = MAX_QUEUE
    outbound_limit: int = OUTBOUND_LIMIT
    on_overflow: str = OVERFLOW_CLOSE
    extensions: tuple[Extension, ...] = ()
    netpoller: bool = True
    trusted_proxies: tuple[str, ...] = ()
    max_sessions_per_address: int | None = None
    max_connection_rate: float | None = None
    max_message_rate: float | None = None
    max_byte_rate: float | None = None
    metrics_path: str | None = None
    compression: Deflate | str | None = None

    def __post_init__(self) -> None:
        if not is_plain_path(self.path):
            raise ValueError(
                f"the endpoint path must be '/' and letters, digits, -._~ (e.g. /live/updates): {self.path!r}"
            )
        if self.metrics_path is not None:
            if (
                not isinstance(self.metrics_path, str)
                or not is_plain_path(self.metrics_path)
                or self.metrics_path in (self.path, PAGE_PATH)
            ):
                raise ValueError(
                    "the metrics path must be '/' and letters, digits, -._~ (e.g. /metrics), and neither"
                    f" the endpoint nor the page's /: {self.metrics_path!r}"
                )
            check_available()
        check_policy(self.on_overflow)
        check_count("max_queue", self.max_queue)
        check_count("outbound_limit", self.outbound_limit)
        check_count("max_connections", self.max_connections, minimum=0)
        check_count("max_session_threads", self.max_session_threads, minimum=0, optional=True)
        check_count("max_message_size", self.max_message_size, optional=True)
        check_count("max_sessions_per_address", self.max_sessions_per_address, optional=True)
        check_rate("max_connection_rate", self.max_connection_rate)
        check_rate("max_message_rate", self.max_message_rate)
        check_rate("max_byte_rate", self.max_byte_rate)
        check_seconds("write_timeout", self.write_timeout)
        check_seconds("close_timeout", self.close_timeout)
        check_seconds("ping_interval", self.ping_interval, optional=True)
        # Frozen, but a list is fine too: stored as tuples.
        object.__setattr__(self, "subprotocols", subprotocol_names(self.subprotocols))
        object.__setattr__(self, "extensions", check_extensions(self.extensions))
        if isinstance(self.allowed_origins, str):
            raise TypeError(f"allowed_origins is a sequence of origins, e.g. ({self.allowed_origins!r},)")
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        for origin in self.allowed_origins:
            check_allowed_origin(origin)
        TrustedProxies.parse(self.trusted_proxies)  # a bad entry is a ValueError here
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        object.__setattr__(self, "compression", compression_setting(self.compression))

    @property
    def holds_threads(self) -> bool:
        """True if every session holds a thread for its whole life: it is not parked in the netpoller."""
        return not (self.netpoller and hasattr(self.session_handler(), "on_message"))

    @property
    def session_limit(self) -> int:
        """Sessions that may be open at once: ``max_connections``, or fewer if each holds a thread."""
        if self.holds_threads and self.max_session_threads is not None:
            return min(self.max_connections, self.max_session_threads)
        return self.max_connections

    def session_handler(self) -> SessionCode:
        """What each session does."""
        if self.handler is not None:
            return self.handler
        return Echo() if self.echo else Listen()


def describe_peer(request: Request, environ: dict[str, Any]) -> str:
    """Who is connected, for the log: ``127.0.0.1:52044``, ``203.0.113.7 (forwarded)``, ``a Unix socket``."""
    direct = environ.get("REMOTE_ADDR") or ""
    if request.remote_addr != normalized(direct):
        return f"{printable(request.remote_addr)} (forwarded)"
    if not direct:
        return "a Unix socket"
    port = environ.get("REMOTE_PORT")
    return f"{direct}:{port}" if port else direct


class _NoThread:
    """Stands in for the thread simple-websocket starts per connection.

    simple-websocket does the opening handshake; after that our own reader
    drives the connection, and its thread would only fight ours for the socket.
    """

    def __init__(self, target: Callable[[], None]) -> None:
        self.name = "unused"

    def start(self) -> None:
        """Start nothing: the connection's reader does this thread's work."""


class _HeldResponse:
    """Stands in for the socket while simple-websocket answers the handshake: keeps the 101.

    The server sends it itself once the connection is registered (see ``_run``).
    """

    def __init__(self) -> None:
        self.data = b""

    def send(self, data: bytes) -> int:
        """Keep ``data`` instead of sending it."""
        self.data += data
        return len(data)


#: Where Werkzeug and gunicorn put the connection's socket in the environ.
SOCKET_KEYS = ("werkzeug.socket", "gunicorn.socket")


def no_socket_refusal(environ: dict[str, Any]) -> Refusal | None:
    """A server that cannot hand its connection over (Django's runserver, wsgiref): 501, saying why."""
    if any(key in environ for key in SOCKET_KEYS):
        return None
    return Refusal(
        "501 Not Implemented",
        "this WSGI server cannot hand its connection over to a WebSocket (Django's runserver and"
        " wsgiref cannot): serve with wsthreads.start_server, manage.py runwsserver or gunicorn",
        cause="server-cannot-upgrade",
    )


def hijacked_socket(environ: dict[str, Any]) -> socket.socket:
    """The request's socket, which the session takes over."""
    sock: socket.socket = next(environ[key] for key in SOCKET_KEYS if key in environ)
    return sock


def with_socket(environ: dict[str, Any], stand_in: object) -> dict[str, Any]:
    """The environ with ``stand_in`` where the server put the socket."""
    return {k: stand_in if k in SOCKET_KEYS else v for k, v in environ.items()}


def send_response(sock: socket.socket, data: bytes, timeout: float) -> bool:
    """Write the handshake's answer to a non-blocking socket within ``timeout``; False if it failed."""
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        except OSError:
            return False
        if view and not wait_for(sock, select.POLLOUT, deadline - time.monotonic()):
            return False
    return True


class WebSocketApp:
    """The WSGI application: the endpoint runs a session, anything else is refused.

    ``GET /`` serves the browser page. Requests that cannot become a session
    get a one-line answer: 404 for other paths (naming the endpoint), 400 for
    a plain GET on the endpoint or a malformed handshake, 405, 426, 403 for a
    foreign origin, and 503 beyond ``max_connections`` or once
    :meth:`shutdown` has begun.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._numbers = itertools.count(1)
        self._broadcasting = threading.Lock()  # one broadcast at a time: the same order everywhere
        _apps.add(self)
        # Guards the four fields below; notified when the last session ends.
        self._changed = threading.Condition()
        # Requests between admission and their end, and parked sessions (they keep their
        # request's admission until they end): what max_connections bounds.
        self._admitted = 0
        self._holding = 0  # request threads running a session's code (past the 101)
        self._connections: set[Connection] = set()
        self._accepting = True
        #: The process's metrics, if this app keeps them (``metrics_path``).
        self.metrics: Metrics | None = None
        if self.config.metrics_path is not None:
            self.metrics = process_metrics(lambda: [app for app in all_apps() if app.metrics is not None])
        # Held while the extensions start or stop: a reopen racing a shutdown sees them
        # either all started or all stopped.
        self._lifecycle = threading.Lock()
        self._session_limit = self.config.session_limit
        self._start_extensions()
        self._proxies = TrustedProxies.parse(self.config.trusted_proxies)
        self._limits = AddressLimits(self.config.max_sessions_per_address, self.config.max_connection_rate)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Handle one request (the WSGI entry point)."""
        started = time.monotonic()
        if (
            self.metrics is not None
            and environ.get("PATH_INFO") == self.config.metrics_path
            and environ.get("REQUEST_METHOD") in ("GET", "HEAD")
            and not is_websocket_upgrade(environ)
        ):
            return metrics_response(self.metrics, environ, start_response)
        if (
            environ.get("PATH_INFO") == PAGE_PATH
            and environ.get("REQUEST_METHOD") in ("GET", "HEAD")
            and not is_websocket_upgrade(environ)
        ):
            return page_response(start_response, head=environ["REQUEST_METHOD"] == "HEAD")
        address = self._proxies.client_address(environ)
        refusal = (
            check_request(environ, self.config.path, self.config.allowed_origins)
            or no_socket_refusal(environ)
            or self._admit(address)
        )
        if refusal is not None:
            path = wsgi_text(environ.get("PATH_INFO", ""))
            fields = {"remote": printable(address), "path": printable(path)}
            log.info(
                "refused %s: %s",
                printable(f"{environ.get('REQUEST_METHOD')} {path}"),
                refusal.status,
                extra=fields,
            )
            return self._refusal_response(start_response, refusal)
        answer: Iterable[bytes] | Hijacked = ()
        try:
            answer = self._serve(environ, start_response, started, address)
        finally:
            if not (isinstance(answer, Hijacked) and answer.parked):  # a parked one leaves when it ends
                self._leave(address)
        if isinstance(answer, Hijacked):
            end_hijacked_request(answer.mode)
        return answer

    def _refusal_response(self, start_response: Callable[..., Any], refusal: Refusal) -> Iterable[bytes]:
        """Answer a request that gets no session with ``refusal``, counted in the metrics."""
        if self.metrics is not None:
            self.metrics.refused(refusal.status, refusal.cause)
        return plain_response(start_response, refusal)

    def _leave(self, address: str) -> None:
        """A request, or a parked session, is over: its admission ends."""
        if self._limits.active:
            self._limits.leave(address)
        with self._changed:
            self._admitted -= 1
            self._notify_if_none_left()

    def _notify_if_none_left(self) -> None:
        """Wake shutdown() once no request or session is left (under ``_changed``): not once per session."""
        if not self._admitted:
            self._changed.notify_all()

    def shutdown(
        self,
        code: int = CloseCode.GOING_AWAY,
        reason: str = "server shutting down",
        timeout: float = SHUTDOWN_TIMEOUT,
    ) -> bool:
        """Refuse new sessions, close every open one with ``code`` at once, and wait.

        Every connection runs its own closing handshake in its own reader, so
        they close in parallel; those still open when most of ``timeout`` has
        passed (a peer that reads nothing, a handler stuck in a write) are cut.
        Returns True if every session has ended within ``timeout`` seconds.
        """
        with trace.span("shutdown", code=code):
            return self._shut_down(code, reason, time.monotonic() + timeout)

    def _start_extensions(self) -> None:
        """Start every extension, in order; if one fails, stop those started, and raise."""
        started: list[Extension] = []
        try:
            for extension in self.config.extensions:
                extension.start(self)
                started.append(extension)
        except BaseException:
            self._stop_extensions(started)
            raise

    def _stop_extensions(self, extensions: Iterable[Extension]) -> None:
        """Stop ``extensions``, the last started first; one that fails is logged, the others still stop."""
        for extension in reversed(list(extensions)):
            try:
                extension.stop()
            except Exception as error:
                log.error("the extension %r failed to stop: %r", extension, error)

    def _shut_down(self, code: int, reason: str, deadline: float) -> bool:
        with self._lifecycle:
            with self._changed:
                was_accepting, self._accepting = self._accepting, False
                connections = list(self._connections)
            for conn in connections:
                conn.close(code, reason)  # asks: each closes in its own reader, all at once
            if was_accepting:  # now, not at the end: what waits in an extension (a broker) is woken
                self._stop_extensions(self.config.extensions)
        with self._changed:
            if self._changed.wait_for(self._none_left, max(deadline - time.monotonic() - 0.5, 0)):
                return True
            stuck = list(self._connections)
        for conn in stuck:
            conn.abort()
        with self._changed:
            return self._changed.wait_for(self._none_left, max(deadline - time.monotonic(), 0))

    def _none_left(self) -> bool:
        return not self._admitted

    def reopen(self) -> None:
        """Accept sessions again after :meth:`shutdown` (a no-op before): the same app served anew.

        :func:`~wsthreads.start_server` calls it, so that an app made once, at
        module level, can be served by one test after another.
        """
        with self._lifecycle:
            if self._accepting:
                return
            self._start_extensions()  # before accepting: a session never meets an extension not started
            with self._changed:
                self._accepting = True

    @property
    def accepting(self) -> bool:
        """True until :meth:`shutdown` (and again after :meth:`reopen`): new sessions are taken."""
        return self._accepting

    def threads_in_sessions(self) -> int:
        """Request threads running a session's code now: a handler function's, or a ``run()``.

        A server whose threads are all here is full for as long as those
        sessions last; threads busy with handshakes are free again within ms.
        """
        with self._changed:
            return self._holding

    def connections(self) -> list[Connection]:
        """The connections open right now. Any thread may ``send()`` on them."""
        with self._changed:
            return list(self._connections)

    def broadcast(self, message: Message, where: Callable[[Connection], bool] | None = None) -> int:
        """Send ``message`` to every open connection (or those ``where(conn)`` selects); never blocks.

        It is written from the calling thread wherever a socket takes it at
        once; a connection that is behind gets it queued for its own writer,
        so a client that does not read cannot hold up the caller or the
        others: it meets the ``on_overflow`` policy, or is dropped after
        ``write_timeout``.
        Broadcasts from several threads reach every connection in the same
        order. ``where`` runs in the caller's thread before the broadcast
        lock is taken: it may be slow, or broadcast itself, without holding
        up other broadcasts or new connections. Returns how many connections
        it was queued for.
        """
        targets = self.connections()
        if where is not None:
            targets = [conn for conn in targets if where(conn)]
        with self._broadcasting:
            # Shutting down: the sessions are closing, leave them the CPU (the message is still checked).
            queued = broadcast(targets if self._accepting else (), message)
        if self.metrics is not None:
            self.metrics.delivered("broadcast", queued)
        return queued

    def mount(self, other: WSGIApp) -> Mounted:
        """A WSGI app that serves our endpoint and hands every other request to ``other`` (a Flask app)."""
        return Mounted(self, other)

    def _admit(self, address: str) -> Refusal | None:
        """Count a request from ``address`` in, or the 503 or 429 it gets instead."""
        with self._changed:
            if not self._accepting:
                return SHUTTING_DOWN
            if self._admitted >= self._session_limit:
                return self._full(self._session_limit, held=self._session_limit < self.config.max_connections)
            threads = self.config.max_session_threads
            if threads is not None and self._holding >= threads:  # a Handler's run() that lasts, say
                return self._full(threads, held=True)
            if self._limits.active:
                refusal = self._limits.admit(address)
                if refusal is not None:
                    return refusal
            self._admitted += 1
            return None

    @staticmethod
    def _full(limit: int, held: bool) -> Refusal:
        """The 503 of a client beyond ``limit``; ``held``: a limit on sessions that hold a thread."""
        reason = f"too many connections (limit {limit}{': each holds a thread' if held else ''})"
        return Refusal("503 Service Unavailable", reason, cause="server-full")

    @property
    def session_limit(self) -> int:
        """Sessions that may be open at once now: the config's, or fewer (:meth:`serve_with_threads`)."""
        return self._session_limit

    def serve_with_threads(self, threads: int) -> None:
        """Its server runs at most ``threads`` requests at once (gunicorn's ``--threads``).

        When every session holds a thread, no more than that can be open: the
        limit in force (and the metrics' gauge) says so.
        """
        if self.config.holds_threads:
            self._session_limit = min(self.config.session_limit, threads)

    def _serve(
        self, environ: dict[str, Any], start_response: Callable[..., Any], started: float, address: str
    ) -> Iterable[bytes] | Hijacked:
        request = Request.from_environ(environ, self._proxies)
        user = None
        if self.config.authenticate is not None:
            try:
                user = self._authenticate(request)
            except Reject as rejected:
                refusal = refusal_of(rejected)
                fields = {"remote": printable(request.remote_addr), "path": printable(request.path)}
                log.info(
                    "refused %s: %s %s", printable(request.path), refusal.status, refusal.text, extra=fields
                )
                return self._refusal_response(start_response, refusal)
            if not self._accepting:  # shutdown began while the hook ran: a 503, not a 101 cut short
                return self._refusal_response(start_response, SHUTTING_DOWN)
        name = f"conn-{next(self._numbers)}"
        thread = threading.current_thread()
        server_thread_name, thread.name = thread.name, name
        environ.get(DISARM_KEY, lambda: None)()
        try:
            held = _HeldResponse()
            try:
                ws = simple_websocket.Server.accept(
                    with_socket(without_compression(environ), held),
                    subprotocols=list(self.config.subprotocols) or None,
                    thread_class=_NoThread,
                )
            except Exception as error:  # wsproto refused what we let through
                refusal = Refusal("400 Bad Request", f"bad handshake: {error}", cause="bad-handshake")
                return self._refusal_response(start_response, refusal)
            # The handshake's objects (a few KiB: wsproto's, h11's, copies of the
            # environ) are done with: only these two facts outlive it.
            mode, subprotocol = ws.mode, ws.subprotocol
            del ws
            response, compression = self._with_compression(held.data, environ)
            sock = hijacked_socket(environ)
            sock.settimeout(None)  # the request deadline no longer applies
            config = self.config
            conn = Connection(
                sock,
                client=False,
                pending=unread_request_bytes(environ, sock),
                max_message_size=config.max_message_size,
                ping_interval=config.ping_interval,
                write_timeout=config.write_timeout,
                close_timeout=config.close_timeout,
                name=f"{name}-reader",
                max_queue=config.max_queue,
                outbound_limit=config.outbound_limit,
                on_overflow=config.on_overflow,
                request=request,
                user=user,
                subprotocol=subprotocol,
                key=environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip(),
                inbound_limit=inbound_limit(config),
                compression=compression,
            )
            peer = describe_peer(request, environ)
            hold_thread = environ.get(HOLD_KEY, lambda: None)
            openings = self._open_extensions(conn)
            parked = self._run(conn, response, peer, hold_thread, openings, started, address)
        finally:
            thread.name = server_thread_name
        return Hijacked(mode, parked)

    def _with_compression(self, response: bytes, environ: dict[str, Any]) -> tuple[bytes, Agreement | None]:
        """The 101 with our answer to the client's permessage-deflate offer, and what it agrees, if any."""
        setting = self.config.compression
        offers = environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "")
        if not isinstance(setting, Deflate) or not offers:
            return response, None
        answered = compression_answer(offers, setting)
        if answered is None:
            return response, None
        extension, agreement = answered
        return with_header(response, "Sec-WebSocket-Extensions", extension), agreement

    def _authenticate(self, request: Request) -> Any:
        """Who the client is, says the hook; Reject if it refuses (or fails: 500, logged)."""
        assert self.config.authenticate is not None
        try:
            user = self.config.authenticate(request)
        except Reject:
            raise
        except BaseException as error:  # SystemExit too: it would end the request with no answer
            fields = {"remote": printable(request.remote_addr), "path": printable(request.path)}
            log.error("the authenticate hook failed: %r", error, extra=fields)
            raise Reject(500, "internal error while authenticating") from None
        if user is None:
            raise Reject(401, "authentication required")
        return user

    def _open_extensions(self, conn: Connection) -> list[Opening]:
        """What each extension asks of the session, in order, up to the first that closes it.

        An extension that fails (raises) closes the session with 1011, logged.
        """
        openings = []
        conn.sends_refused = "no send before the 101: send in the Opening's first step, or in the handler"
        for extension in self.config.extensions:
            try:
                opening = extension.open(conn)
                if not isinstance(opening, Opening):
                    raise TypeError(f"open() must return an Opening, not {opening!r}")
            except BaseException as error:  # SystemExit too: it would end the request with no answer
                log.error("the extension %r failed: %r", extension, error, extra=conn.log_fields)
                failed = (CloseCode.INTERNAL_ERROR, "internal error while opening the session")
                opening = Opening(closing=failed)
            openings.append(opening)
            if opening.closing is not None:
                break
        conn.sends_refused = None
        return openings

    def _run(
        self,
        conn: Connection,
        response: bytes,
        peer: str,
        hold_thread: Callable[[], None],
        openings: list[Opening],
        started: float,
        address: str,
    ) -> bool:
        """The session, from its opening to its end; True if it was parked and goes on.

        ``hold_thread`` tells the server that this thread now runs a session's
        code for as long as the session lasts (not for a parked session).
        """
        parked = False
        try:
            parked = self._open_and_run(conn, response, peer, hold_thread, openings, started, address)
        finally:
            if not parked:
                self._forget(conn, ends_of(openings))
        return parked

    def _forget(
        self, conn: Connection, ends: list[Callable[[], None]], parked: bool = False, address: str = ""
    ) -> None:
        """The session is over: off the list, its extensions' ends run (and, if parked, its admission)."""
        try:
            with self._changed:
                self._connections.discard(conn)
            if self.metrics is not None:
                self.metrics.ended(conn)
            for end in ends:
                try:
                    end()
                except BaseException as error:  # SystemExit too: the other ends, and the admission, still end
                    log.error("an extension's end failed: %r", error, extra=conn.log_fields)
        finally:
            if parked:
                self._leave(address)

    def _open_and_run(
        self,
        conn: Connection,
        response: bytes,
        peer: str,
        hold_thread: Callable[[], None],
        openings: list[Opening],
        started: float,
        address: str,
    ) -> bool:
        """Open the session and run it; True if it was parked and goes on without this thread.

        ``started``: ``time.monotonic()`` when its request reached the app.
        """
        for opening in openings:
            for name, value in opening.headers:
                response = with_header(response, name, value)
        # The 101 goes out only once the connection is listed, both under the
        # broadcast lock: every broadcast after the client saw the 101 reaches it.
        with self._broadcasting, self._changed:
            # Not once shutdown began (a slow authenticate hook may outlast it), nor
            # when the client is gone (the request deadline may have cut the socket).
            accepting = self._accepting
            opened = accepting and send_response(conn.sock, response, conn.write_timeout)
            if opened:
                self._connections.add(conn)
                self._holding += 1
        if not accepting:  # an answer, not an EOF: as for a request that came once shutdown had begun
            send_response(conn.sock, http_response(SHUTTING_DOWN), conn.write_timeout)
            if self.metrics is not None:
                self.metrics.refused(SHUTTING_DOWN.status, SHUTTING_DOWN.cause)
        if not opened:
            log.info(
                "no session for %s: %s",
                peer,
                "the server is shutting down" if not self._accepting else "the client went away",
                extra=conn.log_fields,
            )
            conn.abort()
            conn.start()  # the reader owns the socket: it sees the abort and releases it
            conn.wait_closed()
            return False
        if self.metrics is not None:
            self.metrics.opened(conn, started)
        handler = self.config.session_handler()
        ending = next((opening.closing for opening in openings if opening.closing is not None), None)
        first = first_steps([opening.first for opening in openings if opening.first is not None])
        parked = False
        try:
            compressed = " (permessage-deflate)" if conn.compression else ""
            log.info("connected: %s%s", peer, compressed, extra=conn.log_fields)
            if ending is not None:
                hold_thread()  # the close takes up to close_timeout
                log.info("closing: %s", ending[1], extra=conn.log_fields)
                conn.start()
                conn.close(*ending)
            elif self.config.netpoller and hasattr(handler, "on_message"):
                # From here on the session's end is the connection's to report (even a failed
                # start's): it takes the request's admission over.
                conn.at_end(
                    functools.partial(self._forget, ends=ends_of(openings), parked=True, address=address)
                )
                parked = True
                _session_sockets.add(conn.sock)  # the request ends before the session: its server must let go
                park_session(conn, handler, netpoller, first=first)  # type: ignore[arg-type]
            else:
                hold_thread()
                run_session(conn, handler, first=first)
        except Exception as error:  # never let a failure reach the WSGI server after the 101
            log.error("session failed: %r", error, extra=conn.log_fields)
            conn.abort()
        finally:
            # The reader owns the socket; the server may only take it back once it has let go.
            if not parked:
                conn.wait_closed()
            with self._changed:
                self._holding -= 1
        return parked


@dataclasses.dataclass(frozen=True)
class Hijacked:
    """A request whose socket a session took over: how its server ends it, and if the session goes on."""

    mode: str
    parked: bool


def inbound_limit(config: ServerConfig) -> InboundLimit | None:
    """A new connection's limits on what it may send, if the config sets any."""
    if config.max_message_rate is None and config.max_byte_rate is None:
        return None
    return InboundLimit(config.max_message_rate, config.max_byte_rate)


def http_response(refusal: Refusal) -> bytes:
    """A refusal as the bytes of a whole HTTP response, for a socket no WSGI server writes to any more."""
    body, headers = refusal_parts(refusal)
    fields = [*(f"{name}: {value}" for name, value in headers), "Connection: close"]
    head = [f"HTTP/1.1 {refusal.status}", *fields]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


def first_steps(steps: list[Callable[[], None]]) -> Callable[[], None] | None:
    """One first step that runs ``steps`` in order (None: there are none)."""
    if not steps:
        return None

    def run_in_order() -> None:
        for step in steps:
            step()

    return run_in_order


def ends_of(openings: list[Opening]) -> list[Callable[[], None]]:
    """What runs at the session's end: the extensions' ends, the last opened first."""
    return [opening.end for opening in reversed(openings) if opening.end is not None]


def with_header(response: bytes, name: str, value: str) -> bytes:
    """An HTTP response head with one more header."""
    head, end, rest = response.partition(b"\r\n\r\n")
    return head + f"\r\n{name}: {value}".encode() + end + rest


def refusal_of(rejected: Reject) -> Refusal:
    """The answer a hook's Reject asks for, or a 500 if it cannot be sent as it now stands."""
    try:
        status, text, headers = rejected.response()
        return Refusal(status, text, headers, cause="authenticate")
    except ValueError as error:
        log.error("the authenticate hook's refusal cannot be sent: %s", error)
        return Refusal(
            "500 Internal Server Error", "internal error while authenticating", cause="authenticate"
        )


def is_plain_path(path: str) -> bool:
    """A path that reaches the app as written: ``/``, ASCII letters, digits, ``-._~``; no ``//``.

    Servers hand the app a percent-decoded path (``/a%20b`` arrives as
    ``/a b``), so anything that needs encoding could never match.
    """
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/")
    dots = any(segment in (".", "..") for segment in path.split("/"))  # a browser would remove them
    return path.startswith("/") and set(path) <= allowed and "//" not in path and not dots


#: The sockets of sessions that outlive their request (parked in the netpoller): the
#: server must neither shut them down nor close them when the request ends.
_session_sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def session_owns(sock: socket.socket) -> bool:
    """True if a session has taken ``sock`` over and outlives the request: the server must leave it alone."""
    return sock in _session_sockets


#: Every WebSocketApp of this process, for hooks that must shut them all down (gunicorn's).
_apps: weakref.WeakSet[WebSocketApp] = weakref.WeakSet()


def all_apps() -> list[WebSocketApp]:
    """The WebSocket apps alive in this process."""
    return list(_apps)


class Mounted:
    """Our endpoint inside another WSGI app: requests for it go to us, the rest to the other app.

    The endpoint keeps its own checks (origin, limits, authentication) and
    shutdown; the other app (Flask, Django's WSGI handler) serves its pages
    as before, on the same server and port.
    """

    def __init__(self, websocket_app: WebSocketApp, other: WSGIApp) -> None:
        self.websocket_app = websocket_app
        self.other = other

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Route one request (the WSGI entry point)."""
        config = self.websocket_app.config
        if environ.get("PATH_INFO") in (config.path, config.metrics_path):
            return self.websocket_app(environ, start_response)
        return self.other(environ, start_response)


def without_compression(environ: dict[str, Any]) -> dict[str, Any]:
    """The request as simple-websocket should see it: offering no extensions.

    simple-websocket accepts permessage-deflate whenever a client offers it,
    through wsproto, which would then expect to compress and inflate; our
    frame layer does that (:mod:`wsthreads.deflate`), and the app answers the
    offer itself (:meth:`WebSocketApp._with_compression`).
    """
    return {k: v for k, v in environ.items() if k != "HTTP_SEC_WEBSOCKET_EXTENSIONS"}


def unread_request_bytes(environ: dict[str, Any], sock: socket.socket) -> bytes:
    """Bytes the client sent right behind its request, if the server read them.

    Both servers read ahead of the request, so their buffers may already hold
    the start of the client's first frame. We take those bytes back without
    blocking; the reader parses them before reading on.
    """
    rfile = environ.get("wsgi.input")
    # gunicorn: the body's reader reads through the connection's unreader, which
    # keeps its read-ahead and hands it over without touching the socket.
    unreader = getattr(getattr(rfile, "reader", None), "unreader", None)
    take_buffered = getattr(unreader, "take_buffered", None)
    if take_buffered is not None:
        return bytes(take_buffered())
    # Werkzeug: a buffered file; peek at what it holds, with the socket unable to block.
    peek = getattr(rfile, "peek", None)
    if peek is None:
        return b""
    sock.setblocking(False)
    try:
        buffered = peek(READ_SIZE)
        data: bytes = rfile.read(len(buffered)) if buffered else b""  # type: ignore[union-attr]
    except OSError:
        data = b""
    if DISARM_KEY in environ:
        # Our own server (wsthreads.serving) reads nothing more from an upgraded
        # connection, so its buffered file is done with: closed now, its 8 KiB
        # buffer does not sit beside every session.
        rfile.close()  # type: ignore[union-attr]
    return data


class SessionOver(ConnectionAbortedError):
    """What ends a request whose socket a session took over, under Werkzeug (see below)."""


def end_hijacked_request(mode: str) -> NoReturn:
    """End a request whose socket was taken over, without writing a response.

    Returning a response would put HTTP bytes on the wire after the close
    frame. Werkzeug treats ConnectionError as a dropped connection and writes
    nothing; gunicorn does the same for StopIteration (as flask-sock does).
    """
    if mode == "gunicorn":
        raise StopIteration
    raise SessionOver("WebSocket session over")


@functools.lru_cache(maxsize=1)
def page() -> bytes:
    """The browser page (``page.html`` in this package), read once."""
    return resources.files(__package__).joinpath("page.html").read_bytes()


def page_response(start_response: Callable[..., Any], head: bool = False) -> Iterable[bytes]:
    """``GET /``: a page that opens a WebSocket to the endpoint on the same host (HEAD: its headers)."""
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
    return [] if head else [body]


def metrics_response(
    metrics: Metrics, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """``GET /metrics``: the metrics, in the format the scraper's Accept header asks for."""
    try:
        body, content_type = metrics.exposition(environ.get("HTTP_ACCEPT", ""))
    except ValueError as error:  # the workers' shared directory is gone
        log.error("cannot serve the metrics: %s", error)
        return plain_response(start_response, Refusal("500 Internal Server Error", f"no metrics: {error}"))
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def plain_response(start_response: Callable[..., Any], refusal: Refusal) -> Iterable[bytes]:
    """A one-line text/plain answer for a request that gets no session."""
    body, headers = refusal_parts(refusal)
    start_response(refusal.status, headers)
    return [body]


def refusal_parts(refusal: Refusal) -> tuple[bytes, list[tuple[str, str]]]:
    """A refusal's body, its line of text, and its headers: ours, then the refusal's own."""
    body = f"{refusal.text}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    return body, [*headers, *refusal.headers]


def create_app(config: ServerConfig | None = None, **settings: Any) -> WebSocketApp:
    """Build the WSGI application.

    ``create_app(echo=True)`` changes single settings of the default
    :class:`ServerConfig`; ``create_app(config)`` takes a whole one.
    """
    if config is not None and not isinstance(config, ServerConfig):
        raise TypeError(
            f"create_app takes a ServerConfig or settings by name, not {config!r}:"
            " for a handler, create_app(handler=...)"
        )
    return WebSocketApp(dataclasses.replace(config or ServerConfig(), **settings))
