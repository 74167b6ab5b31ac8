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
simple-websocket adds a third thread, ``conn-N-ws``, that reads the socket
and answers pings and close frames.

Run ``python sync_server.py --help`` for the options. Importing this module
has no side effects: :func:`create_app` gives a plain WSGI application and
:func:`start_server` serves it.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import socket
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Callable, NoReturn

import simple_websocket
from werkzeug.serving import BaseWSGIServer, make_server
from wsproto.connection import ConnectionState

from common import (
    ABNORMAL_CLOSURE,
    CLOSE_TIMEOUT,
    DEFAULT_COUNT,
    DEFAULT_HOST,
    DEFAULT_INTERVAL,
    DEFAULT_PORT,
    GOING_AWAY,
    WS_PATH,
    Message,
    OneLineParser,
    Session,
    SessionClosed,
    add_sender_options,
    fail,
    run_session,
    run_until_signal,
    setup_logging,
)

log = logging.getLogger("wsdemo.server")

#: simple-websocket can miss the wake-up when it closes a session itself, so
#: the reader waits for messages in slices of this many seconds.
RECEIVE_SLICE = 1.0
#: Pending connections the kernel queues for us (Werkzeug's default, 128,
#: overflows when many clients connect at once).
LISTEN_BACKLOG = 1024


class SimpleWebSocketTransport:
    """The :class:`common.Transport` adapter for a simple-websocket server.

    simple-websocket's own thread reads the socket, answers pings and close
    frames, and queues whole messages; :meth:`receive` takes them from there.
    """

    def __init__(self, ws: simple_websocket.Server) -> None:
        self.ws = ws

    def receive(self) -> Message:
        """Next whole message; raises SessionClosed when the session is over."""
        while True:
            try:
                message: Message | None = self.ws.receive(timeout=RECEIVE_SLICE)
            except simple_websocket.ConnectionClosed:
                raise self._how_it_ended() from None
            if message is not None:
                return message

    def send(self, message: Message) -> None:
        """Send text (str) or binary (bytes); raises SessionClosed if gone."""
        try:
            self.ws.send(message)
        except simple_websocket.ConnectionClosed:
            raise self._how_it_ended() from None
        except OSError as error:
            raise SessionClosed(ABNORMAL_CLOSURE, str(error)) from None

    def close(self, code: int, reason: str) -> None:
        """Send a close frame, unless the session is already closed."""
        try:
            self.ws.close(code, reason)
        except (simple_websocket.ConnectionClosed, OSError):
            pass  # already closed by the peer, or the socket is gone
        self.ws.event.set()  # wake up a reader waiting in receive()

    def abort(self) -> None:
        """Shut the socket down: the peer sees EOF, blocked calls return."""
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already shut down or closed

    def _how_it_ended(self) -> SessionClosed:
        if self.ws.ws.state is ConnectionState.OPEN:
            return SessionClosed(ABNORMAL_CLOSURE, "the client went away without a close frame")
        return SessionClosed(int(self.ws.close_reason), self.ws.close_message or "")


def is_websocket_upgrade(environ: dict[str, Any]) -> bool:
    """True if the request asks to switch to WebSocket (RFC 6455, 4.2.1)."""
    upgrade = environ.get("HTTP_UPGRADE", "").lower()
    connection = environ.get("HTTP_CONNECTION", "").lower()
    return "websocket" in upgrade and "upgrade" in (t.strip() for t in connection.split(","))


def plain_response(start_response: Callable[..., Any], status: str, text: str) -> Iterable[bytes]:
    """A one-line text/plain answer for requests that are not a session."""
    body = f"{text}\n".encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


class WebSocketApp:
    """The WSGI application: ``/ws`` runs a session, anything else is refused.

    Each session runs in the server's request thread. ``GET /ws`` without an
    upgrade gets 400, any other path 404, and new sessions get 503 once
    :meth:`shutdown` has begun. Works on Werkzeug's threaded server and on
    gunicorn's gthread worker (the servers simple-websocket can take the
    socket from).

    Args:
        count: messages the server sends to each client.
        interval: seconds between two of them.
        echo: instead of sending its own messages, send every message
            received straight back, text as text and binary as binary.
    """

    def __init__(
        self, count: int = DEFAULT_COUNT, interval: float = DEFAULT_INTERVAL, echo: bool = False
    ) -> None:
        self.count = count
        self.interval = interval
        self.echo = echo
        self._numbers = itertools.count(1)
        # Guards _sessions and _accepting; notified whenever a session ends.
        self._sessions_changed = threading.Condition()
        self._sessions: set[Session] = set()
        self._accepting = True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Route one request (the WSGI entry point)."""
        path = environ.get("PATH_INFO", "")
        if path != WS_PATH:
            return self._refuse(
                environ, start_response, "404 Not Found", f"no such path; the WebSocket endpoint is {WS_PATH}"
            )
        if not is_websocket_upgrade(environ):
            return self._refuse(
                environ,
                start_response,
                "400 Bad Request",
                f"{WS_PATH} speaks WebSocket only: send 'Connection: Upgrade' and 'Upgrade: websocket'",
            )
        if not self._accepting:
            return self._refuse(
                environ, start_response, "503 Service Unavailable", "the server is shutting down"
            )
        return self._serve_session(environ, start_response)

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
            return self._sessions_changed.wait_for(lambda: not self._sessions, timeout)

    @property
    def session_count(self) -> int:
        """Sessions open right now."""
        with self._sessions_changed:
            return len(self._sessions)

    def _refuse(
        self, environ: dict[str, Any], start_response: Callable[..., Any], status: str, text: str
    ) -> Iterable[bytes]:
        log.info("refused %s %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), status)
        return plain_response(start_response, status, text)

    def _serve_session(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        name = f"conn-{next(self._numbers)}"
        thread = threading.current_thread()
        server_thread_name, thread.name = thread.name, name
        try:
            try:
                ws = simple_websocket.Server.accept(
                    environ,
                    # simple-websocket's own reader thread, named after the connection.
                    thread_class=functools.partial(threading.Thread, name=f"{name}-ws", daemon=True),
                )
            except Exception as error:  # wsproto refused the handshake headers
                return self._refuse(
                    environ, start_response, "400 Bad Request", f"bad WebSocket handshake: {error}"
                )
            self._run(ws, name, peer=f"{environ.get('REMOTE_ADDR')}:{environ.get('REMOTE_PORT')}")
        finally:
            thread.name = server_thread_name
        end_hijacked_request(ws.mode)

    def _run(self, ws: simple_websocket.Server, name: str, peer: str) -> None:
        # Go: defer conn.Close(). Whatever happens, the socket is released.
        ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(SimpleWebSocketTransport(ws))
        with self._sessions_changed:
            self._sessions.add(session)
        try:
            log.info("connected: %s", peer)
            run_session(
                session,
                reader_name=f"{name}-reader",
                label="server",
                count=self.count,
                interval=self.interval,
                echo_mode=self.echo,
            )
        finally:
            release_socket(ws)
            with self._sessions_changed:
                self._sessions.discard(session)
                self._sessions_changed.notify_all()


def release_socket(ws: simple_websocket.Server) -> None:
    """Finish the connection once the session is over: close reply, then EOF.

    simple-websocket's thread sends the reply to the peer's close frame only
    after it has marked the session closed, so we give it CLOSE_TIMEOUT to
    finish before shutting the socket down (or the peer would see 1006).
    The shutdown sends EOF at once (the server still holds the socket) and
    wakes that thread if the peer never answered our close.
    """
    ws.thread.join(CLOSE_TIMEOUT)
    try:
        ws.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the peer has reset the connection already
    ws.thread.join(CLOSE_TIMEOUT)


def end_hijacked_request(mode: str) -> NoReturn:
    """End a request whose socket was taken over, without writing a response.

    Returning a response would put HTTP bytes on the wire after the close
    frame. Werkzeug treats ConnectionError as a dropped connection and writes
    nothing; gunicorn does the same for StopIteration (as flask-sock does).
    """
    if mode == "gunicorn":
        raise StopIteration
    raise ConnectionAbortedError("WebSocket session over")


def create_app(
    count: int = DEFAULT_COUNT, interval: float = DEFAULT_INTERVAL, echo: bool = False
) -> WebSocketApp:
    """Build the WSGI application (see :class:`WebSocketApp` for the arguments)."""
    return WebSocketApp(count=count, interval=interval, echo=echo)


def format_url(host: str, port: int) -> str:
    """``ws://host:port/ws``, with brackets around an IPv6 address."""
    if ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{port}{WS_PATH}"


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


class RunningServer:
    """A :class:`WebSocketApp` served by Werkzeug's threaded server.

    The ``acceptor`` thread accepts connections; Werkzeug gives each one a
    thread of its own. Use :func:`start_server` to create one.
    """

    def __init__(self, app: WebSocketApp, httpd: BaseWSGIServer, host: str) -> None:
        self.app = app
        self.httpd = httpd
        self.port: int = httpd.port
        self.url = format_url(host, self.port)
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


def start_server(app: WebSocketApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> RunningServer:
    """Listen on ``host:port`` (0 picks a free port) and serve ``app`` in threads.

    Returns once the socket is listening, so clients may connect at once.
    Raises OSError if the address cannot be used (port in use, bad host).
    """
    sock = listen(host, port)
    try:
        # Werkzeug duplicates the descriptor of a socket it is handed.
        httpd = make_server(host, port, app, threaded=True, fd=sock.fileno())
    finally:
        sock.close()
    server = RunningServer(app, httpd, host)
    server.thread.start()
    return server


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
    setup_logging()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # we log refusals ourselves
    app = create_app(count=args.count, interval=args.interval, echo=args.echo)
    try:
        server = start_server(app, args.host, args.port)
    except OSError as error:
        fail(parser.prog, f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    log.info("listening on %s", server.url)
    run_until_signal(server.stopped, on_signal=server.shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
