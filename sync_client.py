"""The article's client, with threads: dial, read in one thread, send in another.

Go::

    conn, _, _ := websocket.DefaultDialer.Dial("ws://localhost:8080/ws", nil)   // dial
    defer conn.Close()
    go reader(conn)                                                             // start the reader
    for i := 0; i < 5; i++ {                                                    // send with pauses
        conn.WriteMessage(websocket.TextMessage, ...)
        time.Sleep(time.Second)
    }

Python, step by step (the ``wsthreads`` package does each one):

1. Dial: ``WebSocketClient.run()`` opens TCP (and TLS), websocket-client does
   the handshake, and a ``Connection`` takes over the socket, all within
   ``--timeout``.
2. ``go reader(conn)``: the ``reader`` thread reads and prints every
   message, the same reader as the server's; it closes the socket at the
   end (``defer conn.Close()``).
3. The loop: :class:`common.Sender` sends in the ``sender`` thread, pausing
   with ``conn.stop.wait(interval)``. Then we linger until the server closes
   or goes quiet for ``--linger`` seconds, and close with 1000.

The main thread only waits for the end or for Ctrl+C (Go: ``signal.Notify``
and a ``select`` on the interrupt channel). Run ``python sync_client.py
--help`` for the options.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

import wsthreads
from common import (
    OneLineParser,
    Sender,
    add_common_options,
    fail,
    header_arg,
    positive_seconds_arg,
    seconds_arg,
    setup_logging,
    subprotocol_arg,
    tracing,
)
from wsthreads.client import DEFAULT_URL, DIAL_TIMEOUT
from wsthreads.connection import CLOSE_TIMEOUT, MAX_MESSAGE_SIZE, WRITE_TIMEOUT
from wsthreads.signals import Signalled, catch_signals, run_until_signal

#: Seconds of silence after which the client, done sending, closes. It must
#: exceed the server's interval, or the client hangs up between two messages.
DEFAULT_LINGER = 3.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; exit status 0 after a clean close or Ctrl+C, 1 otherwise."""
    signalled = catch_signals()  # first: a Ctrl+C during start-up is not lost
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    try:
        client = build_client(args)
    except ValueError as error:  # e.g. a header given twice
        parser.error(str(error))
    setup_logging(quiet=args.quiet, log_format=args.log_format)
    with tracing(parser.prog, args.trace):
        return talk(parser, args, client, signalled)


def talk(
    parser: OneLineParser,
    args: argparse.Namespace,
    client: wsthreads.WebSocketClient,
    signalled: Signalled,
) -> int:
    """Dial, run the sessions until the end or a signal; the exit status."""
    # --echo answers until the server closes; otherwise we close once it goes quiet.
    linger = None if args.echo else args.linger
    finished = threading.Event()
    outcome: list[wsthreads.Closed | wsthreads.ConnectError] = []

    def run() -> None:
        try:
            outcome.append(client.run(linger=linger))
        except wsthreads.ConnectError as error:
            outcome.append(error)
        finally:
            finished.set()

    # Daemon: if Ctrl+C comes while the dial is pending, close() cuts it short,
    # and nothing may keep the process alive after main() returns.
    threading.Thread(target=run, name="sender", daemon=True).start()
    interrupted = run_until_signal(finished, on_signal=client.close, signalled=signalled)
    if interrupted:
        finished.wait(CLOSE_TIMEOUT + 1.0)
    result = outcome[0] if outcome else None
    if isinstance(result, wsthreads.ConnectError) and not interrupted:
        fail(parser.prog, str(result))
    if interrupted:
        return 0
    return 0 if isinstance(result, wsthreads.Closed) and result.clean else 1


def build_client(args: argparse.Namespace) -> wsthreads.WebSocketClient:
    """The client the command line asks for; ValueError (one line) for settings that cannot work."""
    return wsthreads.WebSocketClient(
        args.url,
        handler=wsthreads.Echo() if args.echo else Sender(args.count, args.interval, "client"),
        reconnect=args.reconnect,
        timeout=args.timeout,
        cafile=args.cafile,
        certfile=args.certfile,
        keyfile=args.keyfile,
        max_message_size=args.max_message_size or None,
        write_timeout=args.write_timeout,
        headers=tuple(args.header),
        subprotocols=tuple(args.subprotocol),
        ping_interval=args.ping_interval or None,
        unix_socket=args.unix_socket,
        proxy=True if args.proxy is None else None if args.proxy.lower() == "off" else args.proxy,
        compression=args.compression,
    )


def build_parser() -> OneLineParser:
    """The command line of ``sync_client.py``."""
    parser = OneLineParser(
        prog="sync_client.py",
        description="WebSocket client: sends COUNT messages and prints what it receives.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    add_common_options(parser, MAX_MESSAGE_SIZE, WRITE_TIMEOUT)
    parser.add_argument(
        "--timeout",
        type=positive_seconds_arg,
        default=DIAL_TIMEOUT,
        help="deadline for the whole dial: TCP connect, TLS and the opening handshake"
        f" (default {DIAL_TIMEOUT:g})",
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
        "--certfile",
        help="PEM certificate (chain) to show a server that asks for one (mutual TLS); its key too,"
        " unless --keyfile",
    )
    parser.add_argument("--keyfile", help="PEM private key, if it is not in --certfile")
    parser.add_argument(
        "--proxy",
        metavar="URL",
        help="HTTP proxy to go through, http://[USER:SECRET@]HOST:PORT; 'off': none"
        " (default: from https_proxy, http_proxy, all_proxy and no_proxy, as curl does)",
    )
    parser.add_argument(
        "--unix-socket",
        metavar="PATH",
        help="connect to this Unix socket instead of the URL's host and port (the URL still"
        " gives the Host header and the path)",
    )
    parser.add_argument(
        "--reconnect",
        action="store_true",
        help="when the server goes away (1001, 1011-1014) or the connection drops (1006), dial again"
        " (after 0.5 s, doubling to 30 s)",
    )
    parser.add_argument(
        "--header",
        type=header_arg,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra header for the opening handshake, e.g. 'Authorization: Bearer TOKEN'; repeatable",
    )
    parser.add_argument(
        "--subprotocol",
        type=subprotocol_arg,
        action="append",
        default=[],
        metavar="NAME",
        help="a subprotocol to offer, most preferred first; repeatable; the server picks one of"
        " them or none, and the 'connected' line names it",
    )
    parser.add_argument(
        "--ping-interval",
        type=seconds_arg,
        default=0.0,
        metavar="SECONDS",
        help="send a keepalive ping this often; a server that has not answered one by the next"
        " is closed with 1011; 0: off (default 0)",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
