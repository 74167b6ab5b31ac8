"""wsthreads.netpoller: parked sockets, one turn at a time each, workers that grow only when stuck."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable

import pytest
from helpers import wait_until

from wsthreads.netpoller import WORKERS, Netpoller, Watch


class Counter:
    """A turn that reads what came on one socket and records that it ran (and never ran twice at once)."""

    def __init__(self, sock: socket.socket, due_in: float | None = None, hold: threading.Event | None = None):
        self.sock = sock
        self.sock.setblocking(False)
        self.due_in = due_in
        self.hold = hold
        self.turns = 0
        self.received = b""
        self.inside = 0
        self.overlapped = False
        self.threads: set[str] = set()
        self.ran = threading.Event()

    def turn(self) -> float | None:
        self.inside += 1
        self.overlapped |= self.inside > 1
        self.threads.add(threading.current_thread().name)
        try:
            self.turns += 1
            try:
                self.received += self.sock.recv(65536)
            except BlockingIOError:
                pass
            if self.hold is not None:
                self.hold.wait(5)
            self.ran.set()
            return None if self.due_in is None else time.monotonic() + self.due_in
        finally:
            self.inside -= 1


@pytest.fixture
def poller() -> Netpoller:
    return Netpoller()


def watch(poller: Netpoller, counter: Counter, name: str = "conn-1-reader") -> Watch:
    handle = poller.watch(counter.sock.fileno(), counter.turn, name)
    handle.wake()
    return handle


def cpu_seconds() -> float:
    """CPU time the process's other threads have used (the netpoller's: its monitor, its workers)."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        if int(task) == threading.get_native_id():
            continue
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def stuck_in_turns(
    poller: Netpoller, n: int, hold: threading.Event
) -> tuple[list[tuple[socket.socket, socket.socket]], list[Watch]]:
    """``n`` connections whose turns block until ``hold`` is set, each in its turn by now."""
    pairs = [socket.socketpair() for _ in range(n)]
    stuck = [Counter(ours, hold=hold) for ours, _ in pairs]
    handles = [watch(poller, counter) for counter in stuck]
    assert wait_until(lambda: all(counter.inside == 1 for counter in stuck))
    return pairs, handles


def close_all(*socks: socket.socket) -> None:
    for sock in socks:
        sock.close()


@pytest.mark.slow
def test_a_parked_socket_runs_a_turn_when_bytes_come_and_none_while_idle(poller: Netpoller) -> None:
    ours, theirs = socket.socketpair()
    counter = Counter(ours)
    handle = watch(poller, counter)
    assert wait_until(lambda: counter.turns == 1)  # the first turn, at once
    time.sleep(0.3)
    assert counter.turns == 1, "an idle socket must not run turns"
    theirs.sendall(b"hello")
    assert wait_until(lambda: counter.received == b"hello")
    assert counter.threads == {"conn-1-reader"}, "a worker takes the connection's name during its turn"
    handle.close()  # parked: the netpoller forgets it
    theirs.sendall(b"more")
    time.sleep(0.2)
    assert counter.received == b"hello"
    close_all(ours, theirs)


def test_a_turn_runs_again_by_the_time_it_asked_for(poller: Netpoller) -> None:
    ours, theirs = socket.socketpair()
    counter = Counter(ours, due_in=0.1)
    started = time.monotonic()
    handle = watch(poller, counter)
    assert wait_until(lambda: counter.turns >= 5)
    assert time.monotonic() - started >= 0.4
    handle.close()
    close_all(ours, theirs)


def test_a_wake_during_a_turn_runs_one_more_turn_after_it_never_beside_it(poller: Netpoller) -> None:
    ours, theirs = socket.socketpair()
    hold = threading.Event()
    counter = Counter(ours, hold=hold)
    handle = watch(poller, counter)
    assert wait_until(lambda: counter.inside == 1)
    for _ in range(10):
        handle.wake()
    theirs.sendall(b"x")
    hold.set()
    assert wait_until(lambda: counter.turns >= 2)
    time.sleep(0.2)
    assert not counter.overlapped
    assert counter.turns <= 3, "ten wake-ups during one turn make one more turn (two with the byte), not ten"
    handle.close()
    close_all(ours, theirs)


def test_a_socket_parked_without_a_first_turn_runs_when_bytes_come(poller: Netpoller) -> None:
    """park(): nothing has come yet, so no turn until bytes do; a worker starts to poll for them."""
    ours, theirs = socket.socketpair()
    counter = Counter(ours)
    handle = poller.watch(ours.fileno(), counter.turn, "conn-1-reader")
    handle.park(None)
    time.sleep(0.2)
    assert counter.turns == 0
    theirs.sendall(b"hello")
    assert wait_until(lambda: counter.received == b"hello")
    handle.close()
    close_all(ours, theirs)


def test_a_socket_parked_without_a_first_turn_runs_by_its_deadline(poller: Netpoller) -> None:
    ours, theirs = socket.socketpair()
    counter = Counter(ours)
    handle = poller.watch(ours.fileno(), counter.turn, "conn-1-reader")
    started = time.monotonic()
    handle.park(started + 0.3)
    assert counter.ran.wait(5)
    assert time.monotonic() - started >= 0.3
    assert counter.turns == 1
    handle.close()
    close_all(ours, theirs)


def test_a_wake_before_park_wins_its_turn_parks_the_socket(poller: Netpoller) -> None:
    """A close asked for between the watch and its park: the turn runs, and the late park changes nothing."""
    ours, theirs = socket.socketpair()
    hold = threading.Event()
    counter = Counter(ours, hold=hold)
    handle = poller.watch(ours.fileno(), counter.turn, "conn-1-reader")
    handle.wake()
    assert wait_until(lambda: counter.inside == 1)
    handle.park(time.monotonic())  # would run it again at once, beside the first, were it not a no-op
    hold.set()
    time.sleep(0.3)
    assert counter.turns == 1 and not counter.overlapped
    theirs.sendall(b"x")
    assert wait_until(lambda: counter.received == b"x")
    handle.close()
    close_all(ours, theirs)


def test_2000_parked_sockets_are_served_by_a_few_threads(poller: Netpoller) -> None:
    pairs = [socket.socketpair() for _ in range(2000)]
    counters = [Counter(ours) for ours, _ in pairs]
    before = threading.active_count()
    handles = [watch(poller, counter, f"conn-{n}-reader") for n, counter in enumerate(counters)]
    for _, theirs in pairs:
        theirs.sendall(b"ping")
    assert wait_until(lambda: all(counter.received == b"ping" for counter in counters), 20)
    # The netpoller thread and its workers; a blocked turn could have added one or two more.
    assert threading.active_count() - before <= 1 + WORKERS + 2
    assert not any(counter.overlapped for counter in counters)
    for handle in handles:
        handle.close()
    for pair in pairs:
        close_all(*pair)


def test_a_stuck_turn_does_not_hold_up_the_others(poller: Netpoller) -> None:
    """Go's sysmon: when turns wait and no worker takes one, another worker starts."""
    hold = threading.Event()
    stuck_pairs, handles = stuck_in_turns(poller, WORKERS, hold)
    ours, theirs = socket.socketpair()
    free = Counter(ours)
    handles.append(watch(poller, free))
    started = time.monotonic()
    assert free.ran.wait(2), "every worker is stuck, and no other started"
    assert time.monotonic() - started < 1.0
    hold.set()
    for handle in handles:
        handle.close()
    for pair in [*stuck_pairs, (ours, theirs)]:
        close_all(*pair)


def test_the_netpoller_thread_runs_only_while_something_is_watched(poller: Netpoller) -> None:
    ours, theirs = socket.socketpair()
    counter = Counter(ours)
    handle = watch(poller, counter)
    assert wait_until(lambda: counter.turns == 1)
    assert poller.running()
    handle.close()
    assert wait_until(lambda: not poller.running())
    # And it starts again for the next one.
    counter2 = Counter(ours)
    handle2 = watch(poller, counter2)
    theirs.sendall(b"y")
    assert wait_until(lambda: b"y" in counter2.received)
    handle2.close()
    assert wait_until(lambda: not poller.running())
    close_all(ours, theirs)


@pytest.mark.slow
def test_bytes_and_a_deadline_at_once_make_one_turn_not_two(poller: Netpoller) -> None:
    """A socket readable when its deadline passes is ready twice in one look: still one turn at a time."""
    ours, theirs = socket.socketpair()
    counter = Counter(ours, due_in=0.0)  # always due again at once, like a reader that stopped mid-burst
    handle = watch(poller, counter)
    stop = time.monotonic() + 1.0
    while time.monotonic() < stop:
        theirs.sendall(b"x" * 100)
        time.sleep(0.001)
    assert counter.turns > 50
    assert not counter.overlapped
    handle.close()
    close_all(ours, theirs)


@pytest.mark.parametrize("first_turn", [True, False], ids=["in-its-first-turn", "in-a-later-turn"])
@pytest.mark.slow
def test_a_peer_that_hangs_up_during_a_long_turn_does_not_make_the_netpoller_spin(
    poller: Netpoller, first_turn: bool
) -> None:
    """epoll reports a hang-up whatever a descriptor asks for: the netpoller must not loop on it."""
    ours, theirs = socket.socketpair()
    hold = threading.Event()
    counter = Counter(ours, hold=hold if first_turn else None)
    handle = watch(poller, counter)
    if not first_turn:
        assert wait_until(lambda: counter.turns == 1)
        counter.hold = hold
        theirs.sendall(b"x")
    assert wait_until(lambda: counter.inside == 1)
    theirs.close()  # the hang-up, while the turn holds
    before = cpu_seconds()
    time.sleep(0.5)
    assert cpu_seconds() - before < 0.2
    hold.set()
    handle.close()
    ours.close()


def test_workers_stuck_in_turns_do_not_count_against_workers(poller: Netpoller) -> None:
    """Go: a thread blocked in a system call gives up its processor. With WORKERS turns stuck, handlers
    that wait (10 ms a message) still run on several workers, not one after another on one."""
    hold = threading.Event()
    stuck_pairs, handles = stuck_in_turns(poller, WORKERS, hold)
    ran_in: set[str] = set()
    pairs = [socket.socketpair() for _ in range(8)]

    def waiting_turn(sock: socket.socket) -> Callable[[], None]:
        sock.setblocking(False)

        def turn() -> None:
            with contextlib.suppress(BlockingIOError):
                for _ in sock.recv(100):
                    ran_in.add(str(threading.get_ident()))
                    time.sleep(0.01)
                    sock.send(b"r")

        return turn

    for n, (ours, _) in enumerate(pairs):
        handle = poller.watch(ours.fileno(), waiting_turn(ours), f"conn-{n}-reader")
        handle.wake()
        handles.append(handle)
    for _ in range(40):  # about 1 s of round trips on all eight at once
        for _, theirs in pairs:
            theirs.sendall(b"x")
        for _, theirs in pairs:
            theirs.settimeout(5)
            assert theirs.recv(1) == b"r"
    assert len(ran_in) >= 2, "the waiting handlers ran on one worker beside the stuck ones"
    hold.set()
    for handle in handles:
        handle.close()
    for pair in [*stuck_pairs, *pairs]:
        close_all(*pair)


def test_many_stuck_turns_queued_ahead_hold_up_a_healthy_one_briefly(poller: Netpoller) -> None:
    """Two hundred turns that block, found in one look before a healthy one: while every worker is
    stuck, each look of the monitor starts as many again (one per stall took 10 s, four 2.8 s)."""
    hold = threading.Event()
    stuck_pairs = [socket.socketpair() for _ in range(200)]
    stuck = [Counter(ours) for ours, _ in stuck_pairs]
    handles = [watch(poller, counter) for counter in stuck]
    ours, theirs = socket.socketpair()
    free = Counter(ours)
    handles.append(watch(poller, free))
    assert wait_until(lambda: all(counter.turns == 1 for counter in [*stuck, free]))
    free.ran.clear()
    for counter in stuck:
        counter.hold = hold
    for _, their_end in stuck_pairs:
        their_end.sendall(b"x")
    theirs.sendall(b"y")
    started = time.monotonic()
    assert free.ran.wait(10)
    assert time.monotonic() - started < 2.0, "the stuck turns ahead got their workers a few at a time"
    hold.set()
    for handle in handles:
        handle.close()
    for pair in [*stuck_pairs, (ours, theirs)]:
        close_all(*pair)


def test_no_turn_is_taken_after_close(poller: Netpoller) -> None:
    """A watch woken and then closed by another thread before a worker took its turn: no turn."""
    late = []
    pairs = [socket.socketpair() for _ in range(50)]
    for n, (ours, _) in enumerate(pairs):
        closed = threading.Event()

        def turn(closed: threading.Event = closed) -> None:
            late.append(closed.is_set())

        handle = poller.watch(ours.fileno(), turn, f"c{n}")
        handle.wake()
        handle.close()
        closed.set()
    time.sleep(0.3)
    assert True not in late
    for pair in pairs:
        close_all(*pair)


def test_a_socket_closed_under_its_watch_is_forgotten_and_the_others_are_served(poller: Netpoller) -> None:
    """An owner that closes its socket without Watch.close(): one line, and the workers go on."""
    good, good_peer = socket.socketpair()
    counter = Counter(good)
    handle = watch(poller, counter)
    assert wait_until(lambda: counter.turns == 1)
    bad, bad_peer = socket.socketpair()

    def closes_its_socket() -> float:
        bad.close()
        return time.monotonic() + 1

    poller.watch(bad.fileno(), closes_its_socket, "conn-bad-reader").wake()
    time.sleep(0.2)
    good_peer.sendall(b"hello")
    assert wait_until(lambda: counter.received == b"hello")
    handle.close()
    close_all(good, good_peer, bad_peer)


def test_a_netpoller_that_cannot_open_leaves_nothing_open_and_opens_later(
    poller: Netpoller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No descriptor left for the wake-up (EMFILE): watch() raises, the epoll made before it is closed
    and nothing is half open; once descriptors are back, the next watch works."""
    import errno

    def no_descriptor(*args: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    made: list[select.epoll] = []

    def epoll() -> select.epoll:
        made.append(real_epoll())
        return made[-1]

    ours, theirs = socket.socketpair()
    real_epoll = select.epoll
    monkeypatch.setattr(select, "epoll", epoll)
    monkeypatch.setattr(os, "eventfd", no_descriptor)
    with pytest.raises(OSError, match="Too many open files"):
        poller.watch(ours.fileno(), lambda: None, "conn-1-reader")
    assert len(made) == 1 and made[0].closed and not poller.running()
    monkeypatch.undo()
    counter = Counter(ours)
    handle = watch(poller, counter)
    theirs.sendall(b"hello")
    assert wait_until(lambda: counter.received == b"hello")
    handle.close()
    close_all(ours, theirs)
