"""The shared pieces on their own: pure functions, the sender's stop, imports."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT

from common import Message, Session, SessionClosed, StopSignal, describe_close, message_text, send_messages


class RecordingTransport:
    """An in-memory transport: records what is sent (no network involved)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed_with: list[tuple[int, str]] = []

    def receive(self) -> Message:
        raise SessionClosed(1000)

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def close(self, code: int, reason: str) -> None:
        self.closed_with.append((code, reason))

    def abort(self) -> None:
        pass


def test_message_text_carries_its_sequence_number() -> None:
    assert message_text("server", 3, 5) == "server message 3 of 5"


@pytest.mark.parametrize(
    "code, reason, text",
    [
        (1000, "", "1000 (normal closure)"),
        (1001, "bye", "1001 (going away) 'bye'"),
        (4000, "", "4000 (application code)"),
        (1006, "", "1006 (connection lost)"),
    ],
)
def test_describe_close(code: int, reason: str, text: str) -> None:
    assert describe_close(code, reason) == text


def test_sender_sends_count_messages_in_order() -> None:
    transport = RecordingTransport()
    send_messages(Session(transport), 3, 0, "client")
    assert transport.sent == ["client message 1 of 3", "client message 2 of 3", "client message 3 of 3"]


def test_stop_interrupts_the_senders_sleep_at_once() -> None:
    """Shutdown never waits out an interval: stop.set() wakes the sender."""
    transport = RecordingTransport()
    session = Session(transport)
    sender = threading.Thread(target=send_messages, args=(session, 5, 60.0, "x"))
    sender.start()
    while not transport.sent:
        time.sleep(0.001)
    started = time.monotonic()
    session.stop.set()
    sender.join(5)
    assert not sender.is_alive()
    assert time.monotonic() - started < 0.5
    assert transport.sent == ["x message 1 of 5"]


def test_close_is_idempotent_and_stops_sends() -> None:
    transport = RecordingTransport()
    session = Session(transport)
    session.close(1001, "bye")
    session.close(1000)
    assert transport.closed_with == [(1001, "bye")]
    with pytest.raises(SessionClosed):
        session.send("too late")
    assert session.stop.is_set()


def test_importing_the_programs_has_no_side_effects() -> None:
    """Importing starts no thread, opens no socket, touches no logging or signal setup."""
    code = """
import logging, signal, threading
before = (threading.active_count(), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
import common, sync_server, sync_client
after = (threading.active_count(), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
assert before == after, (before, after)
assert logging.getLogger().handlers == []
app = sync_server.create_app()
assert callable(app) and app.session_count == 0
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_stop_signal_reaches_the_current_session_and_later_ones() -> None:
    """A request stops the attached session, and a session attached afterwards at once."""
    signal = StopSignal()
    first = Session(RecordingTransport())
    signal.attach(first)
    assert not first.stop.is_set()
    signal.request()
    assert first.stop.is_set() and signal.requested
    second = Session(RecordingTransport())
    signal.attach(second)
    assert second.stop.is_set()
    assert signal.wait(0)
