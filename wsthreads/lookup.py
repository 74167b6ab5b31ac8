"""Host name lookups a dial can stop waiting for: by its deadline, or when it is closed.

The system's resolver (``getaddrinfo``) cannot be interrupted, and one that
times out and retries takes its own seconds. So a lookup runs in a daemon
thread, ``resolver``, while the dial waits on one end of a socket pair that
it shows to ``track`` as its socket: the lookup's end (which closes the other
end), the deadline, or a close() (which shuts the dial's socket down) ends
the wait. A lookup still running is left to end in its thread; the dials that
ask for the same host and port meanwhile wait for that one, so a client
redialing through a resolver outage holds one thread, not one per dial.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .connection import wait_for

#: One address of a host, as ``socket.getaddrinfo`` gives it.
Address = tuple[Any, ...]


class _Lookup:
    """One system lookup, and the dials waiting for it (each by the write end of its socket pair)."""

    def __init__(self) -> None:
        self.answer: list[Address] | OSError | None = None
        self.waiting: set[socket.socket] = set()


_lookups: dict[tuple[str, int], _Lookup] = {}
_lookups_lock = threading.Lock()  # guards _lookups and every _Lookup's fields


def resolve(
    host: str, port: int, deadline: float, track: Callable[[socket.socket], None] | None = None
) -> list[Address]:
    """``host``'s addresses for a TCP connection to ``port``, by ``deadline`` (``time.monotonic()``).

    ``track`` is shown the socket this waits on, as a dial's socket is, so that
    shutting it down from another thread ends the wait. An address given as
    digits needs no lookup.

    Raises:
        OSError: the lookup failed (``socket.gaierror``), or no thread could
            be started for it; TimeoutError: it did not end by the deadline,
            or the wait was cut short.
    """
    if is_address(host):
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    waiting, waking = socket.socketpair()
    lookup: _Lookup | None = None
    answer: list[Address] | OSError | None = None
    try:
        if track is not None:
            track(waiting)
        with _lookups_lock:
            lookup = _lookups.get((host, port))
            first = lookup is None
            if lookup is None:
                lookup = _lookups[(host, port)] = _Lookup()
            lookup.waiting.add(waking)
        if first:
            start_lookup(host, port, lookup)
        wait_for(waiting, select.POLLIN, deadline - time.monotonic())
    finally:
        waiting.close()
        if lookup is not None:
            with _lookups_lock:  # given up (the deadline, a close): the lookup keeps no end of ours
                lookup.waiting.discard(waking)
                answer = lookup.answer
        waking.close()  # the lookup may have closed it already: closing twice is nothing
    if answer is None:
        raise TimeoutError(f"no address for {host} in time")
    if isinstance(answer, OSError):
        raise answer
    return answer


def is_address(host: str) -> bool:
    """True if ``host`` is an IPv4 or IPv6 address written out, which needs no lookup."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def start_lookup(host: str, port: int, lookup: _Lookup) -> None:
    """Run ``lookup`` in a ``resolver`` thread; OSError if no thread can be had (the waiters are told)."""
    try:
        threading.Thread(target=look_up, args=(host, port, lookup), name="resolver", daemon=True).start()
    except RuntimeError as error:  # "can't start new thread"
        finish(host, port, lookup, OSError(f"no thread for the lookup of {host}: {error}"))


def look_up(host: str, port: int, lookup: _Lookup) -> None:
    """The ``resolver`` thread: ask the system, then tell every dial still waiting."""
    answer: list[Address] | OSError
    try:
        answer = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        answer = error
    except (UnicodeError, ValueError) as error:  # a name IDNA cannot encode (a label over 63 characters)
        answer = socket.gaierror(socket.EAI_NONAME, f"not a valid host name: {error}")
    finish(host, port, lookup, answer)


def finish(host: str, port: int, lookup: _Lookup, answer: list[Address] | OSError) -> None:
    """Record the answer and wake the waiting dials by closing their ends (no write: no SIGPIPE)."""
    with _lookups_lock:
        lookup.answer = answer
        if _lookups.get((host, port)) is lookup:
            del _lookups[(host, port)]
        waiting, lookup.waiting = lookup.waiting, set()
    for waking in waiting:
        waking.close()
