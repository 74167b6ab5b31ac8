"""The article's server, with threads: upgrade /ws, read in one thread, send in another.

Go::

    http.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
        conn, _ := upgrader.Upgrade(w, r, nil)     // the upgrade
        go reader(conn)                            // start the reader
        for i := 0; i < 5; i++ {                   // send with pauses
            conn.WriteMessage(websocket.TextMessage, ...)
            time.Sleep(time.Second)
        }
    })
    http.ListenAndServe("localhost:8080", nil)

Python, step by step (the ``wsthreads`` package does each one):

1. Werkzeug's threaded server runs each request in a thread of its own, the
   ``conn-N`` thread: Go's per-request goroutine.
2. The upgrade: simple-websocket answers the handshake on ``/ws``, and a
   ``Connection`` takes over the socket.
3. ``go reader(conn)``: the ``conn-N-reader`` thread reads and prints every
   message; it alone reads the socket, and it closes it at the end
   (``defer conn.Close()``).
4. The loop: :class:`common.Sender` sends in the ``conn-N`` thread, pausing
   with ``conn.stop.wait(interval)``, the ``time.Sleep`` that Ctrl+C cuts short.
   A client that subscribed to a topic (``/ws?topic=NAME``, which the app's
   ``PubSub`` extension serves) is left out of it.

With ``--netpoller`` a session holds no thread while it waits for its client:
the connection waits in one poller for the whole process (Go's netpoller), and
a worker thread, named ``conn-N-reader`` while it works, reads it only when
bytes come; the ``conn-N`` thread ends once it has sent. The log reads the same.

Run ``python sync_server.py --help`` for the options. Importing this module
has no side effects: :func:`create_app` gives the WSGI application (for
gunicorn: ``gunicorn -c gunicorn.conf.py 'sync_server:create_app()'``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import wsthreads
from common import (
    DEFAULT_COUNT,
    DEFAULT_INTERVAL,
    OneLineParser,
    Sender,
    add_common_options,
    count_arg,
    fail,
    limit_arg,
    positive_seconds_arg,
    rate_arg,
    seconds_arg,
    setup_logging,
    subprotocol_arg,
    tracing,
)
from wsthreads.app import (
    MAX_CONNECTIONS,
    MAX_SESSION_THREADS,
    METRICS_PATH,
    PING_INTERVAL,
    WS_PATH,
    is_plain_path,
)
from wsthreads.connection import MAX_MESSAGE_SIZE, WRITE_TIMEOUT
from wsthreads.pubsub.broker import shared_broker
from wsthreads.serving import DEFAULT_HOST, DEFAULT_PORT, HANDSHAKE_TIMEOUT
from wsthreads.settings import SWITCH_INTERVAL, raise_descriptor_limit
from wsthreads.signals import Signalled, catch_signals

log = logging.getLogger("wsthreads.server")


class DemoSender(Sender):
    """The article's sender, for plain sessions: a client that came for a topic
    (``/ws?topic=NAME``) gets its topic's messages and nothing else."""

    def run(self, conn: wsthreads.Connection) -> None:
        """Send the demo's messages, unless the client subscribed to a topic."""
        if conn.request is None or not conn.request.query.getlist("topic"):
            super().run(conn)


def create_app(
    count: int = DEFAULT_COUNT,
    interval: float = DEFAULT_INTERVAL,
    echo: bool = False,
    netpoller: bool = False,
    broker: str | wsthreads.Broker | None = None,
    **settings: Any,
) -> wsthreads.WebSocketApp:
    """The article's WSGI app: every session on ``/ws`` sends ``count`` messages and prints what arrives.

    A topic's subscriber (``/ws?topic=NAME``) gets only its topic's messages,
    from ``broker`` (``redis://HOST:PORT/DB``; None: this process's own).

    With ``echo`` it sends every message back instead. Each session has its
    reader thread, as the article's goroutine; with ``netpoller`` it waits in
    the netpoller instead (the library's default). ``settings`` are the other
    fields of :class:`wsthreads.ServerConfig`.
    """
    handler = wsthreads.Echo() if echo else DemoSender(count, interval, "server")
    pubsub = wsthreads.PubSub(broker)
    return wsthreads.create_app(handler=handler, netpoller=netpoller, extensions=[pubsub], **settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until Ctrl+C or SIGTERM; returns the exit status."""
    signalled = catch_signals()  # first: a Ctrl+C during start-up is not lost
    sys.setswitchinterval(SWITCH_INTERVAL)  # this program owns its process (the library never sets it)
    raise_descriptor_limit()  # a descriptor per session, for thousands of them (as Go's runtime does)
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(quiet=args.quiet, log_format=args.log_format)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # we log refusals ourselves
    with tracing(parser.prog, args.trace):
        serve(parser, args, signalled)
    return 0


def serve(parser: OneLineParser, args: argparse.Namespace, signalled: Signalled) -> None:
    """Build the app, listen, and serve until a signal."""
    try:
        app = build_app(args)
    except (ValueError, ImportError, wsthreads.BrokerError) as error:  # a bad --broker, redis-py missing
        # (a BrokerError), or prometheus_client missing for --metrics (an ImportError)
        fail(parser.prog, str(error), status=2)
    if args.broker:
        try:
            shared_broker(args.broker).bounds()  # the one the app's PubSub reads
        except wsthreads.BrokerError as error:
            fail(parser.prog, str(error))
    context = None
    if args.certfile:
        try:
            context = wsthreads.tls_context(args.certfile, args.keyfile)
        except ValueError as error:
            fail(parser.prog, str(error))
    elif args.keyfile:
        fail(parser.prog, "--keyfile needs --certfile", status=2)
    try:
        server = wsthreads.start_server(
            app, args.host, args.port, tls_context=context, handshake_timeout=args.handshake_timeout
        )
    except OSError as error:
        fail(parser.prog, f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    log.info("listening on %s (the browser page: %s)", server.url, server.page_url)
    if server.metrics_url:
        log.info("metrics for Prometheus: %s", server.metrics_url)
    server.serve_until_signal(signalled)


def build_app(args: argparse.Namespace) -> wsthreads.WebSocketApp:
    """The app the command line asks for."""
    return create_app(
        args.count,
        args.interval,
        args.echo,
        args.netpoller,
        args.broker,
        max_message_size=args.max_message_size or None,
        ping_interval=args.ping_interval or None,
        write_timeout=args.write_timeout,
        max_connections=args.max_connections,
        max_session_threads=args.max_session_threads,
        allowed_origins=tuple(args.allowed_origin),
        path=args.path,
        subprotocols=tuple(args.subprotocol),
        trusted_proxies=tuple(args.trusted_proxy),
        metrics_path=args.metrics,
        max_sessions_per_address=args.max_sessions_per_address,
        max_connection_rate=args.max_connection_rate,
        max_message_rate=args.max_message_rate,
        max_byte_rate=args.max_byte_rate,
        compression=args.compression,
    )


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
    parser.add_argument(
        "--path",
        type=path_arg,
        default=WS_PATH,
        help=f"the WebSocket endpoint; an upgrade on any other path gets 404 naming it (default {WS_PATH})",
    )
    add_common_options(parser, MAX_MESSAGE_SIZE, WRITE_TIMEOUT)
    parser.add_argument(
        "--ping-interval",
        type=seconds_arg,
        default=PING_INTERVAL,
        metavar="SECONDS",
        help="keepalive ping period; a client that has not answered a ping by the next is"
        f" closed with 1011; 0: off (default {PING_INTERVAL:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=count_arg,
        default=MAX_CONNECTIONS,
        metavar="N",
        help=f"sessions open at once; more get HTTP 503 (default {MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--max-session-threads",
        type=count_arg,
        default=MAX_SESSION_THREADS,
        metavar="N",
        help="without --netpoller, where each session holds threads: sessions open at once, more get"
        f" HTTP 503 (default {MAX_SESSION_THREADS})",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=positive_seconds_arg,
        default=HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="deadline for a client's whole request (and TLS handshake), however it trickles in"
        f" (default {HANDSHAKE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="where published messages come from: redis://HOST:PORT/DB (?keep=10000 or ?keep=1h:"
        " how many are kept); clients subscribe with /ws?topic=NAME (default: in-process)",
    )
    parser.add_argument(
        "--netpoller",
        action="store_true",
        help="sessions hold no thread while they wait: one poller for all (Go's netpoller);"
        " default: a reader thread per session, as the article's goroutine",
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
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a proxy whose X-Forwarded-For gives the client's address, e.g. 127.0.0.1 or"
        " 10.0.0.0/8; repeatable",
    )
    parser.add_argument(
        "--max-sessions-per-address",
        type=limit_arg,
        metavar="N",
        help="sessions one client address may have open; more get HTTP 429 (default: no limit)",
    )
    parser.add_argument(
        "--max-connection-rate",
        type=rate_arg,
        metavar="N",
        help="new connections one client address may open a second; more get HTTP 429 (default: no limit)",
    )
    parser.add_argument(
        "--max-message-rate",
        type=rate_arg,
        metavar="N",
        help="messages a second one client may send; over it, closed with 1008 (default: no limit)",
    )
    parser.add_argument(
        "--max-byte-rate",
        type=rate_arg,
        metavar="BYTES",
        help="message bytes a second one client may send; over it, closed with 1008 (default: no limit)",
    )
    parser.add_argument(
        "--metrics",
        nargs="?",
        const=METRICS_PATH,
        type=path_arg,
        metavar="PATH",
        help=f"serve Prometheus metrics at PATH ({METRICS_PATH} if not given); needs"
        " pip install 'wsthreads[metrics]' (default: none kept)",
    )
    parser.add_argument(
        "--subprotocol",
        type=subprotocol_arg,
        action="append",
        default=[],
        metavar="NAME",
        help="a subprotocol the server speaks; repeatable; a client gets the first of its own"
        " offers that is among them, or none",
    )
    return parser


def path_arg(text: str) -> str:
    """argparse type: an endpoint path, starting with '/'."""
    if not is_plain_path(text):
        raise argparse.ArgumentTypeError(
            f"not a path of '/', letters, digits and -._~ (e.g. /live/updates): {text!r}"
        )
    return text


def port_arg(text: str) -> int:
    """argparse type: a TCP port, 0-65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text!r}")
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
