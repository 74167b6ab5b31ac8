"""wsthreads.settings without sockets: each check's one-line error, and the descriptor limit."""

from __future__ import annotations

import logging
import math
import resource

import pytest

from wsthreads import settings
from wsthreads.settings import RATES, check_count, check_rate, check_seconds, warn_if_too_few_descriptors


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, True, "5", None])
def test_seconds_must_be_a_finite_number_above_0(value: object) -> None:
    with pytest.raises(ValueError, match=r"^timeout must be a number of seconds above 0: "):
        check_seconds("timeout", value)


def test_seconds_may_be_none_when_optional_and_not_beyond_the_clock() -> None:
    check_seconds("ping_interval", None, optional=True)
    check_seconds("timeout", 0.001)
    with pytest.raises(ValueError, match=r"\(None: off\)"):
        check_seconds("ping_interval", 0, optional=True)
    with pytest.raises(ValueError, match=r"^timeout is too large \(at most 1e9 seconds\): 10000000000.0$"):
        check_seconds("timeout", 1e10)


@pytest.mark.parametrize("value", [0, RATES[0] / 2, RATES[1] * 2, True, "10", math.nan])
def test_a_rate_must_be_within_its_bounds(value: object) -> None:
    with pytest.raises(ValueError, match=r"^max_message_rate must be a number from 1e-06 to 1e\+12"):
        check_rate("max_message_rate", value)


def test_a_rate_may_be_none_or_any_number_within_its_bounds() -> None:
    for value in (None, RATES[0], 1, 2.5, RATES[1]):
        check_rate("max_byte_rate", value)


def test_a_long_bad_rate_is_cut_in_the_message() -> None:
    with pytest.raises(ValueError) as bad:
        check_rate("max_byte_rate", "x" * 1000)
    assert len(str(bad.value)) < 200 and "\n" not in str(bad.value)


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "2", None])
def test_a_count_must_be_a_whole_number_of_at_least_its_minimum(value: object) -> None:
    with pytest.raises(ValueError, match=r"^max_queue must be a whole number of at least 1: "):
        check_count("max_queue", value)


def test_a_count_may_be_none_when_optional() -> None:
    check_count("max_connections", None, optional=True)
    check_count("max_size", 0, minimum=0)
    with pytest.raises(ValueError, match=r"at least 2 \(None: no limit\)"):
        check_count("max_connections", 1, minimum=2, optional=True)


def test_too_few_descriptors_for_max_connections_is_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    with caplog.at_level(logging.WARNING, logger="wsthreads.server"):
        warn_if_too_few_descriptors(1024 - settings.RESERVED_DESCRIPTORS)  # fits
        assert caplog.records == []
        warn_if_too_few_descriptors(5000)
    assert [r.getMessage() for r in caplog.records] == [
        "max_connections is 5000, but this process may open only 1024 descriptors (one per session):"
        " raise its limit (ulimit -n) or lower max_connections"
    ]
