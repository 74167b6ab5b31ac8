"""Ctrl+C and SIGTERM for a program built on wsthreads: the main thread waits, named threads work."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from . import trace

log = logging.getLogger("wsthreads")


def catch_signals() -> threading.Event:
    """Install handlers for SIGINT and SIGTERM that only set the returned Event.

    Call it first thing in ``main()``, so that a Ctrl+C during start-up (a
    dial, binding the port) is not lost; hand the Event to
    :func:`run_until_signal`. Both handlers are installed explicitly: a
    program started in the background by a shell inherits SIGINT ignored.
    """
    signalled = threading.Event()

    def handle(signum: int, frame: object) -> None:
        signalled.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)
    return signalled


def run_until_signal(
    finished: threading.Event, on_signal: Callable[[], object], signalled: threading.Event | None = None
) -> bool:
    """Main thread: wait until ``finished`` is set, or for Ctrl+C / SIGTERM.

    Signals reach only Python's main thread, so the main thread does nothing
    but wait here while named threads do the work (Go: ``signal.Notify`` and
    a ``select`` on the interrupt channel). On a signal, calls ``on_signal``
    (bounded) and returns True; returns False once ``finished`` is set.
    ``signalled`` is the Event of an earlier :func:`catch_signals`, if any.

    The handler only sets an Event that the main thread never waits on (it
    polls it), so a second signal, or SIGINT and SIGTERM together, changes
    nothing: no exception can land inside a lock or an ``except`` block.
    """
    signalled = signalled or catch_signals()
    with trace.span("waiting for the end or a signal"):
        while not finished.wait(0.05):
            if signalled.is_set():
                break
        else:
            return False
    log.info("interrupted: shutting down")
    on_signal()
    return True
