"""wsthreads.signals in this process's main thread: the flag, the wait, and real signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from wsthreads.signals import Signalled, catch_signals, run_until_signal


@pytest.fixture
def restored() -> Iterator[None]:
    """The process's SIGINT and SIGTERM handlers, put back after the test."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_the_wait_ends_without_on_signal_once_finished() -> None:
    finished, calls = threading.Event(), []
    threading.Timer(0.1, finished.set).start()
    assert run_until_signal(finished, lambda: calls.append("on_signal"), Signalled()) is False
    assert calls == []


def test_a_signal_calls_on_signal_once_and_ends_the_wait(restored: None) -> None:
    calls: list[str] = []
    signalled = catch_signals()
    threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    assert run_until_signal(threading.Event(), lambda: calls.append("on_signal"), signalled) is True
    assert calls == ["on_signal"] and time.monotonic() - started < 5


def test_two_signals_at_once_change_nothing(restored: None) -> None:
    """The handler only sets a flag: SIGINT and SIGTERM together are one shutdown, no exception."""
    signalled = catch_signals()
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    calls: list[str] = []
    assert run_until_signal(threading.Event(), lambda: calls.append("on_signal"), signalled) is True
    assert calls == ["on_signal"]


def test_catch_signals_installs_both_handlers_even_when_sigint_was_ignored(restored: None) -> None:
    """A program started in the background by a shell inherits SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    catch_signals()
    assert callable(signal.getsignal(signal.SIGINT)) and callable(signal.getsignal(signal.SIGTERM))
