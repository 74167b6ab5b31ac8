"""The two bounded queues between a connection and your code: messages in, frames out.

* :class:`Inbox` holds received messages for code that pulls them
  (``recv(timeout)``, ``for message in conn``). It is bounded: when it is
  full the reader waits for room, stops reading, and TCP tells the peer to
  slow down (websockets' ``max_queue``). A close or an abort ends that wait.
* :class:`Outbox` holds frames for :meth:`~wsthreads.connection.Connection.send_nowait`
  and broadcasts, written by the connection's own writer thread, so the
  caller never waits for the peer. It is bounded in bytes; a peer that does
  not keep up meets the overflow policy (:data:`CLOSE` or :data:`DROP_OLDEST`).
  The writer starts when there is something to write and ends after
  :data:`WRITER_IDLE` seconds without, so a connection that is never
  broadcast to costs no thread.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

#: Overflow policy: close the connection with 1013 (the client may come back later).
CLOSE = "close"
#: Overflow policy: drop the oldest queued messages to make room.
DROP_OLDEST = "drop-oldest"
OVERFLOW_POLICIES = (CLOSE, DROP_OLDEST)
#: Seconds a writer waits for more frames before its thread ends.
WRITER_IDLE = 5.0


class Inbox(queue.Queue, Generic[T]):  # type: ignore[type-arg]
    """A :class:`queue.Queue` of received messages that knows when no more will come.

    The reader puts with :meth:`deliver` (waiting for room while the queue
    is full, until :meth:`stop_waiting`); :meth:`end` says the session is
    over, and from then on :meth:`recv` raises ``ended`` once the queue is
    empty. ``get()``, ``get_nowait()`` and ``qsize()`` work as on any queue.
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

    def recv(self, timeout: float | None = None) -> T:
        """The next item; ``ended`` once there are no more; TimeoutError after ``timeout`` seconds."""
        with self.not_empty:
            if not self.not_empty.wait_for(lambda: self._qsize() or self.ended is not None, timeout):
                raise TimeoutError(f"no message within {timeout:g} s")
            if not self._qsize():
                assert self.ended is not None
                raise self.ended
            item: T = self._get()
            self.not_full.notify()
            return item


class Outbox:
    """Frames waiting for one connection's writer thread, at most ``limit`` bytes of them.

    Args:
        write: writes one buffer to the peer, bounded by the write deadline;
            raises once the connection is closing or the peer is dropped.
        limit: bytes that may wait; beyond it the ``policy`` applies.
        policy: :data:`CLOSE` or :data:`DROP_OLDEST`.
        overflow: called (outside the lock) when the policy is CLOSE and the
            limit is hit, with the bytes that were waiting.
        name: the writer thread's name.
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        limit: int,
        policy: str,
        overflow: Callable[[int], None],
        name: str,
    ) -> None:
        if policy not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow policy must be one of {', '.join(OVERFLOW_POLICIES)}: {policy!r}")
        self.write = write
        self.limit = limit
        self.policy = policy
        self.overflow = overflow
        self.name = name
        #: Messages dropped under DROP_OLDEST, in all.
        self.dropped = 0
        self._frames: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._changed = threading.Condition()  # guards the fields below and the two above
        self._writing = False  # a frame has been taken and is being written
        self._writer: threading.Thread | None = None
        self._stopped = False

    def put(self, frame: bytes) -> bool:
        """Queue one frame; never blocks. False if it was not queued (closed, or overflow under CLOSE)."""
        with self._changed:
            if self._stopped:
                return False
            if self._size + len(frame) > self.limit and self._frames:
                if self.policy == CLOSE:
                    waiting = self._size
                    self._stop_locked()
                    overflowed = True
                else:
                    while self._frames and self._size + len(frame) > self.limit:
                        self._size -= len(self._frames.popleft())
                        self.dropped += 1
                    overflowed = False
            else:
                overflowed = False
            if not overflowed:
                self._frames.append(frame)
                self._size += len(frame)
                self._changed.notify()
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name=self.name, daemon=True)
                    self._writer.start()
        if overflowed:
            self.overflow(waiting)
            return False
        return True

    def stop(self) -> None:
        """Discard what waits and end the writer (it finishes the write it is in, bounded)."""
        with self._changed:
            self._stop_locked()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been written (at most ``timeout`` s); True if it has."""
        with self._changed:
            return self._changed.wait_for(lambda: not (self._frames or self._writing), timeout)

    @property
    def writer(self) -> threading.Thread | None:
        """The writer thread, while there is one."""
        with self._changed:
            return self._writer

    def _stop_locked(self) -> None:
        self._stopped = True
        self._frames.clear()
        self._size = 0
        self._changed.notify_all()

    def _write_loop(self) -> None:
        try:
            while True:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()  # flush() waiters
                    self._changed.wait_for(lambda: self._frames or self._stopped, WRITER_IDLE)
                    if self._stopped or not self._frames:
                        # Decided under the lock: a put() from now on starts a new writer.
                        self._writer = None
                        return
                    batch = b"".join(self._frames)  # one write for everything waiting
                    self._frames.clear()
                    self._size = 0
                    self._writing = True
                try:
                    self.write(batch)
                except Exception:  # the connection is closing or the peer was dropped
                    self.stop()
        finally:
            with self._changed:
                self._writing = False
                if self._writer is threading.current_thread():
                    self._writer = None
                self._changed.notify_all()
