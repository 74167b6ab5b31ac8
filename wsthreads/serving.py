"""Serving the WSGI app on Werkzeug's threaded server: listening, request deadlines, TLS, shutdown.

The ``acceptor`` thread accepts connections and hands each to one of a few
request threads (:class:`RequestThreads`), which serves it as Werkzeug
would, named ``request-PORT`` until it becomes a session.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import quote

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from . import trace
from .app import DISARM_KEY, HOLD_KEY, SHUTDOWN_TIMEOUT, Mounted, SessionOver, WebSocketApp, session_owns
from .certificates import load_certificate
from .deadlines import Armed, deadlines
from .netpoller import Watch, netpoller
from .pool import RequestThreads
from .settings import warn_if_too_few_descriptors
from .signals import Signalled, run_until_signal

log = logging.getLogger("wsthreads.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Seconds a client has for its whole request, TLS handshake included.
HANDSHAKE_TIMEOUT = 10.0
#: Pending connections we ask the kernel to queue when it does not say its
#: own limit (Werkzeug's default, 128, overflows when many clients connect at once).
LISTEN_BACKLOG = 1024
#: Seconds between the acceptor's looks at a stall (and at a shutdown).
ACCEPTOR_LOOK = 0.05
#: Where Linux says the most a listen backlog may be (4096 on this kind of machine).
SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def listen_backlog() -> int:
    """The system's largest listen backlog, or :data:`LISTEN_BACKLOG` where it does not say.

    A burst of connects beyond the backlog loses SYNs, which the clients
    retry only after 1, 3, 7 s: the whole burst looks slow for no reason.
    """
    try:
        with open(SOMAXCONN_PATH) as limit:
            return max(int(limit.read()), LISTEN_BACKLOG)
    except (OSError, ValueError):
        return max(socket.SOMAXCONN, LISTEN_BACKLOG)


def has_bytes(sock: socket.socket) -> bool:
    """True if ``sock`` can be read without waiting: bytes have come, or the peer's end."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing yet (BlockingIOError), or an error the real read will meet
        return False
    return True


def format_url(scheme: str, host: str, port: int, path: str = "") -> str:
    """``ws://host:port/ws``, brackets around an IPv6 host."""
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen, raising OSError (rather than Werkzeug's SystemExit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(listen_backlog())
    except BaseException:
        sock.close()
        raise
    return sock


def tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server-side TLS context from a PEM certificate (chain) and key.

    Raises:
        ValueError: ``cannot use the certificate x.pem: No such file or directory``.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_certificate(context, certfile, keyfile)
    return context


#: The characters of a request target that stay as they are when it is escaped.
PRINTABLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler, with a deadline for the whole request and TLS in its own thread.

    Werkzeug has no request timeout, and a socket timeout only bounds each
    read: a client that drips a byte every 300 ms would hold a thread for
    ever. Here each request, TLS handshake included, must have arrived whole
    within ``handshake_timeout``, or its socket is shut down. With TLS,
    Werkzeug would do the TLS handshake in the acceptor thread, where one
    silent client stalls every other; here each connection does its own.
    """

    server: WebSocketServer

    def setup(self) -> None:
        """Name the thread, take over the deadline armed at the accept and, with TLS, do the TLS handshake."""
        threading.current_thread().name = f"request-{self.client_address[1]}"
        self.request.settimeout(self.server.handshake_timeout)  # the session clears it
        self.deadline: Armed | None = self.server.accepted.pop(self.request)
        self.tls_failed = False
        context = self.server.tls_context
        if context is not None:
            try:
                # Even wrapping reads from the socket, and raises if the client reset already.
                self.request = context.wrap_socket(
                    self.request, server_side=True, do_handshake_on_connect=False
                )
                deadlines.retarget(self.deadline, self.request)  # the plain socket gave its descriptor away
                self.request.do_handshake()
            except OSError as error:  # ssl.SSLError, a timeout, or a reset
                self.tls_failed = True
                log.warning("TLS handshake with %s failed: %s", self.client_address[0], error)
        super().setup()

    def handle(self) -> None:
        """Serve the connection's requests, unless its TLS handshake failed."""
        if not self.tls_failed:
            super().handle()

    def handle_one_request(self) -> None:
        """Read and serve one request; the deadline runs until the request is in."""
        if self.deadline is None:  # a further request on a kept-alive connection
            self.deadline = deadlines.arm(self.connection, self.server.handshake_timeout)
            self.server.reading.add(self.deadline)
        try:
            super().handle_one_request()
        finally:
            self._disarm()

    def parse_request(self) -> bool:
        """The request line and headers; a raw non-ASCII byte in the target becomes its ``%XX``.

        A browser percent-encodes ``/ws?room=köln``; websocket-client sends
        the UTF-8 bytes as they are. Werkzeug would encode those twice, and
        the app would read ``kÃ¶ln``; escaped, it reads what a browser's
        request gives. (gunicorn answers such a request line with 400; a client
        that percent-encodes, as ours does, is served by both.)
        """
        parsed = super().parse_request()
        if self.deadline is not None and not self.server.reading.done(self.deadline):
            # Cut while being read: the headers ended at the cut, not with the client's blank line.
            self.close_connection = True
            return False
        if parsed and not self.path.isascii():
            self.path = quote(self.path.encode("latin-1"), safe=PRINTABLE_ASCII)
        return parsed

    def make_environ(self) -> dict[str, Any]:
        """Werkzeug's environ, plus the hook that ends the deadline once a session begins."""
        environ: dict[str, Any] = super().make_environ()
        environ[DISARM_KEY] = self._disarm
        environ[HOLD_KEY] = self.server.request_threads.hold
        return environ

    def run_wsgi(self) -> None:
        """Run the app; the deadline still runs, until the app starts a session.

        So a request that is refused, or not a WebSocket at all, is bounded
        too, body included (Werkzeug reads what is left of a body after the
        response). After an upgrade request the connection is over, whatever
        the app answered: the bytes still in it belong to a WebSocket, and
        must not be read as a next HTTP request.
        """
        try:
            super().run_wsgi()
        finally:
            if "websocket" in self.headers.get("Upgrade", "").lower():
                self.close_connection = True

    def connection_dropped(self, error: BaseException, environ: object = None) -> None:
        """A client reset the connection: close the selector Werkzeug left open.

        When the client resets while Werkzeug drains the request body, the
        drain's selector (an epoll descriptor) is left behind in the frame
        that raised; it sits in a reference cycle, so only a garbage
        collection would close it. We close it now. Not after a session
        (:class:`~wsthreads.app.SessionOver`): no selector was made, and
        reading the frames' locals would tie each request's objects into a
        cycle only the garbage collector frees (at thousands of sessions, a
        long collection at the process's exit).
        """
        if isinstance(error, SessionOver):
            return
        tb = error.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if isinstance(value, selectors.BaseSelector):
                    value.close()
            tb = tb.tb_next
        # Reading f_locals kept a copy of each frame's locals on it, the error among them: error ->
        # traceback -> frame -> its locals -> error, a cycle only the garbage collector frees.
        error.__traceback__ = None

    def finish(self) -> None:
        """Close the connection's files and, with TLS, the TLS socket itself (unless a session owns it)."""
        self._disarm()
        environ = getattr(self, "environ", {})  # Werkzeug keeps it; our hooks in it hold this handler:
        environ.pop(DISARM_KEY, None)  # a cycle, freed only by the garbage collector
        super().finish()
        if self.server.tls_context is not None and not session_owns(self.request):
            self.request.close()  # socketserver closes only the plain socket it accepted

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.server.reading.done(self.deadline)
            deadlines.disarm(self.deadline)
            self.deadline = None


class Reading:
    """The deadlines of the requests still being read, which the server's shutdown cuts short."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: set[Armed] = set()
        self._closed = False

    def add(self, armed: Armed) -> None:
        """A request begins to be read (cut at once if the server is closing already)."""
        with self._lock:
            if self._closed:
                deadlines.cut_now(armed)
            else:
                self._armed.add(armed)

    def done(self, armed: Armed) -> bool:
        """Its request is in (or over); False if its socket was cut first, the request partial."""
        with self._lock:
            self._armed.discard(armed)
            return not armed.cut

    def close(self) -> None:
        """The server is closing: cut what is still being read, and anything that begins later."""
        with self._lock:  # a request either finished reading before, or is cut
            self._closed = True
            for armed in self._armed:
                deadlines.cut_now(armed)
            self._armed.clear()


class WebSocketServer(ThreadedWSGIServer):
    """Werkzeug's threaded server with our request handler and its settings."""

    def __init__(
        self,
        sock: socket.socket,
        app: WebSocketApp | Mounted,
        *,
        tls_context: ssl.SSLContext | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.request_threads = RequestThreads(self.process_request_thread)
        self.reading = Reading()
        #: The deadlines armed at each accept, until a request thread takes the connection over.
        self.accepted: dict[Any, Armed] = {}
        host, port = sock.getsockname()[:2]
        # Werkzeug duplicates the descriptor of a socket it is handed.
        super().__init__(host, port, app, handler=RequestHandler, fd=sock.fileno())
        self.tls_context = tls_context
        self.handshake_timeout = handshake_timeout
        # Tells Werkzeug to report https:// to the application.
        self.ssl_context = tls_context

    def process_request(self, request: Any, client_address: Any) -> None:
        """Arm the request's deadline, and hand the connection to a request thread once it has spoken.

        Most clients send their request with the connect. One that has not
        yet waits parked in the netpoller, not in a request thread: in a
        burst of thousands, a few clients sent theirs 0.3 to 0.6 s late, and a
        request thread taking each would have waited for it while the others
        queued (16 such, and the stall rule started a thread for each of
        thousands waiting). The deadline runs from the accept, wherever the
        connection waits; when it cuts the socket, a thread finds its end.
        """
        armed = deadlines.arm(request, self.handshake_timeout)
        self.accepted[request] = armed
        self.reading.add(armed)  # until the request is in
        if has_bytes(request):
            self._to_request_thread(request, client_address)
            return
        watch: Watch

        def first_bytes() -> None:  # a netpoller turn: the client spoke (or its socket was cut)
            nonlocal watch
            watch.close()
            del watch  # it holds this function: no cycle is left for the garbage collector
            self._to_request_thread(request, client_address)

        try:
            watch = netpoller.watch(request.fileno(), first_bytes, f"request-{client_address[1]}")
        except OSError:  # no descriptor left for the netpoller's epoll: a request thread waits instead
            self._to_request_thread(request, client_address)
            return
        watch.park(None)

    def _to_request_thread(self, request: Any, client_address: Any) -> None:
        if not self.request_threads.submit(request, client_address):
            self.shutdown_request(request)  # the server has closed meanwhile

    def service_actions(self) -> None:
        """After each look of the acceptor (at most ``poll_interval`` apart): a stalled request."""
        self.request_threads.start_if_stalled()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept until :meth:`shutdown`; then idle request threads end, waiting connections close,
        and requests still being read end at once, not at their deadline (those that are in finish).

        Not in ``server_close``: Werkzeug calls that in its ``__init__`` too, for
        the socket socketserver opened before it takes ours.
        """
        try:
            super().serve_forever(poll_interval)
        finally:
            for request in self.request_threads.close():
                self.shutdown_request(request)
            self.reading.close()

    def shutdown_request(self, request: Any) -> None:
        """socketserver's end of a request: shut the socket down and close it, unless a session owns it.

        A session parked in the netpoller outlives its request (see
        :func:`wsthreads.app.session_owns`); its connection closes the socket.
        """
        armed = self.accepted.pop(request, None)  # never taken by a request thread (the server closed)
        if armed is not None:
            self.reading.done(armed)
            deadlines.disarm(armed)
        if not session_owns(request):
            super().shutdown_request(request)


class RunningServer:
    """A :class:`WebSocketApp` served by Werkzeug's threaded server; see :func:`start_server`."""

    def __init__(self, app: WebSocketApp, httpd: WebSocketServer, host: str) -> None:
        self.app = app
        self.httpd = httpd
        self.port: int = httpd.port
        secure = httpd.tls_context is not None
        #: The WebSocket endpoint, ``ws://HOST:PORT/ws``.
        self.url = format_url("wss" if secure else "ws", host, self.port, app.config.path)
        #: The browser page, ``http://HOST:PORT/``.
        self.page_url = format_url("https" if secure else "http", host, self.port, "/")
        metrics = app.config.metrics_path
        #: Where Prometheus scrapes the metrics, ``http://HOST:PORT/metrics``; None without them.
        self.metrics_url = (
            format_url("https" if secure else "http", host, self.port, metrics) if metrics else None
        )
        #: Set when the acceptor has stopped (after :meth:`shutdown`).
        self.stopped = threading.Event()
        # A daemon: the server serves while the main thread waits on it (serve_until_signal, a
        # with block); a script that fails, or ends, before shutdown() exits instead of hanging.
        self.thread = threading.Thread(target=self._accept, name="acceptor", daemon=True)
        self._shutdown_lock = threading.Lock()

    def _accept(self) -> None:
        try:
            with trace.span("accepting connections"):
                self.httpd.serve_forever(poll_interval=ACCEPTOR_LOOK)
        finally:
            self.stopped.set()

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
        """Close every session with 1001 at once, stop accepting; all within ``timeout`` s.

        Connections still sending their request (or TLS handshake) are cut, so
        their threads end now rather than at the handshake deadline.

        The sessions are told first, and the acceptor is stopped while they
        close, under the same deadline. Returns True if everything ended in
        time. Idempotent; call it from any thread but the acceptor.
        """
        deadline = time.monotonic() + timeout
        stopper = threading.Thread(target=self._stop_accepting, name="acceptor-stop", daemon=True)
        stopper.start()
        ended = self.app.shutdown(timeout=timeout)
        stopper.join(max(deadline - time.monotonic(), 0))
        return ended and not stopper.is_alive()

    def _stop_accepting(self) -> None:
        with self._shutdown_lock:
            if self.thread.is_alive():
                self.httpd.shutdown()
                self.thread.join()
            self.httpd.server_close()

    def serve_until_signal(self, signalled: Signalled | None = None) -> None:
        """Block the main thread until Ctrl+C or SIGTERM, then :meth:`shutdown` (1001 for every session).

        ``signalled``: the flag of an earlier :func:`wsthreads.signals.catch_signals`.
        """
        run_until_signal(self.stopped, on_signal=self.shutdown, signalled=signalled)

    def __enter__(self) -> RunningServer:
        """``with start_server(app) as server:`` serves until the block ends."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Shut down (1001 for every session), bounded."""
        self.shutdown()


def start_server(
    app: WebSocketApp | Mounted,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    tls_context: ssl.SSLContext | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> RunningServer:
    """Listen on ``host:port`` (0 picks a free port) and serve ``app`` in threads.

    ``app`` is a :class:`WebSocketApp`, or one mounted in another WSGI app
    (:meth:`WebSocketApp.mount`); shutdown closes the WebSocket sessions either way.

    With ``tls_context`` the server speaks ``wss://``. A client gets
    ``handshake_timeout`` seconds for its whole request (and TLS handshake).
    Returns once the socket is listening, so clients may connect at once.
    It serves for as long as the program's main thread runs: wait in
    :meth:`RunningServer.serve_until_signal` or serve in a ``with`` block; a
    program that ends without :meth:`RunningServer.shutdown` cuts its sessions.
    Raises OSError if the address cannot be used (port in use, bad host). An
    app that was shut down accepts sessions again (:meth:`WebSocketApp.reopen`).
    """
    if not isinstance(app, (WebSocketApp, Mounted)):
        raise TypeError(
            f"start_server serves a WebSocketApp, or one mounted outermost (ws.mount(wsgi_app)), not {app!r}:"
            " put other WSGI middleware inside the mount"
        )
    websocket_app = app.websocket_app if isinstance(app, Mounted) else app
    warn_if_too_few_descriptors(websocket_app.config.max_connections)
    websocket_app.reopen()  # first: an extension that cannot start leaves no listening socket behind
    sock = listen(host, port)
    try:
        httpd = WebSocketServer(sock, app, tls_context=tls_context, handshake_timeout=handshake_timeout)
    finally:
        sock.close()
    server = RunningServer(websocket_app, httpd, host)
    server.thread.start()
    return server
