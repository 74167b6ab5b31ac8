"""wsthreads.deadlines on its own: sockets cut when their time is up, over real TCP pairs."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import WAIT, wait_until

from wsthreads.deadlines import Deadlines


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """Make (ours, peer) TCP pairs on loopback; all closed at the end."""
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for ours, peer in made:
        ours.close()
        peer.close()


def pair(made: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    made.append((ours, peer))
    return ours, peer


def cut(peer: socket.socket, within: float) -> float | None:
    """Seconds until the peer saw EOF (our end was shut down), or None if it did not within ``within``."""
    started = time.monotonic()
    peer.settimeout(within)
    try:
        data = peer.recv(1)
    except TimeoutError:
        return None
    assert data == b""
    return time.monotonic() - started


def running(deadlines: Deadlines) -> bool:
    return deadlines._thread is not None and deadlines._thread.is_alive()


def test_a_deadline_cuts_its_socket_on_time(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    deadlines = Deadlines()
    ours, peer = pair(pairs)
    deadlines.arm(ours, 0.2)
    took = cut(peer, WAIT)
    assert took is not None and 0.1 < took < 2.0


def test_an_earlier_deadline_armed_later_is_not_held_up_by_a_later_one(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    deadlines = Deadlines()
    late, _ = pair(pairs)
    deadlines.arm(late, 60)  # the thread now sleeps towards this one
    soon, peer = pair(pairs)
    deadlines.arm(soon, 0.2)
    took = cut(peer, WAIT)
    assert took is not None and took < 2.0


@pytest.mark.slow
def test_a_disarmed_deadline_cuts_nothing_and_the_thread_ends_with_the_last(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    deadlines = Deadlines()
    armed = []
    for _ in range(50):
        ours, peer = pair(pairs)
        armed.append((deadlines.arm(ours, 0.3), peer))
    assert running(deadlines)
    for entry, _ in reversed(armed):  # the last armed first: they leave the heap only at its top
        deadlines.disarm(entry)
    assert wait_until(lambda: not running(deadlines), timeout=2.0)  # not the 0.3 s of any of them
    readable, _, _ = select.select([peer for _, peer in armed], [], [], 0.5)  # past every deadline
    assert readable == []  # no EOF: nothing was cut


@pytest.mark.slow
def test_arming_from_many_threads_at_once(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    """A burst of handshakes: arms and disarms from many threads; only the ones left armed cut."""
    deadlines = Deadlines()
    socks = [pair(pairs) for _ in range(200)]

    def handshake(index: int) -> None:
        entry = deadlines.arm(socks[index][0], 0.5)
        if index % 2:
            deadlines.disarm(entry)

    threads = [threading.Thread(target=handshake, args=(i,)) for i in range(len(socks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    for index, (_, peer) in enumerate(socks):
        took = cut(peer, 3.0 if index % 2 == 0 else 0.01)
        assert (took is not None) == (index % 2 == 0), index
    assert wait_until(lambda: not running(deadlines))


class CountingCondition(threading.Condition):
    """A Condition that counts its notify() calls: each one wakes the deadlines thread."""

    notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


def test_a_burst_of_handshakes_wakes_the_thread_once_not_twice_per_connection(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    """Armed in time order and disarmed as their requests come in: the thread sleeps towards
    the first deadline all along, and is woken only to end."""
    deadlines = Deadlines()
    counting = deadlines._changed = CountingCondition()
    entries = [deadlines.arm(pair(pairs)[0], 10) for _ in range(100)]
    for entry in entries:
        deadlines.disarm(entry)
    assert counting.notified <= 2  # was 200: one per arm and one per disarm
    assert wait_until(lambda: not running(deadlines))


def test_a_deadline_cut_short_cuts_at_once_and_only_if_still_armed(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    deadlines = Deadlines()
    ours, peer = pair(pairs)
    deadlines.cut_now(deadlines.arm(ours, 60))
    took = cut(peer, WAIT)
    assert took is not None and took < 2.0
    assert wait_until(lambda: not running(deadlines))  # nothing else armed: the thread ends now, not in 60 s
    kept, kept_peer = pair(pairs)
    armed = deadlines.arm(kept, 60)
    deadlines.disarm(armed)
    deadlines.cut_now(armed)  # disarmed first: the socket is left alone
    assert cut(kept_peer, 0.3) is None


def test_a_deadline_cut_before_its_socket_was_retargeted_cuts_the_new_one(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    """TLS wrapping moves the descriptor to a new object: a cut that came just before the
    retarget hit the old object, so the retarget cuts the new one."""
    deadlines = Deadlines()
    old, _ = pair(pairs)
    new, peer = pair(pairs)
    armed = deadlines.arm(old, 60)
    deadlines.cut_now(armed)
    assert armed.cut
    deadlines.retarget(armed, new)
    took = cut(peer, WAIT)
    assert took is not None and took < 2.0
