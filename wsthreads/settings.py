"""Checks of the settings both sides share: a bad value is a one-line error before anything runs."""

from __future__ import annotations

import math


def check_seconds(name: str, value: object, *, optional: bool = False) -> None:
    """``value`` must be a finite number of seconds above 0 (or None, if ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        none = " (None: off)" if optional else ""
        raise ValueError(f"{name} must be a number of seconds above 0{none}: {value!r}")
    if value > 1e9:  # past this, deadlines overflow the clock
        raise ValueError(f"{name} is too large (at most 1e9 seconds): {value!r}")


def check_count(name: str, value: object, *, minimum: int = 1, optional: bool = False) -> None:
    """``value`` must be a whole number of at least ``minimum`` (or None, if ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " (None: no limit)" if optional else ""
        raise ValueError(f"{name} must be a whole number of at least {minimum}{none}: {value!r}")
