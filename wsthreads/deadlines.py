"""Deadlines for waits that a socket timeout cannot bound: one thread cuts sockets whose time is up.

A socket timeout bounds each read, not a whole exchange: a peer that drips
one byte every 300 ms never trips it. The opening handshake on both sides
needs a deadline for the whole exchange, so we arm one here: when it passes,
the ``deadlines`` thread shuts the socket down, and the blocked read returns.
The thread runs only while something is armed.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time

from . import trace
from .connection import shut_down


class Armed:
    """One armed deadline; pass it to :meth:`Deadlines.disarm`."""

    __slots__ = ("cancelled", "cut", "sock", "when")

    def __init__(self, when: float, sock: socket.socket) -> None:
        self.when = when
        self.sock = sock
        self.cancelled = False
        #: Its socket was shut down (the deadline passed, or was cut short): what was read may be partial.
        self.cut = False


class Deadlines:
    """Shut sockets down when their deadline passes, unless disarmed first."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._heap: list[tuple[float, int, Armed]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, seconds: float) -> Armed:
        """Shut ``sock`` down in ``seconds`` unless :meth:`disarm` comes first."""
        armed = Armed(time.monotonic() + seconds, sock)
        with self._changed:
            heapq.heappush(self._heap, (armed.when, next(self._order), armed))
            if self._thread is None:
                # Daemon: a process may exit with a handshake still pending.
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is armed:
                self._changed.notify()  # it comes first: the thread must wake sooner
        return armed

    def retarget(self, armed: Armed, sock: socket.socket) -> None:
        """Let a deadline cut ``sock`` instead (TLS wrapping moves the descriptor to a new object).

        If it was cut meanwhile (on the old object, which no longer had the
        descriptor), ``sock`` is shut down now.
        """
        with self._changed:
            armed.sock = sock
            if armed.cut:
                shut_down(sock)

    def disarm(self, armed: Armed) -> None:
        """Cancel a deadline; once this returns, the socket will not be shut down by us.

        The thread is woken only once nothing is left armed (to end): a burst of
        thousands of handshakes would otherwise wake it twice per connection,
        each time against all the others for the one lock. Cancelled entries
        leave the heap as they reach its top.
        """
        with self._changed:
            self._cancel_locked(armed)

    def cut_now(self, armed: Armed) -> None:
        """Shut the socket down now rather than at its deadline, unless it was disarmed first."""
        with self._changed:
            if not armed.cancelled:
                trace.instant("deadline cut short: socket shut down")
                self._cut_locked(armed)
                self._cancel_locked(armed)

    def _cut_locked(self, armed: Armed) -> None:
        armed.cut = True
        shut_down(armed.sock)

    def _cancel_locked(self, armed: Armed) -> None:
        armed.cancelled = True
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            self._changed.notify()

    def _run(self) -> None:
        with trace.span("enforcing request deadlines"), self._changed:
            while self._heap:
                when, _, armed = self._heap[0]
                if armed.cancelled:
                    heapq.heappop(self._heap)
                elif (left := when - time.monotonic()) > 0:
                    self._changed.wait(left)
                else:
                    heapq.heappop(self._heap)
                    trace.instant("deadline passed: socket shut down")
                    self._cut_locked(armed)
            self._thread = None


#: The process's deadlines (its thread runs only while one is armed).
deadlines = Deadlines()
