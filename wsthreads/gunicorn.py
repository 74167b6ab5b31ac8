"""gunicorn: a gthread worker for sessions, and hooks that close every session with 1001 on a stop.

Use them from a gunicorn config file (see ``gunicorn.conf.py``)::

    worker_class = "wsthreads.gunicorn.ThreadWorker"
    from wsthreads.gunicorn import child_exit, post_worker_init, worker_exit, worker_int
    from wsthreads.gunicorn import share_metrics as on_starting  # every worker's metrics in a scrape

With ``WSTHREADS_TRACE=FILE`` in the environment, every worker traces (see
:mod:`wsthreads.trace`) into ``FILE`` with its pid before the suffix
(``trace.json`` → ``trace.4242.json``), written when the worker exits.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gunicorn import glogging, util  # type: ignore[import-untyped]
from gunicorn.workers import gthread  # type: ignore[import-untyped]

from . import trace
from .app import HOLD_KEY, SHUTDOWN_TIMEOUT, all_apps, session_owns
from .connection import wait_for
from .deadlines import deadlines
from .logs import JsonFormatter
from .metrics import MULTIPROCESS_VARIABLE, multiprocess
from .pool import RequestExecutor
from .serving import HANDSHAKE_TIMEOUT, Reading, has_bytes
from .settings import SWITCH_INTERVAL, raise_descriptor_limit, warn_if_too_few_descriptors

log = logging.getLogger("wsthreads.server")

#: share_metrics()'s directories: this, then the master's pid, in the system's temporary directory.
METRICS_PREFIX = "wsthreads-metrics-"
#: The environment variable that turns tracing on in every worker: the trace file.
TRACE_VARIABLE = "WSTHREADS_TRACE"
#: Seconds between two looks at the listen queue while the worker is full: at most this long
#: (and the main loop's turn) a connection waits for its 503 once every worker is full.
LOOK_INTERVAL = 0.1


class ThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, for WebSocket sessions.

    ``worker_class = "wsthreads.gunicorn.ThreadWorker"``. A session parked in
    the netpoller (``ServerConfig.netpoller``, the default for a handler
    object) gives its request thread back once its ``run()`` has returned;
    its connection is the session's, and the worker leaves it alone
    (:meth:`finish_request`). A session that keeps its thread (a handler
    function) holds it for its whole life. The worker sets the GIL's
    switch interval for its process (:meth:`init_process`), and differs
    from gthread in three more ways:

    - Its pool is our own server's request threads (:meth:`get_thread_pool`):
      a few serve requests at once, and a session that keeps its thread gets a
      place of its own. gthread's pool has ``threads`` threads, and in a burst
      of connects a thousand handshakes would share one GIL.

    - It takes no more connections at once than ``threads``, nor more sessions
      that keep a thread (``worker_connections`` is capped at it, none is kept
      alive idle, and a request is counted off once when it ends). gthread takes
      up to ``worker_connections`` (1000 by default) and queues those it has no
      thread for inside itself, unanswered, while another worker may have
      threads free; a full worker of ours leaves them on the listening socket
      all workers share, for the others to take.
    - When every worker is full, its threads held by sessions (not busy with
      handshakes, which end within ms), nobody takes them, and they would wait in the
      kernel's listen queue with no answer. So a worker holds a shared lock on
      the listening socket while it has a thread free, and a full worker looks
      every ``LOOK_INTERVAL`` seconds: when connections wait and no worker
      holds the lock, it accepts them and answers each with 503 "server full
      (N sessions)", written without blocking (with TLS it only closes them).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker_connections = min(self.cfg.worker_connections, self.cfg.threads)
        self.max_keepalived = 0  # an idle kept-alive connection would count against the threads
        self.reading = Reading()  # the deadlines of the requests being read, cut short by a stop

    def init_process(self) -> None:
        """In the worker process, before it serves: the switch interval and open-file limit for thousands.

        The worker owns its process, so it may set what the library never does
        (:data:`wsthreads.settings.SWITCH_INTERVAL`, :func:`wsthreads.settings.raise_descriptor_limit`).
        """
        sys.setswitchinterval(SWITCH_INTERVAL)
        raise_descriptor_limit()
        super().init_process()

    def run(self) -> None:
        """gthread's loop; then, bounded, the end of every session (1001 on a stop).

        gthread waits for the requests in flight before its worker exits; a
        session parked in the netpoller is no longer one, so it is waited
        for here, or the process would exit in the middle of its close.
        """
        for app in all_apps():  # loaded by now
            warn_if_too_few_descriptors(app.config.max_connections)
            app.serve_with_threads(self.cfg.threads)
            if app.metrics is not None:
                app.metrics.keep_sweeping()
                if app.metrics.shared:  # made in the master (preload_app): its zeros are no worker's
                    forget_worker(os.getppid())
            if app.metrics is not None and self.cfg.workers > 1 and not app.metrics.shared:
                log.warning(
                    "metrics: %d workers, but %s was not set when prometheus_client was imported:"
                    " a scrape shows one worker's (share_metrics is the on_starting hook for it)",
                    self.cfg.workers,
                    MULTIPROCESS_VARIABLE,
                )
        try:
            super().run()
        finally:
            shutdown_all()

    def get_thread_pool(self) -> RequestExecutor:
        """gthread's pool: a few request threads serve at once; a session that keeps one gets its own."""
        return RequestExecutor()

    def load_wsgi(self) -> None:
        """gthread's app, called with the hook that tells the pool a session keeps its thread."""
        super().load_wsgi()
        app: Any = self.wsgi  # type: ignore[has-type]  # gunicorn is untyped
        hold = self.tpool.hold

        def with_hold(environ: dict[str, Any], start_response: Any) -> Any:
            environ[HOLD_KEY] = hold
            return app(environ, start_response)

        self.wsgi = with_hold

    def set_accept_enabled(self, enabled: bool) -> None:
        """gthread's switch between accepting and not; we hold the "thread free" lock while accepting."""
        if enabled != self._accepting:
            for listener in self.sockets:
                hold_free_lock(listener, enabled)
        super().set_accept_enabled(enabled)

    def handle(self, conn: Any) -> Any:
        """gthread's handling of a connection (in a pool thread), with our deadline for its request.

        gthread reads a request with no deadline of its own: a client that
        sends half a request, or drips it, would hold the thread for ever. So
        the request (and the TLS handshake) must be in within
        :data:`~wsthreads.serving.HANDSHAKE_TIMEOUT` of the connection's first
        turn here, as under our own server, or its socket is shut down and the
        thread is free (:meth:`handle_request` ends the deadline once it is in).

        A connection whose first bytes have not come goes back to gthread's
        poller at once, not after waiting for them in this thread (gthread
        waits up to 5 s): a few of our request threads serve everyone, and in a
        burst some clients send their requests 0.3 to 0.6 s after the connect.
        When its bytes come, gthread hands it to a thread again.
        """
        if conn.initialized:  # a kept-alive connection's next request (none here: max_keepalived is 0)
            return super().handle(conn)
        since = conn.__dict__.setdefault("wsthreads_since", time.monotonic())
        if not conn.data_ready:
            if not has_bytes(conn.sock):
                return gthread._DEFER  # its poller waits for the bytes (finish_request: until the deadline)
            conn.data_ready = True
        # With TLS gthread replaces the socket object by its wrapper: the deadline cuts a duplicate.
        cut = socket.socket(fileno=os.dup(conn.sock.fileno())) if self.cfg.is_ssl else conn.sock
        left = since + HANDSHAKE_TIMEOUT - time.monotonic()
        armed = deadlines.arm(cut, max(left, 0.0))
        conn.wsthreads_deadline = (armed, cut)
        self.reading.add(armed)  # cut at once if the worker is stopping
        try:
            result = super().handle(conn)
        finally:
            self._end_deadline(conn)
        if not result and conn.sock.fileno() != -1 and not session_owns(conn.sock):
            # The request is over (a page, a refusal): close it here. gthread would close it in its
            # main loop, waiting up to 2 s for the client's end, and accept nothing meanwhile.
            util.close_graceful(conn.sock)
        return result

    def handle_request(self, req: Any, conn: Any) -> Any:
        """gthread's call of the app: the request is in, and its deadline ends (a session may last)."""
        self._end_deadline(conn)
        return super().handle_request(req, conn)

    def _end_deadline(self, conn: Any) -> None:
        """End the deadline :meth:`handle` armed for ``conn``'s request, if it is still armed."""
        armed, cut = conn.__dict__.pop("wsthreads_deadline", (None, None))
        if armed is not None:
            self.reading.done(armed)
            deadlines.disarm(armed)
            if cut is not conn.sock:
                cut.close()  # the duplicate: the connection goes on

    def finish_request(self, conn: Any, fs: Any) -> None:
        """gthread's end of a request (in the main loop): a session's socket is left to it, counted off once.

        gthread counts the connection off, then closes its socket gracefully.
        A session either has closed it already (that would raise, and gthread's
        handler would count it off again: ``nr_conns`` one too low), or owns it
        beyond the request (parked in the netpoller): closing it would cut the session.
        """
        if conn.sock.fileno() == -1 or session_owns(conn.sock):  # the session took the socket over
            self.nr_conns -= 1
            return
        super().finish_request(conn, fs)
        if self.pending_conns and self.pending_conns[-1] is conn:  # deferred: no bytes yet, see handle()
            conn.timeout = conn.wsthreads_since + HANDSHAKE_TIMEOUT  # not gthread's keepalive (2 s)

    def murder_pending(self) -> None:
        """gthread's end of the connections whose first bytes have not come by their deadline; all of
        them once the worker stops (gthread's stop would wait for each until its deadline)."""
        if not self.alive:
            for conn in self.pending_conns:
                conn.timeout = 0.0
        super().murder_pending()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's wait for events; then a look for a stalled request, and while full, at the backlog.

        Once the worker stops, requests still being read are cut at once (as
        under our own server): gthread would wait for each up to its deadline.
        """
        if not self.alive:
            self.reading.close()
        if self.tpool.waiting:  # connections wait for a request thread: a stall is seen within LOOK_INTERVAL
            timeout = min(timeout, LOOK_INTERVAL)
        if self._accepting or not self.alive:
            super().wait_for_and_dispatch_events(timeout)
            self.tpool.start_if_stalled()
            return
        super().wait_for_and_dispatch_events(min(timeout, LOOK_INTERVAL))
        self.tpool.start_if_stalled()
        if self.nr_conns < self.worker_connections:
            return  # a request ended meanwhile (a parked session's, within ms): the main loop accepts again
        if sum(app.threads_in_sessions() for app in all_apps()) < self.cfg.threads:
            return  # threads busy with handshakes, not held by sessions: they are free again within ms
        for listener in self.sockets:
            if wait_for(listener.sock, select.POLLIN, 0) and not any_thread_free(listener):
                self._refuse_waiting(listener)

    def _refuse_waiting(self, listener: Any) -> None:
        """Accept the connections waiting on ``listener`` (at most ``backlog``) and refuse each."""
        sessions = self.cfg.workers * self.cfg.threads
        response = b"" if self.cfg.is_ssl else full_response(sessions)
        refused = 0
        while refused < self.cfg.backlog:
            try:
                sock, _ = listener.accept()
            except OSError:  # none left (another worker may have taken the last), or no descriptor free
                break
            refuse(sock, response)
            refused += 1
        if refused:
            self.log.warning("server full (%d sessions): refused %d connection(s)", sessions, refused)
            for app in all_apps()[:1]:
                if app.metrics is not None:
                    app.metrics.refusals.labels("503", "all-workers-full").inc(refused)


def hold_free_lock(listener: Any, held: bool) -> None:
    """Take (or drop) this worker's shared lock on ``listener``: "I have a thread free".

    A POSIX record lock, held by this process on the socket every worker
    inherited: the kernel drops it if the worker dies. Taking it waits at
    most for a full worker's test (:func:`any_thread_free`), which holds the
    lock for no longer than two system calls.
    """
    try:
        fcntl.lockf(listener, fcntl.LOCK_SH if held else fcntl.LOCK_UN)
    except OSError:
        pass  # a system that cannot lock sockets: any_thread_free is always True, nobody is refused


def any_thread_free(listener: Any) -> bool:
    """True if a worker holds the shared lock on ``listener`` (one of them has a thread free).

    Tested by taking the lock exclusively, without waiting, and dropping it at
    once. Also True where sockets cannot be locked: then we cannot tell.
    """
    try:
        fcntl.lockf(listener, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    fcntl.lockf(listener, fcntl.LOCK_UN)
    return False


def full_response(sessions: int) -> bytes:
    """The 503 for a connection beyond every worker's threads, with its one-line reason."""
    body = f"server full ({sessions} sessions)\n"
    return (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


def refuse(sock: socket.socket, response: bytes) -> None:
    """Write ``response`` to a just accepted connection without blocking, and close it.

    The request is read first (one read, what has come): closing a socket
    with unread bytes sends a reset, which may destroy the answer before the
    client reads it. An answer that does not go out at once is given up.
    """
    try:
        sock.setblocking(False)
        try:
            sock.recv(65536)
        except BlockingIOError:
            pass  # nothing has come yet
        if response:
            sock.send(response)
    except OSError:
        pass  # the client has gone: there is no one to answer
    finally:
        sock.close()


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: a graceful stop (SIGTERM) closes sessions with 1001.

    gunicorn owns the signals, so a program's own SIGTERM handler never runs
    there. On SIGTERM its gthread worker stops accepting and waits up to
    ``graceful_timeout`` for open requests, and an open WebSocket session is
    one. We chain its handler: it still begins the stop, and a thread closes
    every session with 1001, so that their requests end within 2 s. Logs
    ``worker ready: N threads`` last: the worker serves from then on.
    """
    path = os.environ.get(TRACE_VARIABLE)
    if path:
        named = Path(path)
        trace.start(named.with_name(f"{named.stem}.{os.getpid()}{named.suffix}"))
    begin_stop = worker.handle_exit

    def handle_exit(signum: int, frame: object) -> None:
        begin_stop(signum, frame)
        threading.Thread(target=shutdown_all, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, handle_exit)
    log.info("worker ready: %d threads", worker.cfg.threads)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in the worker as it exits: write its trace, if it traced (one line if it cannot)."""
    try:
        written = trace.stop()
    except OSError as error:
        log.error("cannot write the trace: %s", error)
        return
    if written is not None:
        log.info("%s", written.summary())


class JsonLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger with JSON lines (``logger_class``); levels, files and syslog as its options say."""

    def setup(self, cfg: Any) -> None:
        """gunicorn's setup; then each of its handlers formats JSON (wsthreads.logs.JsonFormatter)."""
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())


def share_metrics(server: Any = None) -> None:
    """gunicorn's ``on_starting`` hook: every worker's metrics in each scrape (multiprocess mode).

    A scrape reaches one worker; for it to report them all, the workers write
    their values to files in one directory (``PROMETHEUS_MULTIPROC_DIR``) and
    the scraped one sums them. Unless that variable is set already, this makes
    a fresh directory for this run of gunicorn, removed when gunicorn exits.
    Runs in gunicorn's master, before any worker starts, and must run before
    prometheus_client is imported, which reads the variable once: with
    ``preload_app``, set the variable before starting gunicorn instead.
    """
    if multiprocess():  # set by you (preload_app): gauges of a run that was killed may be left in it
        forget_dead_workers(
            os.environ.get(MULTIPROCESS_VARIABLE) or os.environ[MULTIPROCESS_VARIABLE.lower()]
        )
        return
    remove_orphaned_metrics()
    master = os.getpid()
    directory = Path(tempfile.gettempdir()) / f"{METRICS_PREFIX}{master}"
    shutil.rmtree(directory, ignore_errors=True)  # an old master's of the same pid: not ours to add to
    directory.mkdir(mode=0o700)
    os.environ[MULTIPROCESS_VARIABLE] = str(directory)

    def remove() -> None:
        if os.getpid() == master:  # the workers inherit this hook: only the master removes it
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)


def remove_orphaned_metrics() -> None:
    """Remove the metrics directories of masters that are gone (killed: their atexit never ran)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{METRICS_PREFIX}*"):
        pid = directory.name.removeprefix(METRICS_PREFIX)
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)


def forget_dead_workers(directory: str) -> None:
    """Remove the gauges of processes that are gone from a metrics ``directory`` (their counters stay)."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            forget_worker(int(pid), directory)


def process_alive(pid: int) -> bool:
    """True if a process ``pid`` exists (it may be another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in the master once a worker has exited: its gauges leave the sums; its counters stay."""
    if multiprocess():
        forget_worker(worker.pid)


def forget_worker(pid: int, directory: str | None = None) -> None:
    """Remove process ``pid``'s gauges from a metrics ``directory`` (default: the shared one)."""
    from prometheus_client import multiprocess as shared

    shared.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def worker_int(worker: Any) -> None:
    """gunicorn hook: Ctrl+C (SIGINT, SIGQUIT) closes sessions with 1001 before the worker exits."""
    shutdown_all()


def shutdown_all() -> None:
    """Shut down every WebSocket app of this worker at once (mounted in Flask or not), within 2 s."""
    stoppers = [threading.Thread(target=app.shutdown, name="shutdown", daemon=True) for app in all_apps()]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join(SHUTDOWN_TIMEOUT + 1.0)  # each shutdown is bounded; this is a backstop
