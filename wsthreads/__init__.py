"""wsthreads: WebSockets for synchronous Python, in threads, thousands of connections per process.

The layers, one module each:

* :mod:`wsthreads.connection` — one connection, both sides: the reader that
  owns the socket, bounded writes, the closing handshake;
* :mod:`wsthreads.netpoller` — where idle connections wait without a thread
  (Go's netpoller), and the few worker threads that read them;
* :mod:`wsthreads.session` — per-connection code (a function or a handler) and its lifecycle;
* :mod:`wsthreads.extension` — code an app runs with every session, beside its handler:
  headers on the 101, a first step, a last one, or a close at once;
* :mod:`wsthreads.pubsub` — publish and subscribe: the brokers, the fan-out to a process's
  connections, resuming by last id, and ``PubSub``, the extension that brings them to an app
  (its own layer: the app, the client and the connection know no topic);
* :mod:`wsthreads.queues` — the bounded queues between a connection and your code;
* :mod:`wsthreads.request` — the handshake's request, and how authentication refuses one;
* :mod:`wsthreads.handshake` — the opening handshake's checks, both sides;
* :mod:`wsthreads.app` — the WSGI application (Werkzeug or gunicorn);
* :mod:`wsthreads.limits` — limits per client address and per connection (token buckets);
* :mod:`wsthreads.metrics` — Prometheus metrics of the sessions, summed over gunicorn's workers;
* :mod:`wsthreads.logs` — log lines with their session's fields, and the JSON format;
* :mod:`wsthreads.serving` — serving it on Werkzeug: deadlines, TLS, shutdown;
* :mod:`wsthreads.client` — :class:`WebSocketClient`, the one client: dialing, sessions, reconnecting;
* :mod:`wsthreads.lookup` — host name lookups a dial can stop waiting for (its deadline, a close());
* :mod:`wsthreads.proxy` — the client through an HTTP proxy (CONNECT), and which proxy;
* :mod:`wsthreads.gunicorn` — hooks for gunicorn's gthread worker;
* :mod:`wsthreads.deadlines` — the thread that enforces whole-exchange deadlines;
* :mod:`wsthreads.backoff` — how long to wait before trying again: exponential, with jitter;
* :mod:`wsthreads.frames` — the frame layer, both ways, without I/O;
* :mod:`wsthreads.deflate` — permessage-deflate without I/O: the negotiation, zlib bounded;
* :mod:`wsthreads.closing` — the closing handshake without I/O: close codes, its state machine;
* :mod:`wsthreads.certificates` — PEM files for TLS, each problem one line naming the file;
* :mod:`wsthreads.lines` — text from outside as one bounded log line;
* :mod:`wsthreads.trace` — the timeline of every thread (``--trace``);
* :mod:`wsthreads.settings` — the checks of the settings both sides share;
* :mod:`wsthreads.signals` — waiting in the main thread for the end, or for Ctrl+C and SIGTERM;
* :mod:`wsthreads.testing` — the test kit: the ``ws_serve`` pytest fixture, TestServer, expect;
* :mod:`wsthreads.django` — Django: the session's user, database connections, ``runwsserver``;
* :mod:`wsthreads.__main__` — ``python -m wsthreads``: ``publish`` and ``merge-traces``.
"""

from __future__ import annotations

from .app import Mounted, ServerConfig, WebSocketApp, create_app
from .client import ClientConfig, ConnectError, NotConnected, WebSocketClient, dial
from .closing import CloseCode, Closed, describe_close
from .connection import Connection, Message
from .deflate import Deflate
from .extension import Extension, Opening
from .pubsub import Broker, BrokerError, MemoryBroker, PubSub, open_broker, publish
from .request import Reject, Request
from .serving import RunningServer, start_server, tls_context
from .session import Echo, Handler, SessionCode, run_session

__version__ = "0.3.0"

__all__ = [
    "Broker",
    "BrokerError",
    "ClientConfig",
    "CloseCode",
    "Closed",
    "ConnectError",
    "Connection",
    "Deflate",
    "Echo",
    "Extension",
    "Handler",
    "MemoryBroker",
    "Message",
    "Mounted",
    "NotConnected",
    "Opening",
    "PubSub",
    "Reject",
    "Request",
    "RunningServer",
    "ServerConfig",
    "SessionCode",
    "WebSocketApp",
    "WebSocketClient",
    "__version__",
    "create_app",
    "describe_close",
    "dial",
    "open_broker",
    "publish",
    "run_session",
    "start_server",
    "tls_context",
]
