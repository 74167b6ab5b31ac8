"""Per-connection code, plugged into a connection's lifecycle: the same on both sides.

A :class:`Handler` says what one session does: ``on_message`` runs in the
connection's reader thread for every message, ``run`` in the session's own
thread once the reader has started. :func:`run_session` is the lifecycle
around them, start to finish, for the server's request thread and for the
client alike.
"""

from __future__ import annotations

import time
from typing import Protocol

from .connection import (
    ABNORMAL_CLOSURE,
    INTERNAL_ERROR,
    NORMAL_CLOSURE,
    Closed,
    Connection,
    Message,
    log,
)


class Handler(Protocol):
    """What one session does. Both methods may ``conn.send()``; any exception closes with 1011."""

    def on_message(self, conn: Connection, message: Message) -> None:
        """Handle one message (in the reader thread: keep it short, it holds up reading)."""

    def run(self, conn: Connection) -> None:
        """Do the session's own work, e.g. send messages (in the session's thread)."""


class Echo:
    """Send every message straight back, text as text and binary as binary; nothing else."""

    def on_message(self, conn: Connection, message: Message) -> None:
        """Echo it (once the connection is closing the send fails, and the reader goes on)."""
        conn.send(message)

    def run(self, conn: Connection) -> None:
        """Nothing of our own to send."""


def wait_until_quiet(conn: Connection, linger: float | None) -> None:
    """Wait for the session to stop or, with ``linger``, for ``linger`` seconds of silence."""
    if linger is None:
        conn.stop.wait()
        return
    while True:
        quiet_for = time.monotonic() - conn.last_received
        if quiet_for >= linger or conn.stop.wait(linger - quiet_for):
            if not conn.stop.is_set():
                log.info("no message for %g s (linger): closing", linger)
            return


def run_session(conn: Connection, handler: Handler, *, linger: float | None = None) -> Closed:
    """One side of a session, start to finish; returns how it ended.

    Starts the reader (Go: ``go reader(conn)``), runs ``handler.run`` in the
    calling thread, waits until the peer closes or (``linger``) goes quiet,
    closes with 1000 if nobody has yet, and waits, bounded, for the reader to
    release the socket. An exception in the handler closes with 1011 and is
    logged on one line; it never reaches the caller.
    """
    conn.start(lambda message: handler.on_message(conn, message))
    try:
        handler.run(conn)
    except Closed:
        pass  # the session ended under the handler: nothing to add
    except BaseException as error:  # SystemExit too: it would end only this thread, silently
        log.error("closing after an error in the session handler: %r", error)
        conn.close(INTERNAL_ERROR, "internal error")
    wait_until_quiet(conn, linger)
    conn.close(NORMAL_CLOSURE)
    conn.wait_closed()
    return conn.closed or Closed(ABNORMAL_CLOSURE, "the reader did not end", by_peer=False)
