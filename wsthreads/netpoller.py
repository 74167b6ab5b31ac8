"""Go's netpoller, in threads: connections with nothing to read wait in one poller, not a thread each.

A goroutine blocked in a read costs a few KiB and no OS thread: the Go
runtime *parks* it on its netpoller (epoll) and runs it again when bytes
arrive. Here a connection waiting for its peer is parked the same way: its
socket is registered in one epoll, with the time by which it must run again
(a ping, a close deadline). When bytes arrive, that time comes, or another
thread :meth:`Watch.wake` s it (a close), a worker thread takes it for one
*turn*: the connection reads what came, handles it (your ``on_message``
runs there) and does what is due, without waiting for the peer, and says
when it must run again; then it is parked again. One thread at a time per
connection, so its messages stay in order and ``on_message`` never runs
twice at once for it.

Go has no netpoller thread: a thread with nothing to run polls the epoll
itself and runs what it finds. The workers here do the same: one of them
waits in epoll and runs the turns it found, one after another, in the same
thread. Under the GIL that is the fastest way, as long as turns are quick:
handing each one to another thread costs a switch per message. When a turn
is slow (:data:`SLOW_TURN`: your ``on_message`` waiting on a database, a
write to a slow peer), the worker leaves the turns it has not begun to
other workers, up to :data:`WORKERS` at once. And like Go's monitor
(``sysmon``), which starts another thread when one blocks in a system call
for too long, the ``netpoller`` thread watches the workers: a turn running
for :data:`STALL` seconds is stuck, its worker no longer counts against
:data:`WORKERS`, and more start, up to :data:`MAX_WORKERS`. A worker idle for
:data:`IDLE` seconds ends, and the ``netpoller`` thread runs only while
something is watched.

Every state change is under one lock; one thread at a time polls the epoll.
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

#: Workers running turns at once when turns are slow (Go: GOMAXPROCS): a few, for two cores and one GIL.
WORKERS = 4
#: The most worker threads: each beyond WORKERS stands in for a turn blocked for STALL seconds.
MAX_WORKERS = 1024
#: Seconds after which a running turn is stuck: its worker no longer counts against WORKERS.
STALL = 0.05
#: Seconds a turn may take before the worker running it leaves the turns waiting behind it to others.
SLOW_TURN = 0.002
#: Seconds an idle worker waits for a turn before it ends.
IDLE = 5.0

# A watch's states: waiting in epoll; queued for or in a worker; woken while in a
# worker; forgotten (closed).
_PARKED, _RUNNING, _RUN_AGAIN, _GONE = range(4)


class Watch:
    """One connection's place in the netpoller; made by :meth:`Netpoller.watch`.

    It is parked until the first :meth:`wake`, in epoll from its first turn
    on, or from :meth:`park`. Its owner (the connection) calls :meth:`close`
    before it closes its socket, in its last turn: the descriptor must leave
    epoll before its number can be reused.
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

    def park(self, due: float | None) -> None:
        """Park it without a first turn: nothing has come yet, and nothing is due before ``due``.

        A no-op once woken: that turn parks it.
        """
        self._netpoller._park(self, due)

    def close(self) -> None:
        """The connection is over: no turn is taken after this (one under way ends as it will);
        from any thread, idempotent."""
        self._netpoller._close(self)


class Netpoller:
    """Parked connections in one epoll, and the worker threads that poll it and run their turns.

    A parked socket is armed once (``EPOLLONESHOT``): its first event disarms
    it, so one event gives it to one worker, and the worker re-arms it after
    the turn (``epoll_ctl`` may be called from any thread).
    """

    def __init__(self, workers: int = WORKERS, max_workers: int = MAX_WORKERS) -> None:
        self._lock = threading.Lock()
        self._turns_wait = threading.Condition(self._lock)  # idle workers wait here
        self._stalls = threading.Condition(self._lock)  # the netpoller thread waits here
        self._epoll: select.epoll | None = None
        self._wakeup_fd = -1
        self._thread: threading.Thread | None = None  # the monitor: runs while there are watches
        self._watches: dict[int, Watch] = {}  # by descriptor
        self._timers: list[tuple[float, int, Watch]] = []  # (due, order, watch), a heap
        self._order = itertools.count()
        self._jobs: collections.deque[Watch] = collections.deque()  # watches whose turn waits for a worker
        self._polling = False  # a worker waits in epoll
        self._waking_at: float | None = None  # when its wait ends (None: on an event)
        self._ringing = False  # the wake-up descriptor is readable: no second write needed
        self._workers = workers
        self._most = max_workers
        self._threads = 0
        self._idle = 0  # workers waiting in _turns_wait
        self._turns: dict[int, float] = {}  # the turns running now: when each began, by worker
        self._monitor_asleep = False  # the netpoller thread waits until turns run
        self._names = itertools.count(1)

    def watch(self, fd: int, turn: Callable[[], float | None], name: str) -> Watch:
        """Watch the socket ``fd``: ``turn()`` runs in a worker from the first :meth:`Watch.wake` on.

        ``turn`` must never wait for the peer: it handles what has come and
        returns when it must run again (a ``time.monotonic()``), or None to run
        only when bytes come; ``name`` is the worker thread's name meanwhile.
        """
        watch = Watch(self, fd, turn, name)
        with self._lock:
            if self._epoll is None:
                self._open_locked()
            self._watches[fd] = watch
        return watch

    def running(self) -> bool:
        """True while something is watched (the netpoller thread runs then)."""
        with self._lock:
            return self._epoll is not None

    # --- any thread -------------------------------------------------------------------

    def _wake(self, watch: Watch) -> None:
        with self._lock:
            if watch.state == _RUNNING:
                watch.state = _RUN_AGAIN  # the worker runs another turn before parking it
                return
            if watch.state != _PARKED:
                return
            watch.state = _RUNNING  # still armed: an event meanwhile finds it running, and is dropped
            self._jobs.append(watch)
            self._hand_out_locked()

    def _park(self, watch: Watch, due: float | None) -> None:
        with self._lock:
            if watch.state == _PARKED and not watch.registered and not watch.closed:
                self._arm_locked(watch, due)
                if not (self._polling or self._turns):  # else a worker polls now, or after its turn
                    self._hand_out_locked()

    def _close(self, watch: Watch) -> None:
        with self._lock:
            if not watch.closed:
                self._close_locked(watch)

    def _close_locked(self, watch: Watch) -> None:
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
        self._close_if_unwatched_locked()

    def _hand_out_locked(self) -> None:
        """A turn waits (or nobody polls): an idle worker takes it, or the polling one, or a new
        one (up to WORKERS).

        If every worker is running a turn, the first to end takes it (or, if
        none ends, one that the netpoller thread starts at a stall).
        """
        if self._idle:
            self._turns_wait.notify()
        elif self._polling:
            self._ring_locked()
        elif self._threads < self._workers:
            self._start_worker_locked()

    def _ring_locked(self) -> None:
        """Make the worker waiting in epoll return: there is a turn for it, or a sooner deadline."""
        if not self._ringing and self._wakeup_fd >= 0:
            self._ringing = True
            os.write(self._wakeup_fd, (1).to_bytes(8, "little"))

    # --- the workers --------------------------------------------------------------------

    def _start_worker_locked(self) -> None:
        name = f"netpoller-worker-{next(self._names)}"
        try:
            threading.Thread(target=self._work, name=name, daemon=True).start()
        except RuntimeError as error:  # "can't start new thread": the workers there are go on
            log.error("no new netpoller worker: %s (%d running)", error, self._threads)
            return
        self._threads += 1

    def _work(self) -> None:
        """A worker: run the turns that wait, else poll if nobody does, else wait for a turn."""
        with self._lock:
            try:
                while True:
                    if self._jobs:
                        self._take_turn_locked()
                    elif self._epoll is not None and not self._polling:
                        self._poll_locked()
                    elif not self._wait_locked():
                        return
            finally:
                self._threads -= 1

    def _wait_locked(self) -> bool:
        """Wait for a turn (at most IDLE seconds); False if none came: the worker ends."""
        self._idle += 1
        try:
            woken = self._turns_wait.wait(IDLE)
        finally:
            self._idle -= 1
        return woken or bool(self._jobs)

    def _take_turn_locked(self) -> None:
        """Run the first waiting turn (the lock released meanwhile); if it was slow, share the rest."""
        watch = self._jobs.popleft()
        if watch.closed:  # closed by another thread while it waited: no turn
            watch.state = _GONE
            return
        worker = threading.get_ident()
        self._turns[worker] = started = time.monotonic()
        if self._monitor_asleep:
            self._monitor_asleep = False
            self._stalls.notify()  # turns run: the netpoller thread watches for a stall
        self._lock.release()
        try:
            self._run(watch)
        finally:
            self._lock.acquire()
            del self._turns[worker]
        if self._jobs and time.monotonic() - started >= SLOW_TURN:
            self._hand_out_locked()

    def _run(self, watch: Watch) -> None:
        """One or more turns of ``watch`` (in a worker, without the lock), then park it again."""
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
                self._arm_locked(watch, due)
                return

    def _arm_locked(self, watch: Watch, due: float | None) -> None:
        """Wait for the parked ``watch``'s bytes in epoll, and for its deadline ``due``, if any."""
        assert self._epoll is not None
        try:
            if watch.registered:
                self._epoll.modify(watch.fd, select.EPOLLIN | select.EPOLLONESHOT)
            else:
                self._epoll.register(watch.fd, select.EPOLLIN | select.EPOLLONESHOT)
                watch.registered = True
        except OSError as error:  # its socket was closed under it, without close(): a bug of its owner's
            log.error("%s: its socket cannot be watched (%s): forgotten", watch.name, error)
            watch.registered = False
            watch.state = _GONE
            self._close_locked(watch)
            return
        if due is not None and due != watch.due:  # the same deadline as before: its entry is there
            heapq.heappush(self._timers, (due, next(self._order), watch))
            if self._polling and (self._waking_at is None or due < self._waking_at):
                self._ring_locked()  # sooner than the polling worker would look
        watch.due = due

    def _poll_locked(self) -> None:
        """Wait in epoll (the lock released meanwhile) for bytes, the earliest deadline or a ring;
        queue the turns that are due."""
        epoll = self._epoll
        assert epoll is not None
        self._polling = True
        timeout = self._timeout_locked()
        self._lock.release()
        try:
            events = epoll.poll(-1 if timeout is None else timeout)
        finally:
            self._lock.acquire()
            self._polling = False
        for fd, _ in events:
            watch = self._watches.get(fd)
            if watch is None:  # the wake-up
                self._ringing = False
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wakeup_fd, 8)
            elif watch.state == _PARKED:
                watch.state = _RUNNING
                self._jobs.append(watch)
        self._queue_expired_locked()
        self._close_if_unwatched_locked()

    def _queue_expired_locked(self) -> None:
        """Queue the parked watches whose deadline has come (entries for replaced deadlines are dropped)."""
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            due, _, watch = heapq.heappop(self._timers)
            if watch.due == due:
                watch.due = None
                if watch.state == _PARKED:  # not if its bytes came too: one turn, not two at once
                    watch.state = _RUNNING
                    self._jobs.append(watch)

    def _timeout_locked(self) -> float | None:
        """Seconds to wait in epoll: until the earliest deadline (None: until an event)."""
        while self._timers and self._timers[0][2].due != self._timers[0][0]:
            heapq.heappop(self._timers)  # replaced, or fired already
        self._waking_at = self._timers[0][0] if self._timers else None
        return None if self._waking_at is None else max(self._waking_at - time.monotonic(), 0)

    # --- the epoll's life and the netpoller thread (the monitor) -----------------------

    def _open_locked(self) -> None:
        """The epoll, its wake-up descriptor and the monitor; if one cannot be made (no descriptor,
        "can't start new thread"), none is left open and the error goes to the caller."""
        epoll = select.epoll()
        wakeup_fd = -1
        try:
            wakeup_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            epoll.register(wakeup_fd, select.EPOLLIN)
            # Daemon: a process may exit with connections still watched.
            monitor = threading.Thread(target=self._monitor, args=(epoll,), name="netpoller", daemon=True)
            self._epoll, self._wakeup_fd = epoll, wakeup_fd  # the monitor's first look reads them
            monitor.start()
        except BaseException:
            epoll.close()
            if wakeup_fd != -1:
                os.close(wakeup_fd)
            self._epoll, self._wakeup_fd = None, -1
            raise
        self._thread = monitor

    def _close_if_unwatched_locked(self) -> None:
        """With nothing watched, close the epoll (after its poll, if a worker is in it); the monitor ends."""
        if self._watches or self._epoll is None:
            return
        if self._polling:
            self._ring_locked()  # the polling worker closes it when it returns
            return
        self._epoll.close()
        os.close(self._wakeup_fd)
        self._epoll, self._wakeup_fd, self._ringing, self._thread = None, -1, False, None
        self._timers = []
        self._stalls.notify()

    def _monitor(self, epoll: select.epoll) -> None:
        """Go's sysmon: while turns run, and others wait or nobody polls, it looks every STALL
        seconds. A turn running that long is stuck, and its worker does not count against
        WORKERS (Go: a thread blocked in a system call gives up its processor): more start."""
        with self._lock:
            while self._epoll is epoll:  # a newer epoll has its own monitor
                if not self._stalled_locked():
                    self._monitor_asleep = True
                    self._stalls.wait()
                    continue
                self._stalls.wait(STALL)
                if self._epoll is not epoll or not self._stalled_locked():
                    continue
                since = time.monotonic() - STALL
                stuck = sum(started <= since for started in self._turns.values())
                if self._idle:
                    self._turns_wait.notify()
                elif stuck:
                    self._start_workers_locked(stuck)

    def _start_workers_locked(self, stuck: int) -> None:
        """As many workers as it takes to have WORKERS that are not stuck; when every one is stuck,
        as many again (turns found together often block together: a thread each, as in Go, soon),
        but no more than the turns waiting, and one to poll."""
        free = self._threads - stuck
        wanted = self._workers - free if free > 0 else max(self._workers, stuck)
        wanted = min(wanted, len(self._jobs) + (not self._polling), self._most - self._threads)
        for _ in range(wanted):
            self._start_worker_locked()

    def _stalled_locked(self) -> bool:
        """Turns run while others wait or nobody polls: maybe only for now, maybe stuck."""
        return bool(self._turns) and (bool(self._jobs) or not self._polling)


#: The process's netpoller (its threads run only while something is watched, or for IDLE seconds after).
netpoller = Netpoller()
