"""Go's netpoller, in threads: connections with nothing to read wait in one poller, not a thread each.

A goroutine blocked in a read costs a few KiB and no OS thread: the Go
runtime *parks* it on its netpoller (epoll) and runs it again when bytes
arrive. Here a connection waiting for its peer is parked the same way: its
socket is registered in one selector, watched by one thread (``netpoller``),
with the time by which it must run again (a ping, a close deadline). When
bytes arrive, that time comes, or another thread :meth:`Watch.wake` s it (a
close), a worker thread takes it for one *turn*: the connection reads what
came, handles it (your ``on_message`` runs there) and does what is due,
without waiting for the peer, and says when it must run again; then it is
parked again. One thread at a time per connection, so its messages stay in
order and ``on_message`` never runs twice at once for it.

Go runs goroutines on a few threads (``GOMAXPROCS``) and, when one blocks in
a system call for too long, its monitor (``sysmon``) starts another. The
workers here do the same: up to :data:`WORKERS` run turns; when turns have
waited :data:`STALL` seconds with none taken (a turn blocked in a write to a
slow peer, or in your ``on_message``), one more starts, up to
:data:`MAX_WORKERS`. A worker idle for :data:`IDLE` seconds ends, and the
``netpoller`` thread runs only while something is watched.

Every state change of a watch is under one lock; only the ``netpoller``
thread touches the selector and moves a parked watch to a worker.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import selectors
import threading
import time
from typing import Callable

log = logging.getLogger("wsthreads")

#: Worker threads started at once when turns wait (Go: GOMAXPROCS): a few, for two cores and one GIL.
WORKERS = 4
#: The most worker threads: each beyond WORKERS stands in for a turn blocked for STALL seconds.
MAX_WORKERS = 1024
#: Seconds turns may wait with no worker taking one before another worker starts.
STALL = 0.05
#: Seconds an idle worker waits for a turn before it ends.
IDLE = 5.0

# A watch's states: waiting in the selector; queued for or in a worker; woken while in a
# worker; forgotten (closed).
_PARKED, _RUNNING, _RUN_AGAIN, _GONE = range(4)


class Watch:
    """One connection's place in the netpoller; made by :meth:`Netpoller.watch`.

    It is parked until the first :meth:`wake`. Its owner (the connection)
    calls :meth:`close` once it has released its socket, in its last turn;
    the netpoller then forgets it.
    """

    __slots__ = ("_netpoller", "closed", "due", "fd", "name", "registered", "state", "turn")

    def __init__(self, netpoller: Netpoller, fd: int, turn: Callable[[], float | None], name: str) -> None:
        self._netpoller = netpoller
        self.fd = fd
        self.turn = turn
        self.name = name
        self.state = _PARKED
        self.closed = False
        self.due: float | None = None  # the deadline of this watch's entry in the timer heap
        self.registered = False  # in the selector (only the netpoller thread reads or changes it)

    def wake(self) -> None:
        """Run a turn soon, even if no byte comes (another thread asked for a close); from any thread."""
        self._netpoller._wake(self)

    def close(self) -> None:
        """The connection is over: no more turns; from any thread, idempotent."""
        self._netpoller._close(self)


class Netpoller:
    """Parked connections in one selector, and the worker threads that run their turns."""

    def __init__(self, workers: int = WORKERS, max_workers: int = MAX_WORKERS) -> None:
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._wakeup_fd = -1
        self._thread: threading.Thread | None = None
        self._watched = 0  # watches not yet closed: the netpoller thread runs while there are any
        self._to_park: list[tuple[Watch, float | None]] = []  # for the netpoller thread to register
        self._woken: list[Watch] = []  # parked watches another thread woke
        self._timers: list[tuple[float, int, Watch]] = []  # (due, order, watch), a heap
        self._order = itertools.count()
        self._ringing = False  # the wake-up descriptor is readable: no second write needed
        self._workers = _Workers(workers, max_workers)

    def watch(self, fd: int, turn: Callable[[], float | None], name: str) -> Watch:
        """Watch the socket ``fd``: ``turn()`` runs in a worker from the first :meth:`Watch.wake` on.

        ``turn`` must never wait for the peer: it handles what has come and
        returns when it must run again (a ``time.monotonic()``), or None to run
        only when bytes come; ``name`` is the worker thread's name meanwhile.
        """
        watch = Watch(self, fd, turn, name)
        with self._lock:
            self._watched += 1
            if self._thread is None:
                self._start_locked()
        return watch

    def running(self) -> bool:
        """True while the netpoller thread runs (something is watched)."""
        with self._lock:
            return self._thread is not None

    # --- any thread -------------------------------------------------------------------

    def _wake(self, watch: Watch) -> None:
        with self._lock:
            if watch.state == _RUNNING:
                watch.state = _RUN_AGAIN  # the worker runs another turn before parking it
            elif watch.state == _PARKED and not watch.closed:
                self._woken.append(watch)
                self._ring_locked()

    def _close(self, watch: Watch) -> None:
        with self._lock:
            if not watch.closed:
                watch.closed = True
                if watch.state == _PARKED:  # the netpoller thread forgets it; a worker would after its turn
                    self._woken.append(watch)
                    self._ring_locked()

    def _ring_locked(self) -> None:
        if not self._ringing and self._wakeup_fd >= 0:
            self._ringing = True
            os.write(self._wakeup_fd, (1).to_bytes(8, "little"))

    # --- the worker threads -----------------------------------------------------------

    def _run(self, watch: Watch) -> None:
        """One or more turns of ``watch`` (in a worker), then park it or forget it."""
        thread = threading.current_thread()
        named = thread.name
        while True:
            thread.name = watch.name
            try:
                due = watch.turn()
            except BaseException:  # the turn's own finally has released what it held
                log.exception("%s: a turn failed", watch.name)
                with self._lock:
                    watch.closed = True
                due = None
            finally:
                thread.name = named
            with self._lock:
                if watch.closed:
                    watch.state = _GONE
                    self._watched -= 1
                    if not self._watched:
                        self._ring_locked()  # the netpoller thread ends
                    return
                if watch.state == _RUN_AGAIN:
                    watch.state = _RUNNING
                    continue
                watch.state = _PARKED
                self._to_park.append((watch, due))
                self._ring_locked()
                return

    # --- the netpoller thread ---------------------------------------------------------

    def _start_locked(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wakeup_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wakeup_fd, selectors.EVENT_READ)
        # Daemon: a process may exit with connections still watched.
        self._thread = threading.Thread(target=self._poll, name="netpoller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while True:
                with self._lock:
                    if not self._watched:
                        return
                events = selector.select(self._timeout())
                with self._lock:
                    if self._ringing:
                        self._ringing = False
                        os.read(self._wakeup_fd, 8)
                    to_park, self._to_park = self._to_park, []
                    woken, self._woken = self._woken, []
                for watch, due in to_park:
                    self._park(selector, watch, due)
                ready = [key.data for key, _ in events if key.data is not None]
                self._take(selector, [*ready, *woken, *self._expired()])
                self._workers.start_if_stalled()
        finally:
            with self._lock:
                self._thread = None
                selector.close()
                os.close(self._wakeup_fd)
                self._selector, self._wakeup_fd, self._ringing = None, -1, False
                self._timers = []
                if self._watched:  # a watch came while we were ending: a new thread for it
                    self._start_locked()

    def _take(self, selector: selectors.BaseSelector, ready: list[Watch]) -> None:
        """Parked watches that must run (bytes, a deadline, a wake-up) to a worker; closed ones forgotten."""
        taken = []
        with self._lock:
            for watch in ready:
                if watch.state == _PARKED:  # once: a watch may be ready for several reasons
                    watch.state = _GONE if watch.closed else _RUNNING
                    self._watched -= watch.closed
                    taken.append(watch)
        for watch in taken:
            if watch.registered:
                selector.unregister(watch.fd)
                watch.registered = False
            if watch.state != _GONE:
                self._workers.submit(self._run, watch)

    def _park(self, selector: selectors.BaseSelector, watch: Watch, due: float | None) -> None:
        if not watch.registered:
            selector.register(watch.fd, selectors.EVENT_READ, watch)
            watch.registered = True
        if due is not None and due != watch.due:  # the same deadline as before: its entry is still there
            heapq.heappush(self._timers, (due, next(self._order), watch))
        watch.due = due

    def _expired(self) -> list[Watch]:
        """Parked watches whose deadline has come (entries for deadlines since replaced are dropped)."""
        now = time.monotonic()
        expired = []
        while self._timers and self._timers[0][0] <= now:
            due, _, watch = heapq.heappop(self._timers)
            if watch.due == due:
                watch.due = None
                expired.append(watch)
        return expired

    def _timeout(self) -> float | None:
        timeout = None
        while self._timers and self._timers[0][2].due != self._timers[0][0]:
            heapq.heappop(self._timers)  # replaced, or fired already
        if self._timers:
            timeout = max(self._timers[0][0] - time.monotonic(), 0)
        if self._workers.waiting():
            timeout = STALL if timeout is None else min(timeout, STALL)
        return timeout


class _Workers:
    """The threads that run turns: a few at once, more while turns are stuck (see the module's doc)."""

    def __init__(self, workers: int, most: int) -> None:
        self._workers = workers
        self._most = most
        self._jobs: collections.deque[tuple[Callable[[Watch], None], Watch]] = collections.deque()
        self._changed = threading.Condition()
        self._threads = 0
        self._idle = 0
        self._taken = time.monotonic()  # when a worker last took a job
        self._names = itertools.count(1)

    def submit(self, run: Callable[[Watch], None], watch: Watch) -> None:
        with self._changed:
            self._jobs.append((run, watch))
            if len(self._jobs) > self._idle and self._threads < self._workers:
                self._start_locked()
            self._changed.notify()

    def waiting(self) -> bool:
        with self._changed:
            return bool(self._jobs)

    def start_if_stalled(self) -> None:
        """One more worker if turns wait and none was taken for STALL seconds."""
        with self._changed:
            stalled = self._jobs and time.monotonic() - self._taken >= STALL
            if stalled and self._threads < self._most:
                self._taken = time.monotonic()  # the next one only after another STALL
                self._start_locked()

    def _start_locked(self) -> None:
        name = f"netpoller-worker-{next(self._names)}"
        try:
            threading.Thread(target=self._work, name=name, daemon=True).start()
        except RuntimeError as error:  # "can't start new thread": the workers there are go on
            log.error("no new netpoller worker: %s (%d running)", error, self._threads)
            return
        self._threads += 1

    def _work(self) -> None:
        with self._changed:
            while True:
                if not self._jobs:
                    self._idle += 1
                    self._changed.wait_for(lambda: bool(self._jobs), IDLE)
                    self._idle -= 1
                    if not self._jobs:
                        self._threads -= 1
                        return
                run, watch = self._jobs.popleft()
                self._taken = time.monotonic()
                self._changed.release()
                try:
                    run(watch)
                finally:
                    self._changed.acquire()


#: The process's netpoller (its thread runs only while something is watched).
netpoller = Netpoller()
