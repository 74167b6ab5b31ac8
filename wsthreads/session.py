"""Per-connection code, plugged into a connection's lifecycle: the same on both sides.

Per-connection code comes in two shapes:

* a plain function ``handler(conn)``, called once per connection in the
  session's own thread; it reads in its own loop (``conn.recv(timeout)``,
  ``for message in conn``) and the session closes with 1000 when it returns
  (as ``websockets.sync.server.serve(handler)`` does);
* a :class:`Handler` object: ``on_message`` runs in the connection's reader
  thread for every message, ``run`` in the session's own thread once the
  reader has started, and the session lasts until the peer closes.

:func:`run_session` is the lifecycle around either, start to finish, for the
server's request thread and for the client alike. :func:`park_session` runs a
:class:`Handler`'s session without a thread of its own: its connection waits
in the netpoller (:mod:`wsthreads.netpoller`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from . import trace
from .closing import CloseCode, Closed
from .connection import Connection, Message, log

if TYPE_CHECKING:
    from .netpoller import Netpoller


class Handler(Protocol):
    """What one session does. Both methods may ``conn.send()``; any exception closes with 1011."""

    def on_message(self, conn: Connection, message: Message) -> None:
        """Handle one message (in the reader thread: keep it short, it holds up reading)."""

    def run(self, conn: Connection) -> None:
        """Do the session's own work, e.g. send messages (in the session's thread)."""


#: Per-connection code: a :class:`Handler` object, or a function called with the connection.
SessionCode = Handler | Callable[[Connection], None]


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
                log.info("no message for %g s (linger): closing", linger, extra=conn.log_fields)
            return


def run_session(
    conn: Connection,
    handler: SessionCode,
    *,
    linger: float | None = None,
    first: Callable[[], None] | None = None,
) -> Closed:
    """One side of a session, start to finish; returns how it ended.

    Starts the reader (Go: ``go reader(conn)``) and runs the per-connection
    code in the calling thread. A function ``handler(conn)`` pulls messages
    itself; when it returns, the session closes with 1000. With a
    :class:`Handler`, ``handler.run`` runs, then the session waits until
    the peer closes or (``linger``) goes quiet, and closes with 1000 if
    nobody has yet. Either way, what ``send_nowait`` queued is written first
    (within ``write_timeout``), and the reader's end is awaited, bounded. An
    exception in the handler closes with 1011 and is logged on one line; it
    never reaches the caller. ``first``, if given, runs once the reader has
    started, before the handler (the server's replay of missed messages),
    under the same rules.
    """
    pulls = not hasattr(handler, "on_message")
    on_message = None if pulls else lambda message: handler.on_message(conn, message)  # type: ignore[union-attr]
    conn.start(on_message)
    _work(conn, handler, first, linger, hold=True)
    conn.wait_closed()
    return conn.closed or Closed(CloseCode.ABNORMAL_CLOSURE, "the reader did not end", by_peer=False)


def park_session(
    conn: Connection, handler: Handler, poller: Netpoller, *, first: Callable[[], None] | None = None
) -> None:
    """A :class:`Handler`'s session whose connection waits in ``poller``, holding no thread while idle.

    ``on_message`` runs in the netpoller's workers, one message at a time,
    in order; ``first`` and ``handler.run`` run in the calling thread, under
    the rules of :func:`run_session`, and this returns once they have: the
    session goes on until the peer closes (``conn.at_end`` tells its end).
    """
    conn.start(lambda message: handler.on_message(conn, message), poller=poller)
    _work(conn, handler, first, None, hold=False)


def _work(
    conn: Connection,
    handler: SessionCode,
    first: Callable[[], None] | None,
    linger: float | None,
    hold: bool,
) -> None:
    """The session's own work: ``first``, the handler; then, if ``hold``, the session's end.

    Without ``hold`` (the reader is another thread's, and ends the session
    when the peer closes) only a ``linger`` keeps this thread: to close
    once the peer has gone quiet.
    """
    pulls = not hasattr(handler, "on_message")
    try:
        if first is not None:
            first()
        if pulls:
            handler(conn)  # type: ignore[operator]
        else:
            handler.run(conn)  # type: ignore[union-attr]
    except Closed:
        pass  # the session ended under the handler: nothing to add
    except BaseException as error:  # SystemExit too: it would end only this thread, silently
        log.error("closing after an error in the session handler: %r", error, extra=conn.log_fields)
        conn.close(CloseCode.INTERNAL_ERROR, "internal error")
    if not hold and linger is None:
        return
    if not pulls:
        with trace.span("waiting for the session to end"):
            wait_until_quiet(conn, linger)
    if not conn.stop.is_set():
        conn.flush()
    conn.close(CloseCode.NORMAL_CLOSURE)
