"""The two bounded queues between a connection and your code: messages in, frames out.

* :class:`Inbox` holds received messages for code that pulls them
  (``recv(timeout)``, ``for message in conn``). It is bounded: when it is
  full the reader waits for room, stops reading, and TCP tells the peer to
  slow down (websockets' ``max_queue``). A close or an abort ends that wait.
* :class:`Outbox` holds frames for :meth:`~wsthreads.connection.Connection.send_nowait`
  and broadcasts that could not leave at once from the sending thread (the
  socket was busy or full), written by the connection's own writer thread,
  so the caller never waits for the peer. It is bounded in bytes; a peer that
  does not keep up meets the overflow policy (:data:`OVERFLOW_CLOSE` or :data:`OVERFLOW_DROP_OLDEST`).
  The writer starts when there is something to write and ends after
  :data:`WRITER_IDLE` seconds without, so a connection that is never
  broadcast to costs no thread.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator, Sized
from typing import Generic, TypeVar

T = TypeVar("T")
#: What an outbox holds: anything with a length in bytes (a frame, or a message to frame later).
F = TypeVar("F", bound=Sized)

#: Overflow policy: close the connection with 1013 (the client may come back later).
OVERFLOW_CLOSE = "close"
#: Overflow policy: drop the oldest queued messages to make room.
OVERFLOW_DROP_OLDEST = "drop-oldest"
OVERFLOW_POLICIES = (OVERFLOW_CLOSE, OVERFLOW_DROP_OLDEST)
#: Seconds a writer waits for more frames before its thread ends.
WRITER_IDLE = 5.0
#: While messages keep coming, a writer pauses between two writes for this
#: many seconds per writer alive in the process (at most MAX_CORK): together
#: the writers then wake at most about 1 / CORK_PER_WRITER times a second.
CORK_PER_WRITER = 0.0002
MAX_CORK = 0.25


def check_policy(policy: str) -> None:
    """ValueError unless ``policy`` is one of :data:`OVERFLOW_POLICIES`: the one check, for both sides."""
    if policy not in OVERFLOW_POLICIES:
        raise ValueError(f"on_overflow must be one of {', '.join(OVERFLOW_POLICIES)}: {policy!r}")


class Inbox(queue.Queue, Generic[T]):  # type: ignore[type-arg]
    """A :class:`queue.Queue` of received messages that knows when no more will come.

    The reader puts with :meth:`deliver` (waiting for room while the queue
    is full, until :meth:`stop_waiting`); :meth:`end` says the session is
    over, and from then on :meth:`recv` and ``get()`` raise ``ended`` once
    the queue is empty. ``get_nowait()`` and ``qsize()`` work as on any queue.
    """

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        #: What :meth:`recv` raises once the queue is empty and the session over.
        self.ended: BaseException | None = None
        self._wait_for_room = True

    def deliver(self, item: T) -> None:
        """Queue ``item`` (the reader): wait while full, unless told to stop waiting."""
        with self.not_full:
            while self._wait_for_room and 0 < self.maxsize <= self._qsize():
                self.not_full.wait()
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def stop_waiting(self) -> None:
        """From now on :meth:`deliver` never waits: the session is closing, nothing may hold the reader."""
        with self.mutex:
            self._wait_for_room = False
            self.not_full.notify_all()

    def end(self, error: BaseException) -> None:
        """No more items will come; :meth:`recv` raises ``error`` once the rest is taken."""
        with self.mutex:
            self._wait_for_room = False
            self.ended = error
            self.not_full.notify_all()
            self.not_empty.notify_all()

    def until(self, end: type[BaseException]) -> Iterator[T]:
        """Every item, until :meth:`recv` raises an ``end`` (any other error propagates)."""
        while True:
            try:
                yield self.recv()
            except end:
                return

    def recv(self, timeout: float | None = None) -> T:
        """The next item; ``ended`` once there are no more; TimeoutError after ``timeout`` seconds."""
        try:
            return self.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message within {timeout:g} s") from None

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """``queue.Queue.get``, knowing the end: once the session is over and nothing is left, it
        raises ``ended`` (``Closed``) at once, where a plain queue would wait out ``timeout``
        and raise ``queue.Empty``. ``get_nowait()`` too."""
        with self.not_empty:
            if block and not self.not_empty.wait_for(
                lambda: self._qsize() or self.ended is not None, timeout
            ):
                raise queue.Empty
            if not self._qsize():
                if self.ended is None:
                    raise queue.Empty
                raise self.ended
            item: T = self._get()
            self.not_full.notify()
            return item


#: Writer threads alive in this process (read without the lock: an estimate is enough).
_alive = [0]
_alive_lock = threading.Lock()


class Outbox(Generic[F]):
    """Frames waiting for one connection's writer thread, at most ``limit`` bytes of them.

    Frames leave only through :meth:`drain`, which whoever writes calls with
    the connection's wire lock held: the writer thread, a ``send()`` (what
    waits goes before its message), or the reader before its close frame.
    So a frame is never taken by one and written after the other's close
    frame. The writer writes everything waiting at once, then
    pauses (it "corks", see :data:`CORK_PER_WRITER`), so that what comes
    meanwhile goes out in its next write. Under the GIL, hundreds of threads
    that each wake once per message spend the time handing the interpreter
    to each other: 1000 back-to-back broadcasts to 500 connections took 29 s
    with writers woken per message, 2.0 s corked (1000 connections: 9 s).
    A message after a quiet spell goes out at once.

    Args:
        write: writes what waits (it calls :meth:`drain` under the wire lock),
            bounded by the write deadline; raises once the connection is
            closing or the peer is dropped.
        limit: bytes that may wait: a frame that comes when more than this
            waits meets the ``policy`` (so at most ``limit`` plus one frame waits).
        policy: :data:`OVERFLOW_CLOSE` or :data:`OVERFLOW_DROP_OLDEST`.
        overflow: called when the policy is "close" and the limit is hit, with
            the bytes that were waiting.
        name: the writer thread's name.
    """

    def __init__(
        self,
        write: Callable[[], None],
        *,
        limit: int,
        policy: str,
        overflow: Callable[[int], None],
        name: str,
    ) -> None:
        check_policy(policy)
        self.write = write
        self.limit = limit
        self.policy = policy
        self.overflow = overflow
        self.name = name
        #: Messages dropped under "drop-oldest", in all.
        self.dropped = 0
        self._frames: collections.deque[F] = collections.deque()
        # The unwritten end of a frame whose start is on the wire: it goes out
        # before any other byte, and no policy may drop it (see put_rest).
        self._rest: bytes | memoryview = b""
        self._putting = threading.Lock()  # guards the fields below
        self._waiting = 0  # bytes in _frames
        self._in_flight = 0  # bytes drained and not yet settled: being written (see settled)
        self._writer: threading.Thread | None = None
        self._sealed = False  # no more frames: the connection is closing
        self._stopped = False
        self._lost = False  # frames that were taken were never written, or were discarded
        self._busy = False  # the writer is writing (set and read by it and flush())
        self._ready = threading.Event()  # frames wait: wakes the writer
        self._hurry = threading.Event()  # ends a writer's pause: a stop, or half the limit waiting
        self._drained = threading.Condition()  # flush() waits on it

    @property
    def waiting(self) -> int:
        """Bytes queued and not yet taken to be written."""
        return self._waiting

    @property
    def empty(self) -> bool:
        """Nothing waits: a frame written now does not overtake a queued one."""
        return not self._waiting and not self._frames and not self._rest

    def put(self, frame: F) -> bool:
        """Queue one frame; never blocks. False if not queued (closed, or over the limit under "close")."""
        with self._putting:
            if self._stopped or self._sealed:
                return False
            waiting = self._waiting
            if waiting > self.limit:  # the peer is behind: more than the limit waits already
                if self.policy == OVERFLOW_CLOSE:
                    self._stop_locked()
                    overflowed = True
                else:
                    self._drop_oldest_locked()
                    overflowed = False
            else:
                overflowed = False
            if not overflowed:
                self._frames.append(frame)
                self._waiting += len(frame)
                if self._waiting > self.limit // 2:
                    self._hurry.set()  # a corked writer writes now, before the policy would apply
                self._ready.set()
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name=self.name, daemon=True)
                    self._writer.start()
        if overflowed:
            self.overflow(waiting)
            return False
        return True

    def put_rest(self, rest: bytes | memoryview) -> None:
        """Queue the end of a frame that was cut short by a full socket (under the wire lock).

        It must reach the wire before anything else does, close frame
        included, or the peer would read the next frame's bytes as this
        one's: whoever writes next takes it first (:meth:`take_rest`), and no
        policy, seal or stop discards it; only a cut connection does.
        """
        with self._putting:
            self._rest = rest
            self._waiting += len(rest)
            self._ready.set()
            if self._writer is None and not self._stopped:
                self._writer = threading.Thread(target=self._write_loop, name=self.name, daemon=True)
                self._writer.start()

    def take_rest(self) -> bytes | memoryview:
        """The end of a cut frame, if one waits, for whoever holds the wire lock to write first,
        then :meth:`settled`."""
        with self._putting:
            rest, self._rest = self._rest, b""
            self._waiting -= len(rest)
            self._in_flight += len(rest)
        return rest

    def seal(self) -> None:
        """Take no more frames; what waits still goes out (the reader drains it before its close frame)."""
        with self._putting:
            self._sealed = True

    def drain(self) -> list[F]:
        """Take every frame that waits: for whoever holds the wire lock to write, then :meth:`settled`."""
        with self._putting:
            if self._stopped:
                return []
            frames, self._frames = self._frames, collections.deque()
            self._in_flight += self._waiting - len(self._rest)
            self._waiting = len(self._rest)
        return list(frames)

    def settled(self, size: int, written: bool) -> None:
        """``size`` bytes that :meth:`drain` or :meth:`take_rest` gave are written (or, not
        ``written``, never will be): flush() may now say so.

        Until then flush() waits for them, whoever writes them (the writer thread, a
        ``send()`` that compresses its own message first, the close), stopped or not:
        each is bounded by its deadline.
        """
        with self._putting:
            self._in_flight -= size
            self._lost = self._lost or not written
        with self._drained:
            self._drained.notify_all()

    def stop(self) -> None:
        """Discard the frames that wait and end the writer (it finishes the write it is in, bounded).

        The end of a cut frame stays (see :meth:`put_rest`): a close frame may still follow.
        """
        with self._putting:
            self._stop_locked()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been written (at most ``timeout`` s).

        True if it has; False on timeout, or if the connection ended with
        messages that were never written (still waiting, or cut mid-write).
        Messages dropped under ``drop-oldest`` are counted in :attr:`dropped`.
        """
        with self._drained:
            done = self._drained.wait_for(
                lambda: not self._in_flight and (not (self._waiting or self._busy) or self._stopped), timeout
            )
            return done and not self._lost

    def _drop_oldest_locked(self) -> None:
        while self._frames and self._waiting > self.limit:
            self._waiting -= len(self._frames.popleft())
            self.dropped += 1

    def _stop_locked(self) -> None:
        if not self._stopped:
            # Discarded (a write cut mid-way sets it too); a cut frame's end left
            # behind is lost unless a writer takes it (a close frame's does first).
            self._lost = self._lost or bool(self._frames or self._rest)
        self._stopped = True
        self._frames.clear()
        self._waiting = len(self._rest)
        self._ready.set()
        self._hurry.set()
        with self._drained:
            self._drained.notify_all()

    def _write_loop(self) -> None:
        with _alive_lock:
            _alive[0] += 1
        try:
            while self._wait_for_frames():
                self._busy = True
                self._hurry.clear()  # from here on a put() that fills half the limit ends the cork
                if self._stopped:
                    self._hurry.set()
                try:
                    self.write()
                except Exception:  # the connection is closing or the peer was dropped
                    self._lost = True
                    self.stop()
                self._busy = False
                if not self._waiting:
                    with self._drained:
                        self._drained.notify_all()
                # The cork: what comes meanwhile goes out in the next write, one wake-up later.
                self._hurry.wait(min(CORK_PER_WRITER * _alive[0], MAX_CORK))
        finally:
            self._busy = False
            with self._drained:
                self._drained.notify_all()
            with _alive_lock:
                _alive[0] -= 1

    def _wait_for_frames(self) -> bool:
        """Wait until frames wait (True), or end the writer: stopped, or idle for WRITER_IDLE s."""
        while not self._ready.wait(WRITER_IDLE):
            with self._putting:
                if not self._waiting:  # decided under the lock: a put() from now on starts a writer
                    self._writer = None
                    return False
        self._ready.clear()
        if self._stopped:
            with self._putting:
                self._writer = None
            return False
        return True
