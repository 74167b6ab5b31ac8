"""Ctrl+C and SIGTERM for a program built on wsthreads: the main thread waits, named threads work."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from . import trace

log = logging.getLogger("wsthreads")


class Signalled:
    """Whether Ctrl+C or SIGTERM has come: a flag that a signal handler sets without a lock.

    Not a ``threading.Event``: its ``set()`` takes a lock, and a second
    signal arriving while the first one's handler is inside ``set()`` runs
    its handler in the same thread, which then waits for that lock for ever
    (seen: two SIGTERMs hung a server for good). Assigning a bool takes none.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def catch_signals() -> Signalled:
    """Install handlers for SIGINT and SIGTERM that only set the returned flag.

    Call it first thing in ``main()``, so that a Ctrl+C during start-up (a
    dial, binding the port) is not lost; hand the flag to
    :func:`run_until_signal`. Both handlers are installed explicitly: a
    program started in the background by a shell inherits SIGINT ignored.
    """
    signalled = Signalled()

    def handle(signum: int, frame: object) -> None:
        signalled.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)
    return signalled


def run_until_signal(
    finished: threading.Event, on_signal: Callable[[], object], signalled: Signalled | None = None
) -> bool:
    """Main thread: wait until ``finished`` is set, or for Ctrl+C / SIGTERM.

    Signals reach only Python's main thread, so the main thread does nothing
    but wait here while named threads do the work (Go: ``signal.Notify`` and
    a ``select`` on the interrupt channel). On a signal, calls ``on_signal``
    (bounded) and returns True; returns False once ``finished`` is set.
    ``signalled`` is the flag of an earlier :func:`catch_signals`, if any.

    The handler only sets a flag that the main thread polls, taking no lock,
    so a second signal, or SIGINT and SIGTERM together, changes nothing: no
    exception can land inside a lock or an ``except`` block, and no handler
    can wait for a lock its own thread holds.
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
