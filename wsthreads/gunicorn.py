"""gunicorn hooks: a stop of the gthread worker closes every session with 1001 first.

Use them from a gunicorn config file (see ``gunicorn.conf.py``)::

    from wsthreads.gunicorn import post_worker_init, worker_int
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from .app import SHUTDOWN_TIMEOUT, all_apps


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: a graceful stop (SIGTERM) closes sessions with 1001.

    gunicorn owns the signals, so a program's own SIGTERM handler never runs
    there. On SIGTERM its gthread worker stops accepting and waits up to
    ``graceful_timeout`` for open requests, and an open WebSocket session is
    one. We chain its handler: it still begins the stop, and a thread closes
    every session with 1001, so that their requests end within 2 s.
    """
    begin_stop = worker.handle_exit

    def handle_exit(signum: int, frame: object) -> None:
        begin_stop(signum, frame)
        threading.Thread(target=shutdown_all, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, handle_exit)


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
