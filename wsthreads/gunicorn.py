"""gunicorn hooks: a stop of the gthread worker closes every session with 1001 first.

Use them from a gunicorn config file (see ``gunicorn.conf.py``)::

    from wsthreads.gunicorn import post_worker_init, worker_exit, worker_int

With ``WSTHREADS_TRACE=FILE`` in the environment, every worker traces (see
:mod:`wsthreads.trace`) into ``FILE`` with its pid before the suffix
(``trace.json`` → ``trace.4242.json``), written when the worker exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from . import trace
from .app import SHUTDOWN_TIMEOUT, all_apps

log = logging.getLogger("wsthreads.server")

#: The environment variable that turns tracing on in every worker: the trace file.
TRACE_VARIABLE = "WSTHREADS_TRACE"


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: a graceful stop (SIGTERM) closes sessions with 1001.

    gunicorn owns the signals, so a program's own SIGTERM handler never runs
    there. On SIGTERM its gthread worker stops accepting and waits up to
    ``graceful_timeout`` for open requests, and an open WebSocket session is
    one. We chain its handler: it still begins the stop, and a thread closes
    every session with 1001, so that their requests end within 2 s.
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


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in the worker as it exits: write its trace, if it traced (one line if it cannot)."""
    try:
        trace.stop()
    except OSError as error:
        log.error("cannot write the trace: %s", error)


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
