"""The threads that serve requests, in both servers: a few at once, reused, more for sessions that keep one.

Our Werkzeug server hands each accepted connection to :class:`RequestThreads`;
our gunicorn worker uses them as gthread's pool (:class:`RequestExecutor`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

log = logging.getLogger("wsthreads.server")

#: Request threads serving requests at once, besides those held by sessions (as fast as
#: more, measured: docs/performance.md, "Where the constants come from").
REQUEST_THREADS = 16
#: Seconds with connections waiting and none taken before every waiting one gets a thread:
#: well above the switch interval the programs set (0.05 s), for which one thread may hold the
#: GIL; silent clients delay others this long.
REQUEST_STALL = 0.5
#: Seconds a request thread waits for the next connection before it ends.
REQUEST_THREAD_IDLE = 5.0


class RequestThreads:
    """The threads that serve requests: a few at once, reused, more for requests that last.

    socketserver starts a thread per connection: in a burst of thousands of
    connects, thousands of handshakes then share one GIL, and the acceptor
    waits in each ``Thread.start()`` for a new thread to get it. Here at most
    :data:`REQUEST_THREADS` threads serve requests at once; the other
    connections wait, accepted, for the next free one (faster, and some 25
    threads at the peak instead of thousands: docs/performance.md).
    A thread whose request becomes a session that keeps it
    (:meth:`hold`: a handler function's) no longer counts, and one more starts
    for the connections waiting. When a connection has waited
    :data:`REQUEST_STALL` seconds (clients that say nothing or drip their
    requests, a slow page of a mounted app) and none was taken meanwhile,
    every waiting connection gets a thread, as socketserver would give it. A thread idle for
    :data:`REQUEST_THREAD_IDLE` seconds ends. (Neither server keeps a connection
    alive for a next request: no thread waits for one.)
    """

    def __init__(self, serve: Callable[[Any, Any], None]) -> None:
        self._serve = serve  # called with each connection and its details, in a request thread
        self._jobs: collections.deque[tuple[float, Any, Any]] = collections.deque()  # (since, ...)
        self._changed = threading.Condition()
        self._threads = 0  # running, idle or not
        self._idle = 0
        self._held = 0  # running a session that holds them
        self._holding: set[threading.Thread] = set()
        self._taken = 0.0  # when a thread last took a connection
        self._stall_handled = 0.0  # when more threads last started for a stall
        self._closed = False
        self._names = itertools.count(1)

    def submit(self, connection: Any, details: Any) -> bool:
        """A connection to serve (from the acceptor): to an idle thread, a new one, or the queue.

        False once :meth:`close` has been called: the caller closes the connection.
        """
        with self._changed:
            if self._closed:
                return False
            self._jobs.append((time.monotonic(), connection, details))
            self._changed.notify()
            start = self._short_locked()
        if start:
            self._start()
        return True

    def hold(self) -> None:
        """The calling request thread now runs a session that holds it: another may start."""
        thread = threading.current_thread()
        with self._changed:
            if thread in self._holding:
                return
            self._holding.add(thread)
            self._held += 1
            start = self._short_locked()
        if start:
            self._start()

    def start_if_stalled(self) -> None:
        """A thread for each waiting connection if none was taken for :data:`REQUEST_STALL` s (the acceptor).

        Clients that connect and say nothing, or drip their requests, hold
        threads until their deadline; however many they are, the connections
        behind them wait one stall, then are served as socketserver would: a
        thread each. A long queue that moves (a burst of thousands) is no stall.
        """
        if not self._jobs or time.monotonic() - self._taken < REQUEST_STALL:
            return  # a glance without the lock, which the request threads take for every connection
        with self._changed:
            start, now = 0, time.monotonic()
            since = max(self._jobs[0][0], self._taken, self._stall_handled) if self._jobs else now
            if now - since >= REQUEST_STALL:
                self._stall_handled = now  # the next ones only after another stall
                start = max(len(self._jobs) - self._idle, 0)
                self._threads += start
        for _ in range(start):
            self._start()

    @property
    def waiting(self) -> bool:
        """True if connections wait for a thread (a glance, without the lock)."""
        return bool(self._jobs)

    def close(self) -> list[Any]:
        """The server is closing: idle threads end now, busy ones after their request.

        Returns the connections still waiting for a thread, for the caller to close.
        """
        with self._changed:
            self._closed = True
            waiting = [connection for _, connection, _ in self._jobs]
            self._jobs.clear()
            self._changed.notify_all()
        return waiting

    def _short_locked(self) -> bool:
        """True (and counted) if a thread must start: connections wait, none is idle, a place is free."""
        short = len(self._jobs) > self._idle and self._threads - self._held < REQUEST_THREADS
        if short:
            self._threads += 1
        return short

    def _start(self) -> None:
        name = f"request-thread-{next(self._names)}"
        try:
            threading.Thread(target=self._work, name=name, daemon=True).start()
        except RuntimeError as error:  # "can't start new thread": the running ones go on
            log.error("no new request thread: %s", error)
            with self._changed:
                self._threads -= 1

    def _work(self) -> None:
        thread = threading.current_thread()
        name = thread.name
        with self._changed:
            try:
                while True:
                    if not self._jobs:
                        self._idle += 1
                        self._changed.wait_for(lambda: bool(self._jobs) or self._closed, REQUEST_THREAD_IDLE)
                        self._idle -= 1
                        if not self._jobs:
                            return
                    _, connection, details = self._jobs.popleft()
                    self._taken = time.monotonic()
                    self._changed.release()
                    try:
                        self._serve(connection, details)
                    finally:
                        thread.name = name
                        self._changed.acquire()
                        if thread in self._holding:
                            self._holding.discard(thread)
                            self._held -= 1
            finally:
                self._threads -= 1


class RequestExecutor(futures.Executor):
    """:class:`RequestThreads` as a :class:`concurrent.futures.Executor`: gthread's pool in our worker.

    gthread hands each connection to a pool of ``threads`` threads: in a burst
    of thousands of handshakes, a thousand threads share one GIL. Here a few
    serve at once, as in our own server, and :meth:`hold` (in each request's
    environ) gives a session that keeps its thread a place of its own.
    """

    def __init__(self) -> None:
        self._threads = RequestThreads(self._run)
        self.hold = self._threads.hold
        self.start_if_stalled = self._threads.start_if_stalled

    @property
    def waiting(self) -> bool:
        """True if calls wait for a thread."""
        return self._threads.waiting

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a request thread; its future has the result."""
        future: futures.Future[Any] = futures.Future()
        if not self._threads.submit(future, (fn, args, kwargs)):
            raise RuntimeError("cannot schedule new futures after shutdown")  # as ThreadPoolExecutor
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; those still waiting for a thread are cancelled (``wait`` is not supported: the
        calls running are requests and sessions, which end on their own)."""
        for future in self._threads.close():
            future.cancel()

    @staticmethod
    def _run(
        future: futures.Future[Any], call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
    ) -> None:
        if not future.set_running_or_notify_cancel():
            return
        fn, args, kwargs = call
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:  # the future carries it to whoever waits, as ThreadPoolExecutor's
            future.set_exception(error)
        else:
            future.set_result(result)
