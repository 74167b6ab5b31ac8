"""wsthreads/queues.py on its own: the Inbox knows the end, through recv() and get() alike."""

from __future__ import annotations

import queue
import threading
import time

import pytest

import wsthreads
from wsthreads.closing import Closed
from wsthreads.queues import Inbox, Outbox


def test_what_is_queued_comes_first_then_the_end_at_once_through_get_and_recv() -> None:
    inbox: Inbox[str] = Inbox(4)
    inbox.deliver("a")
    inbox.deliver("b")
    with pytest.raises(queue.Empty):
        Inbox[str](4).get_nowait()  # nothing, and not over: a plain queue's answer
    inbox.end(Closed(1000, "bye"))
    assert inbox.get(timeout=5) == "a"
    assert inbox.recv(timeout=5) == "b"
    for take in (lambda: inbox.get(timeout=5), inbox.get_nowait, lambda: inbox.recv(timeout=5)):
        started = time.monotonic()
        with pytest.raises(Closed, match="1000"):
            take()
        assert time.monotonic() - started < 1  # not the timeout's 5 s


def test_a_waiting_get_wakes_at_the_end_and_a_quiet_one_times_out() -> None:
    inbox: Inbox[str] = Inbox()
    with pytest.raises(queue.Empty):
        inbox.get(timeout=0.05)
    with pytest.raises(TimeoutError, match=r"no message within 0\.05 s"):
        inbox.recv(timeout=0.05)
    threading.Timer(0.1, inbox.end, args=(Closed(1001, "going away"),)).start()
    with pytest.raises(Closed, match="1001"):
        inbox.get(timeout=5)


def test_a_clients_messages_queue_raises_closed_at_the_end(serve: object) -> None:
    """docs/howto/own-loop.md shows client.messages.get(timeout=...): at the end, Closed at once."""
    server = serve(handler=lambda conn: conn.close(4000, "done"))  # type: ignore[operator]
    with wsthreads.WebSocketClient(server.url) as client:
        started = time.monotonic()
        with pytest.raises(Closed, match="4000"):
            client.messages.get(timeout=5)
        assert time.monotonic() - started < 2


def test_flush_waits_for_frames_another_writer_took_until_they_are_settled() -> None:
    """A send() drains what send_nowait queued and may compress its own message before writing
    them: flush() must not say "written" meanwhile, nor after they failed."""
    outbox: Outbox[bytes] = Outbox(lambda: None, limit=1 << 20, policy="close", overflow=print, name="w")
    for written in (True, False):
        assert outbox.put(b"queued")
        taken = outbox.drain()  # what a send() does under the wire lock
        assert taken == [b"queued"] and outbox.empty
        assert not outbox.flush(0.2)  # in flight: not written yet
        outbox.settled(len(b"queued"), written)
        assert outbox.flush(1.0) is written


@pytest.mark.parametrize("written", [True, False])
def test_flush_waits_for_a_cut_frames_end_and_for_the_close_after_a_stop(written: bool) -> None:
    """The end of a cut frame someone took, and frames the close took before stopping the outbox,
    are in flight too: a stop does not make flush() answer before they are settled."""
    outbox: Outbox[bytes] = Outbox(lambda: None, limit=1 << 20, policy="close", overflow=print, name="w")
    outbox.put_rest(b"end of a frame")
    rest = outbox.take_rest()
    assert outbox.put(b"queued")
    taken = outbox.drain()
    outbox.stop()  # what the close does before writing them
    assert not outbox.flush(0.2)
    outbox.settled(len(rest) + sum(map(len, taken)), written)
    assert outbox.flush(1.0) is written
