"""Prometheus metrics for the server's sessions (``pip install "wsthreads[metrics]"``).

An app made with ``metrics_path="/metrics"`` (``--metrics``) counts here and
serves them at that path. The metrics are the process's, made once, in a
registry of their own (prometheus_client's global one is left alone); two
apps in one process count together. Every name, with its meaning, is in
``docs/operations.md``.

The hot path stays free of them: a connection counts its messages and bytes
in plain integers (:class:`~wsthreads.connection.Traffic`), and a thread
named ``metrics`` adds what changed to the counters every
:data:`SWEEP_INTERVAL` seconds, as does every scrape and every session's end.

Under gunicorn, a scrape reaches one worker of several; to report all of
them the workers share prometheus_client's multiprocess directory
(``PROMETHEUS_MULTIPROC_DIR``, which :func:`wsthreads.gunicorn.share_metrics`
sets up): each worker writes its values to files there, and the scraped
worker sums the files. The gauges carry the worker's ``pid`` as a label, and
a worker's gauges go when it does (the ``child_exit`` hook); its counters stay
in the sums, as Prometheus expects of a counter.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .closing import CloseCode

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .connection import Connection

#: Seconds between two sweeps of the open connections' counts into the counters.
SWEEP_INTERVAL = 1.0
#: The environment variable of prometheus_client's multiprocess mode: a directory the workers share.
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds: the histograms' buckets, from a millisecond to ten seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: What a metric says when prometheus_client is missing.
MISSING = "metrics need prometheus_client: pip install 'wsthreads[metrics]'"


def check_available() -> None:
    """ImportError, one line saying what to install, if prometheus_client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImportError(MISSING) from None


def multiprocess() -> bool:
    """True in prometheus_client's multiprocess mode (the workers share a directory)."""
    return MULTIPROCESS_VARIABLE in os.environ or MULTIPROCESS_VARIABLE.lower() in os.environ


class Metrics:
    """The process's WebSocket metrics; the app calls one method per event."""

    def __init__(self, live: Callable[[], Iterable[Any]]) -> None:
        """``live()``: the apps that keep metrics (a sweep sets the gauges from those accepting)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        #: Whether the values go to the shared directory: decided when prometheus_client was
        #: imported, by the environment variable then, for good.
        self.shared = values.ValueClass is not values.MutexValue
        self._live = live
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        gauge: dict[str, Any] = {"registry": registry, "multiprocess_mode": "liveall"}
        self.sessions_open = Gauge("wsthreads_sessions_open", "WebSocket sessions open now.", **gauge)
        self.sessions_limit = Gauge(
            "wsthreads_sessions_limit",
            "Sessions that may be open at once (max_connections, max_session_threads).",
            **gauge,
        )
        self.session_threads = Gauge(
            "wsthreads_session_threads",
            "Request threads held by sessions now (handler functions, run() in progress).",
            **gauge,
        )
        self.threads = Gauge("wsthreads_threads", "Python threads alive in the process.", **gauge)
        self.sessions_opened = Counter(
            "wsthreads_sessions_opened", "Sessions opened (the 101 went out).", registry=registry
        )
        self.sessions_ended = Counter(
            "wsthreads_sessions_ended",
            "Sessions ended, by close code (1006: lost without a close) and by who closed first.",
            ["code", "closed_by"],
            registry=registry,
        )
        self.refusals = Counter(
            "wsthreads_refusals",
            "Requests on the endpoint answered with an HTTP error instead of a session.",
            ["status", "reason"],
            registry=registry,
        )
        self.messages = Counter(
            "wsthreads_messages",
            "Data messages, in (received) and out (sent).",
            ["direction"],
            registry=registry,
        )
        self.bytes = Counter(
            "wsthreads_bytes",
            "Bytes on the wire (frame headers and control frames included), in and out.",
            ["direction"],
            registry=registry,
        )
        self.deliveries = Counter(
            "wsthreads_deliveries",
            "Messages queued for clients by app.broadcast() (kind=broadcast) or by pub/sub's fan-out"
            " (kind=publish), one per client.",
            ["kind"],
            registry=registry,
        )
        self.slow_clients = Counter(
            "wsthreads_slow_clients_dropped",
            "Clients dropped for not reading: policy=close (1013, on_overflow close) or write-deadline"
            " (a write outlasted write_timeout).",
            ["policy"],
            registry=registry,
        )
        self.messages_dropped = Counter(
            "wsthreads_messages_dropped",
            "Messages dropped for a slow client under on_overflow drop-oldest.",
            ["policy"],
            registry=registry,
        )
        self.handshake_seconds = Histogram(
            "wsthreads_handshake_seconds",
            "From the app receiving the upgrade request to its 101 going out.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "wsthreads_publish_delivery_seconds",
            "From a publish to the message being queued for its subscribers here.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.broker_reconnects = Counter(
            "wsthreads_broker_reconnects",
            "Times the broker answered again after it was lost.",
            registry=registry,
        )
        self._lock = threading.Lock()  # guards _counted and the sweep
        # The open connections, and what of their traffic the counters have:
        # messages in and out, bytes in and out, messages dropped.
        self._counted: dict[Connection, tuple[int, int, int, int, int]] = {}
        self._sweeper_pid: int | None = None
        # Never set: the sweeper lasts as long as the process (a daemon, holding nothing that
        # must be released); it waits on this, not in a sleep, like every wait here.
        self._never = threading.Event()

    # --- events, from the app ------------------------------------------------------------------

    def refused(self, status: str, cause: str) -> None:
        """A request got ``status`` (``"503 Service Unavailable"``) instead of a session."""
        self.refusals.labels(status.split(" ", 1)[0], cause).inc()

    def opened(self, conn: Connection, started: float) -> None:
        """``conn``'s 101 went out; its request reached the app at ``time.monotonic()`` ``started``."""
        self.handshake_seconds.observe(time.monotonic() - started)
        self.sessions_opened.inc()
        self.sessions_open.inc()
        with self._lock:
            self._counted[conn] = (0, 0, 0, 0, 0)
        self.keep_sweeping()

    def ended(self, conn: Connection) -> None:
        """``conn`` is over (once per :meth:`opened`; a connection never opened is ignored)."""
        with self._lock:
            counted = self._counted.pop(conn, None)
            if counted is None:
                return
            self._count_traffic(conn, counted)
        self.sessions_open.dec()
        closed = conn.closed
        code = closed.code if closed is not None else CloseCode.ABNORMAL_CLOSURE
        if code == CloseCode.ABNORMAL_CLOSURE:
            by = "nobody"
        else:
            by = "client" if closed and closed.by_peer else "server"
        self.sessions_ended.labels(code_label(code), by).inc()
        if conn.traffic.slow_client is not None:
            self.slow_clients.labels(conn.traffic.slow_client).inc()

    def delivered(self, kind: str, count: int) -> None:
        """``count`` messages were queued for clients, by a broadcast or a publish."""
        if count:
            self.deliveries.labels(kind).inc(count)

    def published(self, seconds: float) -> None:
        """A published message reaches its subscribers here now, ``seconds`` after it was published."""
        self.delivery_seconds.observe(max(seconds, 0.0))

    def broker_back(self) -> None:
        """The broker answers again after it was lost."""
        self.broker_reconnects.inc()

    # --- the sweep: open connections' counts into the counters ----------------------------------

    def sweep(self) -> None:
        """Bring the counters and gauges up to date with what the open connections carried."""
        with self._lock:
            for conn, counted in self._counted.items():
                self._counted[conn] = self._count_traffic(conn, counted)
        apps = [app for app in self._live() if app.accepting]
        self.sessions_limit.set(sum(app.session_limit for app in apps))
        self.session_threads.set(sum(app.threads_in_sessions() for app in apps))
        self.threads.set(threading.active_count())

    def _count_traffic(
        self, conn: Connection, counted: tuple[int, int, int, int, int]
    ) -> tuple[int, int, int, int, int]:
        """Add what ``conn`` carried since ``counted`` (under ``_lock``); what is counted now."""
        traffic = conn.traffic
        now = (
            traffic.messages_in,
            traffic.messages_out,
            traffic.bytes_in,
            traffic.bytes_out,
            conn.messages_dropped,
        )
        for counter, label, new, old in (
            (self.messages, "in", now[0], counted[0]),
            (self.messages, "out", now[1], counted[1]),
            (self.bytes, "in", now[2], counted[2]),
            (self.bytes, "out", now[3], counted[3]),
            (self.messages_dropped, "drop-oldest", now[4], counted[4]),
        ):
            if new > old:
                counter.labels(label).inc(new - old)
        return now

    def keep_sweeping(self) -> None:
        """Start this process's sweeper thread, once (again in a worker forked after it started).

        Called when a session opens, and by our gunicorn worker as it starts
        serving (not when an app is made: gunicorn's master may make it, with
        ``preload_app``, and must not sweep, or its gauges would count as a worker's).
        """
        if self._sweeper_pid == os.getpid():
            return
        with self._lock:
            if self._sweeper_pid == os.getpid():
                return
            self._sweeper_pid = os.getpid()
            threading.Thread(target=self._sweep_loop, name="metrics", daemon=True).start()

    def _sweep_loop(self) -> None:
        while not self._never.wait(SWEEP_INTERVAL):
            self.sweep()

    # --- the scrape ----------------------------------------------------------------------------

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The metrics in the format ``accept`` asks for (Prometheus text by default), and its type.

        In multiprocess mode, every worker's, from the shared directory;
        ValueError, one line, if that directory is gone.
        """
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder
        from prometheus_client.multiprocess import MultiProcessCollector

        self.sweep()
        registry: CollectorRegistry = self.registry
        if self.shared:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type


def code_label(code: int) -> str:
    """A close code as a label: RFC 6455's as they are, an application's (3000-4999) as ``3xxx`` or ``4xxx``.

    A peer chooses the code: one series per application code would let it make thousands.
    """
    return f"{code // 1000}xxx" if code >= 3000 else str(code)


_made: Metrics | None = None
_making = threading.Lock()


def process_metrics(live: Callable[[], Iterable[Any]]) -> Metrics:
    """The process's metrics, made on the first call (ImportError, one line, without prometheus_client)."""
    global _made
    check_available()
    with _making:
        if _made is None:
            try:
                _made = Metrics(live)
            except OSError as error:  # the workers' directory is gone, or not writable
                where = os.environ.get(MULTIPROCESS_VARIABLE) or os.environ.get(MULTIPROCESS_VARIABLE.lower())
                raise ValueError(
                    f"cannot keep metrics in {MULTIPROCESS_VARIABLE}={where}: {error.strerror}"
                ) from None
        return _made
