"""wsthreads.pool: the request threads both servers share, and the executor our gunicorn worker makes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest
from _pytest.monkeypatch import MonkeyPatch
from helpers import WAIT, wait_until

from wsthreads import pool
from wsthreads.pool import REQUEST_THREADS, RequestExecutor, RequestThreads


class Jobs:
    """Fake requests for RequestThreads: each waits for ``release``; some hold their thread first."""

    def __init__(self, pool_holds: bool = False) -> None:
        self.release = threading.Event()
        self.running = 0
        self.served: list[int] = []
        self.lock = threading.Lock()
        self.holds = pool_holds
        self.threads = RequestThreads(self.serve)

    def serve(self, request: int, client_address: object) -> None:
        if self.holds:
            self.threads.hold()
        with self.lock:
            self.running += 1
        self.release.wait(WAIT)
        with self.lock:
            self.running -= 1
            self.served.append(request)


def test_request_threads_serve_a_few_requests_at_once_and_queue_the_rest(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "REQUEST_STALL", 60.0)
    jobs = Jobs()
    for number in range(50):
        jobs.threads.submit(number, None)
    assert wait_until(lambda: jobs.running == REQUEST_THREADS)
    time.sleep(0.2)
    assert jobs.running == REQUEST_THREADS  # the other 34 wait for a free thread
    jobs.release.set()
    assert wait_until(lambda: len(jobs.served) == 50)
    assert sorted(jobs.served) == list(range(50))
    assert jobs.threads.close() == []


def test_a_thread_held_by_a_session_is_replaced_at_once(monkeypatch: MonkeyPatch) -> None:
    """Handler functions hold their request threads: every one of 50 sessions runs, with no stall."""
    monkeypatch.setattr(pool, "REQUEST_STALL", 60.0)
    jobs = Jobs(pool_holds=True)
    for number in range(50):
        jobs.threads.submit(number, None)
    try:
        assert wait_until(lambda: jobs.running == 50)
    finally:
        jobs.release.set()
    assert wait_until(lambda: len(jobs.served) == 50)
    jobs.threads.close()


def test_connections_stuck_behind_slow_requests_get_threads_after_a_stall(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "REQUEST_STALL", 0.1)
    jobs = Jobs()
    for number in range(REQUEST_THREADS + 5):
        jobs.threads.submit(number, None)
    try:
        assert wait_until(lambda: jobs.running == REQUEST_THREADS)
        deadline = time.monotonic() + WAIT
        while jobs.running < REQUEST_THREADS + 5 and time.monotonic() < deadline:
            jobs.threads.start_if_stalled()  # what the acceptor does between its looks
            time.sleep(0.02)
        assert jobs.running == REQUEST_THREADS + 5
    finally:
        jobs.release.set()
    jobs.threads.close()


def test_closing_returns_the_connections_still_waiting(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "REQUEST_STALL", 60.0)
    jobs = Jobs()
    for number in range(REQUEST_THREADS + 3):
        jobs.threads.submit(number, None)
    assert wait_until(lambda: jobs.running == REQUEST_THREADS)
    assert sorted(jobs.threads.close()) == [REQUEST_THREADS, REQUEST_THREADS + 1, REQUEST_THREADS + 2]
    jobs.release.set()
    assert wait_until(lambda: len(jobs.served) == REQUEST_THREADS)


# --- the executor (gthread's pool in our gunicorn worker) --------------------------------


def test_the_executor_gives_each_call_its_result_or_its_exception() -> None:
    executor = RequestExecutor()
    try:
        assert executor.submit(pow, 2, 10).result(WAIT) == 1024
        with pytest.raises(ZeroDivisionError):
            executor.submit(divmod, 1, 0).result(WAIT)
    finally:
        executor.shutdown()


def test_the_executor_runs_a_few_calls_at_once_and_one_more_for_each_held(
    monkeypatch: MonkeyPatch,
) -> None:
    """30 calls that block: REQUEST_THREADS run, the rest wait; once 10 of the running hold their
    threads (sessions that keep them), 10 more run at once, with no stall."""
    monkeypatch.setattr(pool, "REQUEST_STALL", 60.0)
    executor = RequestExecutor()
    release, hold = threading.Event(), threading.Event()
    running: list[int] = []

    def call(number: int) -> int:
        running.append(number)
        if number < 10:
            hold.wait(WAIT)
            executor.hold()
        release.wait(WAIT)
        return number

    futures = [executor.submit(call, number) for number in range(30)]
    try:
        assert wait_until(lambda: len(running) == REQUEST_THREADS)
        time.sleep(0.2)
        assert len(running) == REQUEST_THREADS
        hold.set()
        assert wait_until(lambda: len(running) == REQUEST_THREADS + 10)
    finally:
        hold.set()
        release.set()
    assert [future.result(WAIT) for future in futures] == list(range(30))
    executor.shutdown()


def test_shutting_the_executor_down_cancels_the_calls_still_waiting(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "REQUEST_STALL", 60.0)
    executor = RequestExecutor()
    release = threading.Event()
    futures = [executor.submit(release.wait, WAIT) for _ in range(REQUEST_THREADS + 2)]
    assert wait_until(lambda: sum(future.running() for future in futures) == REQUEST_THREADS)
    executor.shutdown(wait=False)
    release.set()
    assert [future.result(WAIT) for future in futures[:REQUEST_THREADS]] == [True] * REQUEST_THREADS
    for future in futures[REQUEST_THREADS:]:
        with pytest.raises(CancelledError):
            future.result(WAIT)
