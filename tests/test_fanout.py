"""Publish and subscribe through the in-process broker: topics, resume by last id, bad input, security.

Real servers on port 0, real connections; the peers are websockets' sync
client (an independent implementation) and our WebSocketClient. The same
fan-out runs on Redis in tests/test_redis_fanout.py.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from typing import Any

import pytest
from helpers import open_client, pubsub_of, wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import wsthreads
from wsthreads.closing import CloseCode
from wsthreads.pubsub import fanout
from wsthreads.pubsub.broker import MemoryBroker, RedisBroker, Retention, check_topic, parse_id
from wsthreads.pubsub.resume import Resume

WAIT = 10.0


@pytest.fixture
def broker() -> MemoryBroker:
    """A broker of this test's own (apps without one share the process's)."""
    return MemoryBroker()


@pytest.fixture
def serve(serve: Any, broker: MemoryBroker) -> Any:
    """``serve(**settings)`` (conftest's) with a PubSub on this test's broker unless the settings name one.

    ``broker`` and ``may_subscribe`` go to the PubSub, the other settings to the app.
    """

    def start(broker: Any = broker, may_subscribe: Any = None, **settings: Any) -> Any:
        return serve(extensions=[wsthreads.PubSub(broker, may_subscribe)], **settings)

    return start


def subscribe(server: wsthreads.RunningServer, query: str, **options: Any) -> ClientConnection:
    """A websockets client on ``/ws?QUERY``.

    Unbounded (``max_queue=None``) unless told: with messages left unread a
    bounded websockets client stops reading, so its close() would wait out
    close_timeout for a close frame it does not read.
    """
    options.setdefault("max_queue", None)
    client: ClientConnection = connect(f"{server.url}?{query}", open_timeout=WAIT, **options)
    # Entered here, as websockets >= 17.1 asks: some tests hold several clients outside a with.
    return client.__enter__()


def subscribed(server: wsthreads.RunningServer, query: str, **options: Any) -> ClientConnection:
    """A websockets client on ``/ws?QUERY`` (no last_id), past the note that says where it starts."""
    client = subscribe(server, query, **options)
    first = json.loads(client.recv(timeout=WAIT))
    assert first["note"] == "subscribed" and parse_id(first["last_id"]), first
    assert client.response is not None and client.response.headers["Wsthreads-Last-Id"] == first["last_id"]
    return client


def received(client: ClientConnection, count: int) -> list[dict[str, str]]:
    """The next ``count`` messages, as JSON objects."""
    return [json.loads(client.recv(timeout=WAIT)) for _ in range(count)]


def assert_nothing_more(client: ClientConnection, within: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        client.recv(timeout=within)


def close_of(client: ClientConnection) -> tuple[int | None, str | None]:
    """How the server closed: its code and reason."""
    with pytest.raises(ConnectionClosed) as ended:
        client.recv(timeout=WAIT)
    assert ended.value.rcvd is not None, "no close frame"
    return ended.value.rcvd.code, ended.value.rcvd.reason


@pytest.mark.slow
def test_each_subscriber_gets_its_topics_once_in_order_with_the_broker_id(serve: Any) -> None:
    server = serve()
    pubsub = pubsub_of(server)
    queries = ("topic=news", "topic=sports", "topic=news&topic=sports")
    news, sports, both = (subscribed(server, query) for query in queries)
    published = [
        (topic, pubsub.publish(topic, f"{topic} {i}"))
        for i in range(100)
        for topic in ("news", "sports", "x")
    ]
    wanted = {
        "news": [p for p in published if p[0] == "news"],
        "sports": [p for p in published if p[0] == "sports"],
        "both": [p for p in published if p[0] != "x"],
    }
    for name, client in (("news", news), ("sports", sports), ("both", both)):
        got = received(client, len(wanted[name]))
        assert [(m["topic"], m["id"]) for m in got] == wanted[name]
        assert all(
            m["data"] == f"{m['topic']} {i // (2 if name == 'both' else 1)}" for i, m in enumerate(got)
        )
        assert_nothing_more(client)
        client.close()


def test_a_message_published_once_the_client_has_the_101_reaches_it(serve: Any) -> None:
    """The subscription is registered before the 101 goes out: no window in which a publish is missed."""
    server = serve()
    for i in range(20):
        with subscribed(server, f"topic=race{i}") as client:
            entry_id = pubsub_of(server).publish(f"race{i}", "right after the handshake")
            assert json.loads(client.recv(timeout=WAIT))["id"] == entry_id


def test_resume_delivers_what_was_missed_then_live_none_twice_none_missing(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumes race a publisher: the switch from replay to live must lose and repeat nothing.

    Small batches and a small hold make every path run: several replay
    reads, and live messages that overflow the hold during the replay.
    """
    monkeypatch.setattr(fanout, "READ_BATCH", 7)
    monkeypatch.setattr(fanout, "MAX_HELD", 3)
    server = serve()
    pubsub = pubsub_of(server)
    published: list[str] = []
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set() and len(published) < 5000:
            published.append(pubsub.publish("feed", str(len(published))))

    publisher = threading.Thread(target=publish, name="publisher")
    publisher.start()
    try:
        assert wait_until(lambda: len(published) > 300)
        for start in (10, 100, 250):
            with subscribe(server, f"topic=feed&last_id={published[start]}") as client:
                got = received(client, 200)
            assert [m["id"] for m in got] == published[start + 1 : start + 201]
            assert [m["data"] for m in got] == [str(n) for n in range(start + 1, start + 201)]
    finally:
        stop.set()
        publisher.join(WAIT)


def test_a_last_id_older_than_what_is_kept_gets_a_note_then_everything_kept(serve: Any) -> None:
    server = serve(broker=MemoryBroker(Retention(count=10)))
    ids = [pubsub_of(server).publish("kept", str(i)) for i in range(30)]
    with subscribe(server, f"topic=kept&last_id={ids[3]}") as client:
        first, *replayed = received(client, 11)
    assert first["note"] == "gap" and first["first_id"] == ids[20] and first["last_id"] == ids[3]
    assert first["text"] == (
        f"messages after {ids[3]} older than {ids[20]} are no longer kept: the replay starts at {ids[20]}"
    )
    assert [m["id"] for m in replayed] == ids[20:]


def test_a_last_id_within_what_is_kept_gets_no_note(serve: Any) -> None:
    server = serve(broker=MemoryBroker(Retention(count=10)))
    ids = [pubsub_of(server).publish("kept", str(i)) for i in range(30)]
    with subscribe(server, f"topic=kept&last_id={ids[20]}") as client:
        assert [m["id"] for m in received(client, 9)] == ids[21:]
        assert_nothing_more(client)


def test_a_last_id_ahead_of_every_message_gets_a_note_and_then_new_messages(serve: Any) -> None:
    server = serve()
    pubsub_of(server).publish("ahead", "before")
    with subscribe(server, "topic=ahead&last_id=99999999999999-0") as client:
        note = json.loads(client.recv(timeout=WAIT))
        assert note["note"] == "ahead" and note["last_id"] == pubsub_of(server).broker.bounds().newest
        assert note["text"].startswith(
            "last_id 99999999999999-0 is newer than any message (or the broker's log was recreated)"
        )
        entry_id = pubsub_of(server).publish("ahead", "after")
        assert json.loads(client.recv(timeout=WAIT)) == {"topic": "ahead", "id": entry_id, "data": "after"}


def test_last_id_zero_replays_everything_kept(serve: Any) -> None:
    server = serve()
    ids = [pubsub_of(server).publish("all", str(i)) for i in range(5)]
    with subscribe(server, "topic=all&last_id=0") as client:
        assert [m["id"] for m in received(client, 5)] == ids


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("topic=a%20b", "bad topic name 'a b': 1-100 letters, digits and . _ - : (e.g. news, user.42)"),
        ("topic=", "bad topic name '': 1-100 letters, digits and . _ - : (e.g. news, user.42)"),
        ("topic=" + "x" * 101, "bad topic name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx: 1-100 letters"),
        (
            "topic=news&last_id=yesterday",
            "malformed last_id 'yesterday': expected an id such as 1700000000000-0",
        ),
        ("topic=news&last_id=1-2-3", "malformed last_id '1-2-3': expected an id such as 1700000000000-0"),
        ("topic=news&last_id=99999999999999999999-0", "malformed last_id '99999999999999999999-0'"),
        ("last_id=1-0", "last_id needs a topic: /ws?topic=NAME&last_id=ID"),
        ("topic=news&last_id=1-0&last_id=2-0", "last_id is given more than once"),
        ("&".join(f"topic=t{i}" for i in range(33)), "too many topics: at most 32"),
    ],
)
def test_bad_subscriptions_close_with_1008_and_a_reason(serve: Any, query: str, reason: str) -> None:
    server = serve()
    with subscribe(server, query) as client:
        code, said = close_of(client)
    assert code == CloseCode.POLICY_VIOLATION
    assert said is not None and said.startswith(reason)
    assert len(said.encode()) <= 123


@pytest.mark.parametrize("name", ["nöws", "हिन्दी", "தமிழ்", "新闻"])
def test_letters_of_any_script_with_their_marks_make_a_topic(name: str) -> None:
    assert check_topic(name) == name


def test_a_topic_not_in_composed_form_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match=r"not in composed form \(Unicode NFC\)"):
        check_topic(unicodedata.normalize("NFD", "nöws"))


def test_a_topic_in_any_script_goes_through_the_url(serve: Any) -> None:
    """``?topic=nöws``: our client percent-encodes it, the server reads it back, the topic works."""
    server = serve()
    with wsthreads.WebSocketClient(f"{server.url}?topic=nöws") as client:
        assert json.loads(str(client.recv(timeout=WAIT)))["text"].startswith("subscribed to nöws:")
        entry_id = pubsub_of(server).publish("nöws", "hällo")
        published = json.loads(str(client.recv(timeout=WAIT)))
        assert published == {"topic": "nöws", "id": entry_id, "data": "hällo"}


def test_the_same_topic_twice_is_one_subscription(serve: Any) -> None:
    server = serve()
    with subscribed(server, "topic=twice&topic=twice") as client:
        entry_id = pubsub_of(server).publish("twice", "once")
        assert json.loads(client.recv(timeout=WAIT))["id"] == entry_id
        assert_nothing_more(client)


def test_per_user_topics_are_readable_only_by_their_user(serve: Any) -> None:
    """``authenticate`` says who; ``may_subscribe`` says which topics that user may read."""
    tokens = {"token-alice": "alice", "token-bob": "bob"}

    def authenticate(request: wsthreads.Request) -> str | None:
        return tokens.get(request.headers.get("Authorization", "").removeprefix("Bearer "))

    def may_subscribe(user: str, topic: str) -> bool:
        return topic in ("news", f"user.{user}")

    server = serve(authenticate=authenticate, may_subscribe=may_subscribe)

    def as_user(token: str, query: str) -> ClientConnection:
        return subscribe(server, query, additional_headers={"Authorization": f"Bearer {token}"})

    def subscribed_as(token: str, query: str) -> ClientConnection:
        return subscribed(server, query, additional_headers={"Authorization": f"Bearer {token}"})

    with as_user("token-alice", "topic=user.bob") as snooping:
        assert close_of(snooping) == (CloseCode.POLICY_VIOLATION, "not allowed to subscribe to 'user.bob'")
    with as_user("token-alice", "topic=news&topic=user.bob&last_id=0") as sneaking:
        assert close_of(sneaking) == (CloseCode.POLICY_VIOLATION, "not allowed to subscribe to 'user.bob'")
    alice = subscribed_as("token-alice", "topic=news&topic=user.alice")
    bob = subscribed_as("token-bob", "topic=user.bob")
    with alice, bob:
        for_bob = pubsub_of(server).publish("user.bob", "for bob only")
        for_alice = pubsub_of(server).publish("user.alice", "for alice only")
        assert [m["id"] for m in received(alice, 1)] == [for_alice]
        assert [m["id"] for m in received(bob, 1)] == [for_bob]
        assert_nothing_more(alice)
    with pytest.raises(Exception, match="401"):
        subscribe(server, "topic=news")


def test_a_failing_may_subscribe_hook_closes_with_1011_and_the_server_goes_on(serve: Any) -> None:
    def may_subscribe(user: object, topic: str) -> bool:
        raise RuntimeError("the permissions table is gone")

    server = serve(may_subscribe=may_subscribe)
    with subscribe(server, "topic=news") as client:
        assert close_of(client) == (1011, "internal error while checking the topics")
    with connect(server.url, open_timeout=WAIT) as plain:  # no topic: no hook, the session works
        assert plain.protocol.state.name == "OPEN"


def raw_subscriber(port: int, query: str) -> socket.socket:
    """A subscriber that never reads after the handshake, with a small receive buffer."""
    return open_client(port, receive_buffer=4096, path=f"/ws?{query}")


@pytest.mark.slow
def test_a_subscriber_that_does_not_read_delays_nobody_and_gets_1013(serve: Any) -> None:
    """Published messages go through each connection's bounded outbox, as broadcasts do."""
    server = serve(outbound_limit=256 * 1024)
    stuck = raw_subscriber(server.port, "topic=load")
    readers = [subscribed(server, "topic=load") for _ in range(5)]
    stuck_conn = next(c for c in server.app.connections() if c.sock.getpeername() == stuck.getsockname())
    try:
        payload = "x" * 4000
        ids: list[str] = []
        for _ in range(100):  # 8 MB in all, more than the stuck one's socket buffers and outbox hold
            batch = [pubsub_of(server).publish("load", payload) for _ in range(20)]
            for reader in readers:  # each batch reaches every reader at once, the stuck one or not
                assert [m["id"] for m in received(reader, len(batch))] == batch
            ids += batch
        assert wait_until(lambda: stuck_conn.done.is_set(), WAIT)
        # Asked to close with 1013; a peer that reads nothing cannot get even that frame: cut (1006).
        assert stuck_conn.closed is not None and stuck_conn.closed.code in (CloseCode.TRY_AGAIN_LATER, 1006)
    finally:
        stuck.close()
        for reader in readers:
            reader.close()


@pytest.mark.slow
def test_websocketclient_resumes_across_drops_and_restarts_nothing_lost(serve: Any) -> None:
    """reconnect=True with ?topic=: the redial carries the last id received (a drop, a 1001, a 1013).

    Each cut comes right after a publish, before the client may have got
    anything: the 101's Wsthreads-Last-Id is where it resumes then.
    """
    server = serve()
    app = server.app
    pubsub = pubsub_of(server)
    url = f"{server.url}?topic=resume"
    client = wsthreads.WebSocketClient(url, reconnect=True, backoff=(0.05, 0.2), resume=Resume)
    client.connect()
    published: list[str] = []
    try:
        for ending in ("drop", "1001", "1013", "drop"):
            published += [
                pubsub.publish("resume", str(n)) for n in range(len(published), len(published) + 50)
            ]
            assert wait_until(lambda: len(app.connections()) == 1)
            cut = app.connections()
            cut[0].abort() if ending == "drop" else cut[0].close(int(ending))
            published += [
                pubsub.publish("resume", str(n)) for n in range(len(published), len(published) + 50)
            ]
            assert wait_until(lambda: app.connections() not in ([], cut), WAIT)  # noqa: B023
        published += [pubsub.publish("resume", str(n)) for n in range(len(published), len(published) + 50)]
        messages: list[dict[str, str]] = []
        while len([m for m in messages if "id" in m]) < len(published):
            messages.append(json.loads(client.recv(timeout=WAIT)))
        # A note opens the first session, if the client got it before the cut; the others resume.
        assert [m["note"] for m in messages if "note" in m] in ([], ["subscribed"])
        assert [m["id"] for m in messages if "id" in m] == published
        with pytest.raises(TimeoutError):
            client.recv(timeout=0.3)
        assert isinstance(client.resume, Resume) and client.resume.last_id == published[-1]
    finally:
        client.close()


def test_a_client_resumes_only_when_asked_to_not_because_of_its_urls_shape(serve: Any) -> None:
    """Without ``resume`` a redial asks for the same URL again: a subscription afresh, no last_id.
    With it, the redial carries the last id received."""
    server = serve()
    app = server.app
    url = f"{server.url}?topic=asked"
    for resume in (None, Resume):
        with wsthreads.WebSocketClient(url, reconnect=True, backoff=(0.05, 0.2), resume=resume) as client:
            note = json.loads(client.recv(timeout=WAIT))
            assert wait_until(lambda: len(app.connections()) == 1)
            cut = app.connections()
            cut[0].abort()
            assert wait_until(lambda: app.connections() not in ([], cut), WAIT)  # noqa: B023
            redial = app.connections()[0].request
            assert redial is not None
            assert redial.query.getlist("last_id") == ([] if resume is None else [note["last_id"]])


def test_the_subscribed_note_is_where_a_client_that_got_nothing_resumes(serve: Any) -> None:
    server = serve()
    with subscribe(server, "topic=hole") as client:
        start = json.loads(client.recv(timeout=WAIT))
    assert (
        start["note"] == "subscribed"
        and start["text"] == f"subscribed to hole: messages after {start['last_id']} follow"
    )
    missed = [pubsub_of(server).publish("hole", str(i)) for i in range(3)]
    with subscribe(server, f"topic=hole&last_id={start['last_id']}") as client:
        assert [m["id"] for m in received(client, 3)] == missed
        assert_nothing_more(client)


def test_publish_without_a_broker_reaches_the_apps_of_this_process(serve: Any) -> None:
    server = serve(broker=None)
    with subscribed(server, "topic=in-process.test") as client:
        entry_id = wsthreads.publish("in-process.test", "from a cron-like function")
        assert json.loads(client.recv(timeout=WAIT)) == {
            "topic": "in-process.test",
            "id": entry_id,
            "data": "from a cron-like function",
        }


def test_the_article_server_keeps_its_demo_messages_plain_and_away_from_subscribers(serve: Any) -> None:
    """On the article's server a subscriber gets its topic only; a plain client, the plain demo messages."""
    sys.path.insert(0, str(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import sync_server

    server = wsthreads.start_server(sync_server.create_app(count=2, interval=0.05), "127.0.0.1", 0)
    try:
        with subscribed(server, "topic=demo") as subscriber, connect(server.url) as plain:
            entry_id = pubsub_of(server).publish("demo", "published")
            assert json.loads(subscriber.recv(timeout=WAIT)) == {
                "topic": "demo",
                "id": entry_id,
                "data": "published",
            }
            assert [plain.recv(timeout=WAIT) for _ in range(2)] == [
                "server message 1 of 2",
                "server message 2 of 2",
            ]
            assert_nothing_more(subscriber)
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("topic", "data", "error"),
    [
        ("a b", "x", "bad topic name 'a b'"),
        ("news", b"bytes", "a published message is text \\(str\\), not bytes"),
        ("news", "\ud800", "a published message must be valid text: surrogates not allowed"),
        ("news", "x" * (256 * 1024 + 1), "a published message may hold at most 262144 bytes: 262145"),
    ],
)
def test_publish_refuses_bad_input_with_one_line(topic: str, data: Any, error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        wsthreads.publish(topic, data)


@pytest.mark.slow
def test_the_publish_command_refuses_bad_input_with_one_line_and_status_1() -> None:
    cases = {
        ("--broker", "memory://", "--topic", "news", "x"): "an in-process broker lives in one process",
        ("--broker", "http://x", "--topic", "news", "x"): "the broker must be a redis://HOST:PORT/DB URL",
        ("--broker", "redis://127.0.0.1:1/0", "--topic", "a b", "x"): "bad topic name 'a b'",
        ("--broker", "redis://127.0.0.1:1/0?keep=soon", "--topic", "a", "x"): "keep must be a count",
        (
            "--broker",
            "redis://127.0.0.1:1/0",
            "--topic",
            "news",
            "x",
        ): "cannot reach the broker at redis://127",
    }
    for args, message in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "wsthreads", "publish", *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1, done
        assert done.stdout == ""
        assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr


def test_shutdown_stops_the_fanout_thread_without_waiting_out_its_read(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process broker wakes the follower's read: shutdown does not wait out FOLLOW_WAIT."""
    monkeypatch.setattr(fanout, "FOLLOW_WAIT", 30.0)
    server = serve()
    with subscribe(server, "topic=stopping"):
        assert any(t.name == "fanout" for t in threading.enumerate())
    followers = [t for t in threading.enumerate() if t.name == "fanout"]
    started = time.monotonic()
    server.shutdown()
    for follower in followers:
        follower.join(WAIT)
    assert not any(f.is_alive() for f in followers)
    assert time.monotonic() - started < 5  # not the 30 s of its read


@pytest.mark.parametrize(
    ("text", "count", "age"),
    [
        ("10000", 10000, None),
        ("1", 1, None),
        ("30s", None, 30),
        ("10m", None, 600),
        ("2h", None, 7200),
        ("1d", None, 86400),
    ],
)
def test_retention_is_a_count_or_an_age(text: str, count: int | None, age: float | None) -> None:
    assert Retention.parse(text) == Retention(count=count, age=age)


@pytest.mark.parametrize(
    "text", ["0", "-1", "1.5", "10x", "m", "0s", "", "\u0663", "\uff11\uff10m", "\u00b2"]
)
def test_a_bad_retention_is_a_one_line_error(text: str) -> None:
    with pytest.raises(ValueError, match="keep must be a count"):
        Retention.parse(text)


def test_the_in_process_broker_keeps_messages_for_their_age(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    broker = MemoryBroker(Retention(count=None, age=30))
    old = broker.publish("aging", "old")
    now[0] += 20
    middle = broker.publish("aging", "middle")
    now[0] += 15  # "old" is 35 s old now, "middle" 15 s
    new = broker.publish("aging", "new")
    assert [entry.id for entry in broker.read("0-0", 10)] == [middle, new]
    assert broker.bounds().first == middle
    assert parse_id(old) < parse_id(middle) < parse_id(new)


def test_ids_keep_their_order_when_the_clock_stands_still(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    broker = MemoryBroker()
    ids = [broker.publish("same.ms", str(i)) for i in range(3)]
    assert ids == ["1700000000000-0", "1700000000000-1", "1700000000000-2"]


def test_fresh_subscribers_on_a_busy_topic_get_everything_after_their_start(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many live entries while a subscription begins: held ones overflow, and it replays them instead."""
    monkeypatch.setattr(fanout, "MAX_HELD", 3)
    monkeypatch.setattr(fanout, "GO_LIVE_BATCH", 2)
    server = serve()
    pubsub = pubsub_of(server)
    published: list[str] = []
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set() and len(published) < 500_000:
            published.append(pubsub.publish("busy", str(len(published))))
            time.sleep(0)  # let the subscriptions run too

    publisher = threading.Thread(target=publish, name="publisher")
    publisher.start()
    try:
        for _ in range(10):
            with subscribe(server, "topic=busy") as client:
                start = json.loads(client.recv(timeout=WAIT))["last_id"]
                got = [m["id"] for m in received(client, 100)]
            first = next(i for i, entry_id in enumerate(published) if parse_id(entry_id) > parse_id(start))
            assert got == published[first : first + 100]
    finally:
        stop.set()
        publisher.join(WAIT)


class OvertakenBroker(MemoryBroker):
    """A broker whose retention overtakes a replay: after the replay's first read, 100 more come."""

    def __init__(self) -> None:
        super().__init__(Retention(count=20))
        self.overtake = False

    def read(self, after: str, count: int, timeout: float = 0) -> list[Any]:
        entries = super().read(after, count, timeout)
        if self.overtake and timeout == 0:
            self.overtake = False
            for i in range(100):
                self.publish("fast", f"overtaking {i}")
        return entries


def test_retention_overtaking_a_replay_gets_a_gap_note(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "REPLAY_BATCH", 5)
    broker = OvertakenBroker()
    server = serve(broker=broker)
    ids = [broker.publish("fast", str(i)) for i in range(20)]
    broker.overtake = True
    with subscribe(server, f"topic=fast&last_id={ids[0]}") as client:
        messages = received(client, 5 + 1 + 20)
    assert [m["id"] for m in messages[:5]] == ids[1:6]  # the first read, before it was overtaken
    gap = messages[5]
    assert gap["note"] == "gap" and gap["last_id"] == ids[5], gap
    kept = broker.read("0-0", 100)
    assert gap["first_id"] == kept[0].id
    assert [m["id"] for m in messages[6:]] == [entry.id for entry in kept]


@pytest.mark.slow
def test_replays_beyond_the_limit_wait_then_get_1013(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay holds one of MAX_REPLAYS slots: a client that reads nothing cannot make the rest wait long."""
    monkeypatch.setattr(fanout, "MAX_REPLAYS", 1)
    monkeypatch.setattr(fanout, "START_TIMEOUT", 0.5)
    server = serve(write_timeout=5.0)
    ids = [
        pubsub_of(server).publish("big", "x" * 4000) for _ in range(2000)
    ]  # 8 MB: more than any buffer holds
    stuck = raw_subscriber(server.port, f"topic=big&last_id={ids[0]}")
    try:
        time.sleep(0.5)  # its replay has begun, and waits for it to read
        with subscribe(server, f"topic=big&last_id={ids[-2]}") as second:
            assert close_of(second) == (CloseCode.TRY_AGAIN_LATER, "too many replays: try again later")
    finally:
        stuck.close()


def test_a_closed_fanout_does_not_keep_a_subscriber_waiting() -> None:
    """The broker is down, a subscription waits for the follower: close() ends the wait at once."""

    class DownBroker(MemoryBroker):
        def bounds(self) -> Any:
            raise wsthreads.BrokerError("the broker at down is unavailable")

    hub = fanout.Fanout(DownBroker())
    failed: list[BaseException] = []

    def subscribe_now() -> None:
        try:
            hub.subscribe(None, fanout.Subscription(("news",)))  # type: ignore[arg-type]
        except wsthreads.BrokerError as error:
            failed.append(error)

    waiting = threading.Thread(target=subscribe_now, name="subscribing")
    waiting.start()
    time.sleep(0.2)
    began = time.monotonic()
    hub.close()
    waiting.join(WAIT)
    assert failed and time.monotonic() - began < 1.5


def test_a_closed_memory_broker_fails_reads_instead_of_spinning() -> None:
    broker = MemoryBroker()
    broker.close()
    with pytest.raises(wsthreads.BrokerError, match="closed"):
        broker.read("0-0", 10, timeout=1.0)


def test_resume_takes_only_the_servers_shapes() -> None:
    """The app's own JSON messages cannot move where a WebSocketClient resumes."""
    resume = Resume()
    assert resume.next_url("ws://h/ws?topic=news&topic=chat") == "ws://h/ws?topic=news&topic=chat"
    resume.seen('{"topic": "news", "id": "5-0", "data": "x"}')
    for app_message in (
        '{"topic": "chat", "id": "msg-7f3a", "data": "hello"}',  # not a broker id
        '{"topic": "weather", "id": "9-0", "data": "rain"}',  # not one of our topics
        '{"topic": "news", "id": "9-0", "data": "x", "author": "me"}',  # not our shape
        '{"topic": "news", "id": "9-0"',  # not JSON
        '{"topic": ["news"], "id": "9-0", "data": "x"}',  # a list: ignored, not a TypeError in the reader
        '{"note": ["ahead"], "text": "", "last_id": "9-0"}',
        '{"note": "maintenance at 5pm", "last_id": "9-0"}',  # not one of the fan-out's notes
        '{"note": "subscribed", "text": "...", "last_id": "1-0"}',  # its shape, but backwards
        '{"topic": "news", "id": "2-0", "data": "x"}',  # backwards: would bring messages twice
    ):
        resume.seen(app_message)
    assert resume.last_id == "5-0"
    resume.seen('{"note": "gap", "text": "...", "last_id": "5-0", "first_id": "6-0"}')  # says, not moves
    assert resume.last_id == "5-0"
    resume.seen('{"note": "ahead", "text": "...", "last_id": "7-0"}')
    assert resume.last_id == "7-0"
    assert resume.next_url("ws://h/ws?topic=news&topic=chat") == "ws://h/ws?topic=news&topic=chat&last_id=7-0"


def test_resume_starts_from_the_urls_last_id_and_replaces_it() -> None:
    """A URL's own last_id is the first place; later ids replace it, never a second last_id."""
    resume = Resume()
    url = "ws://h/ws?topic=news&last_id=3-0"
    assert resume.next_url(url) == url and resume.last_id == "3-0"
    resume.seen('{"topic": "news", "id": "4-0", "data": "x"}')
    assert resume.next_url(url) == "ws://h/ws?topic=news&last_id=4-0"


def test_resume_changes_only_the_last_id_of_the_query() -> None:
    """The rest of the query goes as written: a signature over it stays valid, a flag stays bare."""
    resume = Resume()
    url = "wss://h/ws?topic=news&flag&sig=a%20b%7E&t=%FF&last_id=1-0&x=1;y=2"
    assert resume.next_url(url) == url
    resume.seen('{"topic": "news", "id": "2-0", "data": "x"}')
    assert resume.next_url(url) == "wss://h/ws?topic=news&flag&sig=a%20b%7E&t=%FF&x=1;y=2&last_id=2-0"


def test_a_unix_socket_broker_url_keeps_its_path() -> None:
    pytest.importorskip("redis")
    broker = wsthreads.open_broker("unix:///run/redis/redis.sock?db=2&keep=5m&stream=app")
    assert isinstance(broker, RedisBroker)
    options = broker._redis.connection_pool.connection_kwargs
    assert options["path"] == "/run/redis/redis.sock" and options["db"] == 2
    assert broker.stream == "app" and broker.retention == Retention(count=None, age=300)


@pytest.mark.slow
def test_the_follower_retries_a_lost_broker_with_backoff_from_0_1_s() -> None:
    """Docs: "the followers retry with backoff (0.1 s, doubling to 5 s)", each wait half to all of that."""
    tries: list[float] = []

    class DownBroker(MemoryBroker):
        def bounds(self) -> Any:
            tries.append(time.monotonic())
            raise wsthreads.BrokerError("the broker at down is unavailable")

    assert fanout.RETRY == (0.1, 5.0)
    hub = fanout.Fanout(DownBroker())
    hub._start_following()
    try:
        assert wait_until(lambda: len(tries) >= 5, WAIT)
    finally:
        hub.close()
    waits = [later - earlier for earlier, later in itertools.pairwise(tries)][:4]
    for number, waited in enumerate(waits):
        ceiling = 0.1 * 2**number
        assert ceiling / 2 - 0.01 <= waited <= ceiling + 0.2, waits


def test_a_close_between_the_followers_stop_check_and_its_read_still_wakes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The follower has looked at its stop flag and not yet begun its read when close() wakes the
    readers: that wake-up finds nobody, so close() wakes again until the follower has ended."""
    monkeypatch.setattr(fanout, "FOLLOW_WAIT", 30.0)
    in_gap = threading.Event()

    class Gap(MemoryBroker):
        def read(self, after: str, count: int, timeout: float = 0) -> list[Any]:
            in_gap.set()
            time.sleep(0.2)  # the stop check is behind it, the read's wait not begun: close() lands here
            return super().read(after, count, timeout)

    hub = fanout.Fanout(Gap())
    hub._start_following()
    assert in_gap.wait(WAIT)
    began = time.monotonic()
    hub.close()
    assert time.monotonic() - began < 5  # not the 30 s of its read
    assert not any(t.name == "fanout" and t.is_alive() for t in threading.enumerate() if t is hub._follower)
