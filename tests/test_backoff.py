"""wsthreads.backoff: the delays between attempts, without sockets or clocks."""

from __future__ import annotations

import itertools

from wsthreads.backoff import BACKOFF, backoff_delays


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    delays = list(itertools.islice(backoff_delays(1.0, 8.0), 6))
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_the_default_starts_at_half_a_second_and_stops_growing_at_30() -> None:
    """Equal jitter: each delay between half its ceiling and all of it, so clients spread out."""
    delays = list(itertools.islice(backoff_delays(), 200))
    assert BACKOFF == (0.5, 30.0)
    assert 0.25 <= delays[0] <= 0.5 and all(15.0 <= d <= 30.0 for d in delays[7:])
    assert len(set(delays[7:])) > 150  # drawn, not fixed: two clients lost together come back apart
