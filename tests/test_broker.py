"""The broker contract, run against every broker: the in-process one and a real Redis.

What the fan-out (``wsthreads/pubsub/fanout.py``) relies on, said once: ids that
grow, reads after an id (at once, or waiting up to a timeout), bounds, what
retention lets go, and one-line refusals. The fan-out's own scenarios
(resume, notes, subscriptions) run in tests/test_fanout.py on the in-process
broker; this contract is what lets them stand for Redis too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from helpers import WAIT, with_query

from wsthreads.pubsub.broker import (
    Broker,
    BrokerError,
    MemoryBroker,
    Retention,
    format_id,
    open_broker,
    parse_id,
)

#: ``make_broker(keep=None)``: a new broker of the kind under test.
MakeBroker = Callable[..., Broker]


@pytest.fixture(params=["memory", "redis"])
def make_broker(request: pytest.FixtureRequest) -> Iterator[MakeBroker]:
    """``make_broker(keep=None)``: a broker of the kind under test, with a stream of the test's own."""
    made: list[Broker] = []

    def make(keep: str | None = None) -> Broker:
        if request.param == "memory":
            broker: Broker = MemoryBroker(Retention() if keep is None else Retention.parse(keep))
        else:
            url = request.getfixturevalue("redis_url")
            broker = open_broker(url if keep is None else with_query(url, keep=keep))
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def test_ids_grow_and_a_read_after_an_id_gives_what_came_after_in_order(make_broker: MakeBroker) -> None:
    broker = make_broker()
    ids = [broker.publish("news", f"news {n} ✓") for n in range(5)]
    assert [parse_id(i) for i in ids] == sorted({parse_id(i) for i in ids})  # growing, no two alike
    everything = broker.read("0-0", 100)
    assert [(e.id, e.topic, e.data) for e in everything] == [
        (i, "news", f"news {n} ✓") for n, i in enumerate(ids)
    ]
    assert [e.id for e in broker.read(ids[1], 100)] == ids[2:]
    assert [e.id for e in broker.read(ids[1], 2)] == ids[2:4]  # count bounds it
    assert broker.read(ids[-1], 100) == []


def test_a_waiting_read_ends_with_the_timeout_or_at_once_with_a_publish(make_broker: MakeBroker) -> None:
    broker = make_broker()
    newest = broker.bounds().newest
    started = time.monotonic()
    assert broker.read(newest, 10, timeout=0.2) == []
    assert 0.15 < time.monotonic() - started < WAIT
    publisher = threading.Timer(0.1, lambda: broker.publish("news", "now"))
    publisher.start()
    started = time.monotonic()
    got = broker.read(newest, 10, timeout=5)
    took = time.monotonic() - started
    publisher.join()
    assert [e.data for e in got] == ["now"] and took < 3  # woken by the publish, not by the timeout


def test_bounds_say_the_oldest_id_kept_and_the_newest_given(make_broker: MakeBroker) -> None:
    broker = make_broker()
    empty = broker.bounds()
    assert empty.first is None and parse_id(empty.newest) == (0, 0)
    ids = [broker.publish("news", str(n)) for n in range(3)]
    bounds = broker.bounds()
    assert (bounds.first, bounds.newest) == (ids[0], ids[-1])


def test_retention_lets_the_oldest_go_and_a_read_from_before_starts_at_the_oldest_kept(
    make_broker: MakeBroker,
) -> None:
    """Redis trims approximately (whole nodes of its tree): far more than ``keep`` moves the start."""
    broker = make_broker(keep="5")
    ids = [broker.publish("news", str(n)) for n in range(500)]
    broker.trim()
    first = broker.bounds().first
    assert first is not None and first != ids[0] and len(ids) - ids.index(first) >= 5
    assert broker.read(ids[0], 1)[0].id == first


def test_a_read_after_an_id_ahead_of_every_message_gives_nothing(make_broker: MakeBroker) -> None:
    broker = make_broker()
    newest = parse_id(broker.publish("news", "one"))
    ahead = format_id((newest[0] + 10**9, 0))
    assert broker.read(ahead, 10) == []
    broker.publish("news", "two")
    assert broker.read(ahead, 10, timeout=0.2) == []  # its id is below the one asked after


@pytest.mark.parametrize(
    ("topic", "data", "error", "says"),
    [
        ("bad topic!", "x", ValueError, "bad topic name"),
        ("news", b"bytes", TypeError, r"is text \(str\)"),
        ("news", "\ud800", ValueError, "must be valid text"),
        ("news", "x" * (1 << 20), ValueError, "at most"),
    ],
)
def test_a_bad_message_is_refused_before_it_reaches_the_broker(
    make_broker: MakeBroker, topic: str, data: object, error: type[Exception], says: str
) -> None:
    broker = make_broker()
    with pytest.raises(error, match=says):
        broker.publish(topic, data)  # type: ignore[arg-type]
    assert broker.bounds().first is None


def test_a_closed_in_process_broker_refuses_in_one_line() -> None:
    """(A closed Redis broker only lets go of idle connections: the next call reconnects.)"""
    broker = MemoryBroker()
    broker.close()
    with pytest.raises(BrokerError, match="closed"):
        broker.publish("news", "late")
