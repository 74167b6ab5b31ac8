"""How long to wait before trying again: exponential backoff with jitter, for anything that retries.

The client redials with it after a session that may be retried; pub/sub's
fan-out reads its broker again with it after a failure. One generator, no state
beyond it, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

#: First and largest delay between two dials when reconnecting (seconds).
BACKOFF = (0.5, 30.0)
#: A session that lasted this long (seconds) was a success: the backoff starts over.
STABLE_SESSION = 10.0


def backoff_delays(first: float = BACKOFF[0], cap: float = BACKOFF[1]) -> Iterator[float]:
    """Delays before the next attempts: exponential, capped, with jitter.

    Doubles from ``first`` up to ``cap``; each delay is drawn between half
    and all of that ("equal jitter"), so clients that lost the same server at
    the same moment do not all come back at the same moment. Never raises.
    """
    ceiling = first
    while True:
        yield random.uniform(ceiling / 2, ceiling)
        ceiling = min(cap, ceiling * 2)
