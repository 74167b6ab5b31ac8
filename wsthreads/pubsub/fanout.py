"""Fan-out: the broker's messages to the subscribed connections of this process.

A client subscribes with the endpoint's query, ``/ws?topic=news&topic=user.42``,
and resumes with ``&last_id=ID``. Each published message reaches it as one
text message, a JSON object ``{"topic": ..., "id": ..., "data": ...}``.

One thread per app, ``fanout``, follows the broker's log and queues every
entry for the connections subscribed to its topic (their outboxes, as
:meth:`WebSocketApp.broadcast` does): a client that does not read holds up
nobody, and meets the ``on_overflow`` policy (with ``close``, 1013: it comes
back with its last id and misses nothing). It is the only thread that
reads the log live, so each connection gets the entries in the log's order.

Every subscription begins in its session's own thread (:meth:`Fanout.catch_up`),
while the follower holds the live entries for it. Without ``last_id`` it is
first sent a note, ``{"note": "subscribed", "last_id": ID, ...}``: the
position it starts at, so that even a client that got nothing yet can
resume from there. With ``last_id`` it is first sent what the broker still
holds after it. Then the held entries that were not sent yet follow, and
live delivery takes over. Every connection keeps the id it last got (its
cursor), and nothing at or below it is sent again: none twice, none missing.

Every note is a JSON object with ``note`` (what happened: ``subscribed``,
``gap``, ``ahead``), ``text`` (a sentence saying so) and ``last_id`` (the
id to resume after from now on, as for a published message).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..backoff import backoff_delays
from .broker import Bounds, Broker, BrokerError, Entry, MemoryBroker, check_topic, format_id, parse_id

if TYPE_CHECKING:
    from ..metrics import Metrics
from ..closing import CloseCode
from ..connection import Connection, broadcast
from ..request import Request

log = logging.getLogger("wsthreads.server")

#: Topics one connection may subscribe to.
MAX_TOPICS = 32
#: Entries one read of the follower takes at most.
READ_BATCH = 1000
#: Entries one read of a replay takes at most (held in memory while they are sent).
REPLAY_BATCH = 100
#: Replays that may run at once in one app: each reads the log of every topic after its last id.
MAX_REPLAYS = 8
#: Held entries a subscription may queue at once when it goes live; with more, it replays again.
GO_LIVE_BATCH = 100
#: Replay rounds before a subscription goes live with whatever is held (its outbox's limit applies).
MAX_ROUNDS = 10
#: Seconds between two trims of the log by the follower.
TRIM_INTERVAL = 1.0
#: Seconds one read of the follower waits for new entries: how long stopping it may take.
FOLLOW_WAIT = 0.5
#: Seconds between two wake-ups of an in-process follower that is stopping.
WAKE_AGAIN = 0.05
#: Seconds a new subscriber waits for the follower to find where the log ends.
START_TIMEOUT = 3.0
#: Live entries held for one replaying connection; past that, it reads them from the broker again.
MAX_HELD = 10_000
#: First and largest delay between two tries to reach a broker that went away (seconds).
RETRY = (0.1, 5.0)

#: ``may_subscribe(user, topic)``: whether the authenticated ``user`` may read ``topic``.
MaySubscribe = Callable[[Any, str], bool]


@dataclasses.dataclass(frozen=True)
class Subscription:
    """What the request asked for: its topics (no repeats, in order) and where to resume, if anywhere."""

    topics: tuple[str, ...]
    last_id: str | None = None


def requested_subscription(request: Request) -> Subscription | None:
    """The subscription in the request's query (None: no ``topic``), else ValueError saying why not."""
    topics = request.query.getlist("topic")
    last_ids = request.query.getlist("last_id")
    if not topics:
        if last_ids:
            raise ValueError("last_id needs a topic: /ws?topic=NAME&last_id=ID")
        return None
    if len(last_ids) > 1:
        raise ValueError("last_id is given more than once")
    unique = tuple(dict.fromkeys(topics))
    if len(unique) > MAX_TOPICS:
        raise ValueError(f"too many topics: at most {MAX_TOPICS}")
    for topic in unique:
        check_topic(topic)
    if last_ids:
        parse_id(last_ids[0])
    return Subscription(unique, last_ids[0] if last_ids else None)


#: The fields of a published message as a subscriber gets it, and of each kind of note.
MESSAGE_FIELDS = {"topic", "id", "data"}
NOTES = {
    "subscribed": {"note", "text", "last_id"},
    "gap": {"note", "text", "last_id", "first_id"},
    "ahead": {"note", "text", "last_id"},
}


def message_of(entry: Entry) -> str:
    """The text message a subscriber gets for one entry."""
    return json.dumps({"topic": entry.topic, "id": entry.id, "data": entry.data}, ensure_ascii=False)


def note(kind: str, text: str, last_id: str, **details: str) -> str:
    """A note to a subscriber about where its messages start (see the module's docstring)."""
    return json.dumps({"note": kind, "text": text, "last_id": last_id, **details}, ensure_ascii=False)


class TooManyReplays(BrokerError):
    """No replay slot came free in time (see :data:`MAX_REPLAYS`)."""


class Subscriber:
    """One connection's subscription, while it lasts. Its fields are guarded by the fan-out's lock."""

    def __init__(self, conn: Connection, subscription: Subscription) -> None:
        self.conn = conn
        self.topics = frozenset(subscription.topics)
        self.last_id = subscription.last_id
        #: The id of the last entry sent, once live.
        self.cursor = (0, 0)
        #: Where the log was delivered up to when it subscribed: every later entry reaches it.
        self.start = (0, 0)
        #: True until :meth:`Fanout.catch_up` is over: live entries wait in ``held`` meanwhile.
        self.replaying = True
        #: Live entries that came during the replay; None once there were too many.
        self.held: list[Entry] | None = []

    def hold(self, entry: Entry) -> None:
        """Keep a live entry for after the replay (or give up on keeping them)."""
        if self.held is not None and len(self.held) >= MAX_HELD:
            self.held = None
        elif self.held is not None:
            self.held.append(entry)


class Fanout:
    """The follower of one broker's log for one app, and the connections it delivers to.

    With ``metrics``, it counts its deliveries, their latency, and the broker's returns.
    """

    def __init__(self, broker: Broker, metrics: Metrics | None = None) -> None:
        self.broker = broker
        self._metrics = metrics
        self._lock = threading.Lock()  # guards everything below, and every Subscriber's fields
        self._topics: dict[str, set[Subscriber]] = {}
        self._follower: threading.Thread | None = None
        self._pid = 0
        self._ready = threading.Event()  # the follower knows where the log ends
        self._stop = threading.Event()
        self._delivered = (0, 0)  # the id of the last entry the follower has delivered
        self._replays = threading.BoundedSemaphore(MAX_REPLAYS)

    def subscribe(self, conn: Connection, subscription: Subscription) -> Subscriber:
        """Register ``conn`` for its topics: every entry not yet delivered will reach it.

        Live entries are held for it until :meth:`catch_up` has run. Raises
        BrokerError if the log's end cannot be found within
        :data:`START_TIMEOUT` (the broker is down).
        """
        self._start_following()
        if not self._ready.wait(START_TIMEOUT) or self._stop.is_set():  # close() sets ready too
            raise BrokerError(f"the broker at {self.broker.where} is unavailable")
        subscriber = Subscriber(conn, subscription)
        with self._lock:
            subscriber.start = self._delivered
            for topic in subscriber.topics:
                self._topics.setdefault(topic, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Deliver nothing more to it."""
        with self._lock:
            for topic in subscriber.topics:
                subscribers = self._topics.get(topic, set())
                subscribers.discard(subscriber)
                if not subscribers:
                    self._topics.pop(topic, None)

    def catch_up(self, subscriber: Subscriber) -> None:
        """Begin the subscription: a note or the replay after ``last_id``, then live delivery.

        Runs in the session's thread, before its handler; each send waits
        for the client (bounded by ``write_timeout``). A ``last_id`` older
        than what is kept, or newer than any id, gets a note first. If the
        broker fails meanwhile, the session closes with 1013: the client
        comes back later with the last id it got.
        """
        conn = subscriber.conn
        try:
            if subscriber.last_id is None:
                start = format_id(subscriber.start)
                topics = ", ".join(sorted(subscriber.topics))
                conn.send(note("subscribed", f"subscribed to {topics}: messages after {start} follow", start))
                self._switch_to_live(subscriber, subscriber.start, replay=False)
            else:
                after = self._replay_start(conn, parse_id(subscriber.last_id))
                self._switch_to_live(subscriber, after, replay=True)
        except BrokerError as error:
            log.warning("%s: cannot replay: %s", conn.name, error, extra=conn.log_fields)
            busy = isinstance(error, TooManyReplays)
            conn.close(
                CloseCode.TRY_AGAIN_LATER,
                f"{'too many replays' if busy else 'the broker is unavailable'}: try again later",
            )

    def _switch_to_live(self, subscriber: Subscriber, after: tuple[int, int], replay: bool) -> None:
        """Replay after ``after`` (if ``replay``) until few live entries are held, then go live.

        When many came meanwhile (or more than :data:`MAX_HELD`), another
        round reads them from the broker, with waiting sends, rather than
        queueing them all at once; after :data:`MAX_ROUNDS` rounds it goes
        live anyway, and the outbox's limit decides.
        """
        for round_ in range(MAX_ROUNDS + 1):
            if replay:
                after = self._replay(subscriber, after)
            with self._lock:
                held = subscriber.held
                if held is not None and (len(held) <= GO_LIVE_BATCH or round_ == MAX_ROUNDS):
                    self._go_live(subscriber, after)
                    return
                subscriber.held = []
            replay = True

    def close(self) -> None:
        """Stop the follower, and subscriptions waiting for it.

        The in-process broker's read is woken at once; a Redis read ends within
        :data:`FOLLOW_WAIT` s or, with a broker that hangs, once it times out
        (``MAX_WAIT + REDIS_TIMEOUT``).
        """
        self._stop.set()
        self._ready.set()
        with self._lock:
            follower = self._follower
        if follower is None or follower is threading.current_thread():
            return
        deadline = time.monotonic() + FOLLOW_WAIT + 1.0
        while follower.is_alive() and time.monotonic() < deadline:
            # Again until it has ended: a follower between its stop check and its read
            # would miss a single wake-up and wait out its read.
            if isinstance(self.broker, MemoryBroker):
                self.broker.wake_readers()
            follower.join(WAKE_AGAIN)

    def _start_following(self) -> None:
        with self._lock:
            if self._pid == os.getpid() or self._stop.is_set():
                return
            # First use in this process (a worker forked after the app was made starts afresh).
            self._pid = os.getpid()
            self._ready.clear()
            self._follower = threading.Thread(target=self._follow, name="fanout", daemon=True)
            self._follower.start()

    def _follow(self) -> None:
        """The follower thread: read the log from its end as it grows; retry a lost broker, with backoff."""
        position: str | None = None
        retries: Iterator[float] | None = None
        trimmed_at = 0.0
        while not self._stop.is_set():
            try:
                if position is None:
                    position = self.broker.bounds().newest
                    with self._lock:
                        self._delivered = parse_id(position)
                    self._ready.set()
                entries = self.broker.read(position, READ_BATCH, FOLLOW_WAIT)
                if entries and time.monotonic() - trimmed_at >= TRIM_INTERVAL:
                    self.broker.trim()
                    trimmed_at = time.monotonic()
            except Exception as error:  # BrokerError, or a broker's bug: never end the follower
                if retries is None:
                    log.warning("%s; retrying", error if isinstance(error, BrokerError) else repr(error))
                    retries = backoff_delays(*RETRY)
                self._stop.wait(next(retries))
                continue
            if retries is not None:
                log.info("the broker at %s answers again", self.broker.where)
                retries = None
                if self._metrics is not None:
                    self._metrics.broker_back()
            if entries:
                self._deliver(entries)
                position = entries[-1].id

    def _deliver(self, entries: list[Entry]) -> None:
        with self._lock:
            for entry in entries:
                subscribers = self._topics.get(entry.topic)
                if not subscribers:
                    continue
                position = parse_id(entry.id)
                live = []
                for subscriber in subscribers:
                    if subscriber.replaying:
                        subscriber.hold(entry)
                    elif position > subscriber.cursor:
                        subscriber.cursor = position
                        live.append(subscriber.conn)
                if live:
                    queued = broadcast(live, message_of(entry))
                    if self._metrics is not None:
                        self._metrics.delivered("publish", queued)
                        self._metrics.published(time.time() - position[0] / 1000)  # ids start with ms
            self._delivered = parse_id(entries[-1].id)

    def _replay_start(self, conn: Connection, last: tuple[int, int]) -> tuple[int, int]:
        """Where the replay starts: after ``last``, or after the newest id if ``last`` is beyond it.

        (What retention dropped after ``last`` is noted by :meth:`_replay`.)
        """
        bounds = self.broker.bounds()
        last_id = format_id(last)
        newest = parse_id(bounds.newest)
        if last > newest:
            text = (
                f"last_id {last_id} is newer than any message (or the broker's log was recreated): "
                f"only messages after {bounds.newest} follow"
            )
            conn.send(note("ahead", text, bounds.newest))
            return newest
        return last

    def _note_gap(self, conn: Connection, last_id: str, bounds: Bounds) -> None:
        assert bounds.first is not None
        text = (
            f"messages after {last_id} older than {bounds.first} are no longer kept: "
            f"the replay starts at {bounds.first}"
        )
        conn.send(note("gap", text, last_id, first_id=bounds.first))

    def _replay(self, subscriber: Subscriber, after: tuple[int, int]) -> tuple[int, int]:
        """Send the subscriber's entries after ``after`` until the log ends; the last id read.

        One of at most :data:`MAX_REPLAYS` at a time in this app (a slot is
        waited for within :data:`START_TIMEOUT`). A note says when what came
        after the last id sent is no longer kept: before the first read, or
        between two reads when retention overtakes a slow replay.
        """
        if not self._replays.acquire(timeout=START_TIMEOUT):
            raise TooManyReplays(f"more than {MAX_REPLAYS} replays at once")
        try:
            while True:
                if after != (0, 0):  # has retention dropped what came after `after`?
                    bounds = self.broker.bounds()
                    if bounds.lost_after(after):
                        self._note_gap(subscriber.conn, format_id(after), bounds)
                entries = self.broker.read(format_id(after), REPLAY_BATCH)
                for entry in entries:
                    if entry.topic in subscriber.topics:
                        subscriber.conn.send(message_of(entry))
                if entries:
                    after = parse_id(entries[-1].id)
                if len(entries) < REPLAY_BATCH:
                    return after
        finally:
            self._replays.release()

    def _go_live(self, subscriber: Subscriber, after: tuple[int, int]) -> None:
        """Under the lock: queue the held entries the replay did not send, then deliver live."""
        assert subscriber.held is not None
        for entry in subscriber.held:
            position = parse_id(entry.id)
            if position > after:
                subscriber.conn.send_nowait(message_of(entry))
                after = position
        subscriber.cursor = after
        subscriber.replaying = False
        subscriber.held = []
