"""Checks of the settings both sides share: a bad value is a one-line error before anything runs."""

from __future__ import annotations

import logging
import math
import resource

#: The GIL switch interval (``sys.setswitchinterval``) for a process that serves
#: thousands of threads: 5 ms by default, 50 ms here. A process-wide setting, so
#: the library never sets it; the programs (``sync_server.py``) and our gunicorn
#: worker, which own their process, do. With thousands of runnable threads each
#: waiting one asks the running one to let go every interval, and the cores go
#: to switching (measured at 5,000 connections: docs/performance.md, "Where the
#: constants come from").
SWITCH_INTERVAL = 0.05
#: Descriptors a server process keeps for itself besides one per session: its
#: listening socket, logs, the netpoller's epoll, the connections of extensions (a Redis pool)...
RESERVED_DESCRIPTORS = 64

log = logging.getLogger("wsthreads.server")


def raise_descriptor_limit() -> int:
    """For a program that owns its process: open-file limit (soft) up to the hard one; the new limit.

    Go's runtime does the same at start (since 1.19): the usual soft limit,
    1,024, is far below what thousands of sessions need, and the hard one is
    often a million. A library call never does it (a process-wide setting).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # a hard limit the kernel caps lower (nr_open): keep the soft one
            return soft
    return hard


def warn_if_too_few_descriptors(max_connections: int) -> None:
    """One line if this process may not open a descriptor for each of ``max_connections`` sessions.

    Beyond its limit an accept fails (EMFILE): the connections wait unanswered
    in the listen queue instead of getting a 503.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections + RESERVED_DESCRIPTORS > soft:
        log.warning(
            "max_connections is %d, but this process may open only %d descriptors (one per session):"
            " raise its limit (ulimit -n) or lower max_connections",
            max_connections,
            soft,
        )


#: The longest a setting in seconds may be: past this, a deadline overflows the clock.
MAX_SECONDS = 1e9


def check_seconds(name: str, value: object, *, optional: bool = False) -> None:
    """``value`` must be a finite number of seconds above 0 (or None, if ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        none = " (None: off)" if optional else ""
        raise ValueError(f"{name} must be a number of seconds above 0{none}: {value!r}")
    if value > MAX_SECONDS:  # past this, deadlines overflow the clock
        raise ValueError(f"{name} is too large (at most 1e9 seconds): {value!r}")


#: The rates a limit may have, a second: beyond these a token bucket's arithmetic overflows.
RATES = (1e-6, 1e12)


def check_rate(name: str, value: object) -> None:
    """``value`` must be a number in :data:`RATES` (a rate a second), or None: no limit."""
    if value is None:
        return
    low, high = RATES
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        shown = repr(value)[:40]
        raise ValueError(
            f"{name} must be a number from {low:g} to {high:g}, a second (None: no limit): {shown}"
        )


def check_count(name: str, value: object, *, minimum: int = 1, optional: bool = False) -> None:
    """``value`` must be a whole number of at least ``minimum`` (or None, if ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " (None: no limit)" if optional else ""
        raise ValueError(f"{name} must be a whole number of at least {minimum}{none}: {value!r}")
