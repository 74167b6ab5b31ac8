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
import contextlib
import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections.abc import Callable

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
    calls :meth:`close` before it closes its socket, in its last turn: the
    descriptor must leave epoll before its number can be reused.
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
        # In epoll: from its first parking on. Not before: epoll reports a hang-up even for
        # a descriptor that asks for no event, and would report it again and again.
        self.registered = False

    def wake(self) -> None:
        """Run a turn soon, even if no byte comes (another thread asked for a close); from any thread."""
        self._netpoller._wake(self)

    def close(self) -> None:
        """The connection is over: no more turns; from any thread, idempotent."""
        self._netpoller._close(self)


class Netpoller:
    """Parked connections in one epoll, and the worker threads that run their turns.

    A parked socket is armed once (``EPOLLONESHOT``): its first event disarms
    it, so one event hands it to one worker, and the worker re-arms it after
    the turn, itself (``epoll_ctl`` may be called from any thread). The
    ``netpoller`` thread only waits: for events, the earliest deadline, and
    stalled workers.
    """

    def __init__(self, workers: int = WORKERS, max_workers: int = MAX_WORKERS) -> None:
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._wakeup_fd = -1
        self._thread: threading.Thread | None = None
        self._watches: dict[int, Watch] = {}  # by descriptor: the thread runs while there are any
        self._timers: list[tuple[float, int, Watch]] = []  # (due, order, watch), a heap
        self._order = itertools.count()
        self._waking_at: float | None = None  # when the netpoller thread's wait ends (None: on an event)
        self._ringing = False  # the wake-up descriptor is readable: no second write needed
        self._workers = _Workers(workers, max_workers, self._run, self._ring)

    def watch(self, fd: int, turn: Callable[[], float | None], name: str) -> Watch:
        """Watch the socket ``fd``: ``turn()`` runs in a worker from the first :meth:`Watch.wake` on.

        ``turn`` must never wait for the peer: it handles what has come and
        returns when it must run again (a ``time.monotonic()``), or None to run
        only when bytes come; ``name`` is the worker thread's name meanwhile.
        """
        watch = Watch(self, fd, turn, name)
        with self._lock:
            if self._thread is None:
                self._start_locked()
            self._watches[fd] = watch
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
                return
            if watch.state != _PARKED:
                return
            watch.state = _RUNNING  # still armed: an event meanwhile finds it running, and is dropped
        self._workers.submit(watch)

    def _close(self, watch: Watch) -> None:
        with self._lock:
            if watch.closed:
                return
            watch.closed = True
            if watch.state == _PARKED:
                watch.state = _GONE
            if self._watches.get(watch.fd) is watch:
                del self._watches[watch.fd]
            if watch.registered:
                watch.registered = False
                assert self._epoll is not None
                with contextlib.suppress(OSError):  # closed already: epoll forgot it itself
                    self._epoll.unregister(watch.fd)
            if not self._watches:
                self._ring_locked()  # the netpoller thread ends

    def _ring(self) -> None:
        """Wake the netpoller thread (a turn waits for a worker): not from itself, which looks anyway."""
        if threading.current_thread() is not self._thread:
            with self._lock:
                self._ring_locked()

    def _ring_locked(self) -> None:
        if not self._ringing and self._wakeup_fd >= 0:
            self._ringing = True
            os.write(self._wakeup_fd, (1).to_bytes(8, "little"))

    # --- the worker threads -----------------------------------------------------------

    def _run(self, watch: Watch) -> None:
        """One or more turns of ``watch`` (in a worker), then park it again."""
        thread = threading.current_thread()
        named = thread.name
        while True:
            thread.name = watch.name
            try:
                due = watch.turn()
            except BaseException:  # the turn's own finally has released what it held
                log.exception("%s: a turn failed", watch.name)
                watch.close()
                due = None
            finally:
                thread.name = named
            with self._lock:
                if watch.closed:
                    watch.state = _GONE
                    return
                if watch.state == _RUN_AGAIN:
                    watch.state = _RUNNING
                    continue
                watch.state = _PARKED
                if due is not None and due != watch.due:  # the same deadline as before: its entry is there
                    heapq.heappush(self._timers, (due, next(self._order), watch))
                    if self._waking_at is None or due < self._waking_at:
                        self._ring_locked()  # sooner than the netpoller thread would look
                watch.due = due
                assert self._epoll is not None
                if watch.registered:
                    self._epoll.modify(watch.fd, select.EPOLLIN | select.EPOLLONESHOT)
                else:
                    self._epoll.register(watch.fd, select.EPOLLIN | select.EPOLLONESHOT)
                    watch.registered = True
                return

    # --- the netpoller thread ---------------------------------------------------------

    def _start_locked(self) -> None:
        self._epoll = select.epoll()
        self._wakeup_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wakeup_fd, select.EPOLLIN)
        # Daemon: a process may exit with connections still watched.
        self._thread = threading.Thread(target=self._poll, name="netpoller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        while True:
            with self._lock:
                if not self._watches:  # decided under the lock: a watch() from now on starts a new thread
                    self._stop_locked()
                    return
                timeout = self._timeout_locked()
            events = epoll.poll(-1 if timeout is None else timeout)
            ready = []
            with self._lock:
                for fd, _ in events:
                    watch = self._watches.get(fd)
                    if watch is None:  # the wake-up
                        self._ringing = False
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wakeup_fd, 8)
                    elif watch.state == _PARKED:
                        watch.state = _RUNNING
                        ready.append(watch)
                ready.extend(self._expired_locked())
            for watch in ready:
                self._workers.submit(watch)
            self._workers.start_if_stalled()

    def _stop_locked(self) -> None:
        assert self._epoll is not None
        self._epoll.close()
        os.close(self._wakeup_fd)
        self._epoll, self._wakeup_fd, self._ringing, self._thread = None, -1, False, None
        self._timers = []

    def _expired_locked(self) -> list[Watch]:
        """Parked watches whose deadline has come (entries for deadlines since replaced are dropped)."""
        now = time.monotonic()
        expired = []
        while self._timers and self._timers[0][0] <= now:
            due, _, watch = heapq.heappop(self._timers)
            if watch.due == due:
                watch.due = None
                if watch.state == _PARKED:  # not if its bytes came too: one turn, not two at once
                    watch.state = _RUNNING
                    expired.append(watch)
        return expired

    def _timeout_locked(self) -> float | None:
        """Seconds to wait: until the earliest deadline, or STALL while turns wait for a worker."""
        while self._timers and self._timers[0][2].due != self._timers[0][0]:
            heapq.heappop(self._timers)  # replaced, or fired already
        self._waking_at = self._timers[0][0] if self._timers else None
        if self._workers.waiting():
            stall = time.monotonic() + STALL
            self._waking_at = stall if self._waking_at is None else min(self._waking_at, stall)
        return None if self._waking_at is None else max(self._waking_at - time.monotonic(), 0)


class _Workers:
    """The threads that run turns: a few at once, more while turns are stuck (see the module's doc)."""

    def __init__(
        self, workers: int, most: int, run: Callable[[Watch], None], waiting: Callable[[], None]
    ) -> None:
        self._workers = workers
        self._most = most
        self._run = run  # a watch's turns
        self._on_waiting = waiting  # a turn waits for a worker: the netpoller thread must watch for a stall
        self._jobs: collections.deque[Watch] = collections.deque()
        self._changed = threading.Condition()
        self._threads = 0
        self._idle = 0
        self._taken = time.monotonic()  # when a worker last took a job
        self._names = itertools.count(1)

    def submit(self, watch: Watch) -> None:
        with self._changed:
            self._jobs.append(watch)
            if len(self._jobs) > self._idle and self._threads < self._workers:
                self._start_locked()
            waits = len(self._jobs) > self._idle
            self._changed.notify()
        if waits:
            self._on_waiting()

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
                watch = self._jobs.popleft()
                self._taken = time.monotonic()
                self._changed.release()
                try:
                    self._run(watch)
                finally:
                    self._changed.acquire()


#: The process's netpoller (its thread runs only while something is watched).
netpoller = Netpoller()
