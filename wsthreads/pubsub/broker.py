"""Brokers: where published messages are kept, in order, for every process to read.

A broker holds one ordered log of ``(id, topic, data)`` entries for all
topics, so one id says how far a client got in all of its topics at once.
Ids are ``MILLISECONDS-SEQUENCE`` strings (``1700000000000-0``), ordered as
the pairs of numbers they hold. Two brokers, one interface (:class:`Broker`):

* :class:`MemoryBroker` — in this process only (the default: the demo and
  one-process apps need no Redis);
* :class:`RedisBroker` — a Redis stream (redis-py, synchronous), shared by
  every worker on every host: ``redis://HOST:PORT/DB``.

How much is kept is the URL's ``keep``: a count (``?keep=10000``, the
default) or an age (``?keep=30s``, ``10m``, ``2h``, ``1d``). Redis trims
approximately: at least that many (or that old) are kept.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import unicodedata
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Entries kept when the URL does not say.
DEFAULT_KEEP = 10_000
#: The Redis stream's key when the URL does not say (``?stream=NAME``).
DEFAULT_STREAM = "wsthreads"
#: Seconds to connect to Redis, and to wait for an answer beyond a blocking read's own wait.
REDIS_TIMEOUT = 2.0
#: The longest a blocking read waits (seconds); a hung Redis holds a reader for this plus REDIS_TIMEOUT.
MAX_WAIT = 1.0
#: The longest text one message may carry, in UTF-8 bytes.
MAX_DATA = 256 * 1024
#: The characters a topic name may hold besides letters, marks and digits of any script.
TOPIC_PUNCTUATION = "._-:"
#: The most characters in a topic name.
MAX_TOPIC = 100
# Answers stay bytes: we decode them ourselves, so that an entry another program wrote with
# invalid UTF-8 cannot stop a reader.
REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": REDIS_TIMEOUT,
    "health_check_interval": 30,
}
ID_PATTERN = re.compile(r"([0-9]{1,19})(?:-([0-9]{1,19}))?")
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RETENTION_PATTERN = re.compile(r"([0-9]{1,12})([smhd]?)")


class Entry(NamedTuple):
    """One published message: its id, its topic, its text."""

    id: str
    topic: str
    data: str


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a broker holds now: the oldest id kept (None: nothing), and the newest id it gave."""

    first: str | None
    newest: str

    def lost_after(self, last: tuple[int, int]) -> bool:
        """True if entries after ``last`` may be gone: ``last`` is older than everything kept.

        That is the case when retention dropped them, or when the log was
        recreated (a Redis restarted without its data). It may also be that
        ``last`` itself was the only one dropped: nothing tells the two apart.
        """
        return last != (0, 0) and self.first is not None and last < parse_id(self.first)


class BrokerError(Exception):
    """The broker cannot be reached or refused a command; the message is one line."""


class Broker(Protocol):
    """What the server's fan-out and ``publish`` need of a broker. Every method is thread-safe."""

    #: Where it is, for messages (without a password).
    where: str

    def publish(self, topic: str, data: str) -> str:
        """Append a message; its id. Raises BrokerError."""

    def read(self, after: str, count: int, timeout: float = 0) -> list[Entry]:
        """Up to ``count`` entries with ids after ``after``, oldest first.

        With ``timeout``, waits up to that many seconds for the first one
        (an empty list if none came). Raises BrokerError.
        """

    def bounds(self) -> Bounds:
        """The oldest id kept and the newest given. Raises BrokerError."""

    def trim(self) -> None:
        """Drop what retention lets go (if publishing does not already). Raises BrokerError."""

    def close(self) -> None:
        """Let go of connections, once no :meth:`read` waits (reads wait at most their timeout)."""


def check_topic(topic: object) -> str:
    """``topic`` if it is a valid topic name, else ValueError saying what one looks like.

    1 to 100 letters (with their marks: ``हिन्दी``) and digits of any script,
    and ``. _ - :``, starting with a letter or a digit; in Unicode's composed
    form (NFC), so that one name is one topic however it was typed.
    """
    if not isinstance(topic, str) or not is_topic_name(topic):
        shown = repr(topic)[:40]
        raise ValueError(f"bad topic name {shown}: 1-100 letters, digits and . _ - : (e.g. news, user.42)")
    if not unicodedata.is_normalized("NFC", topic):
        raise ValueError(f"bad topic name {repr(topic)[:40]}: not in composed form (Unicode NFC)")
    return topic


def is_topic_name(name: str) -> bool:
    """Letters, marks, digits and ``. _ - :``, 1 to 100 of them, the first a letter or a digit."""
    return (
        0 < len(name) <= MAX_TOPIC
        and unicodedata.category(name[0])[0] in "LN"
        and all(c in TOPIC_PUNCTUATION or unicodedata.category(c)[0] in "LMN" for c in name)
    )


def check_message(topic: object, data: object) -> None:
    """A message must have a valid topic and be text: UTF-8, at most MAX_DATA bytes (else ValueError)."""
    check_topic(topic)
    if not isinstance(data, str):
        raise TypeError(f"a published message is text (str), not {type(data).__name__}")
    try:
        size = len(data.encode())
    except UnicodeEncodeError as error:
        raise ValueError(f"a published message must be valid text: {error.reason}") from None
    if size > MAX_DATA:
        raise ValueError(f"a published message may hold at most {MAX_DATA} bytes: {size}")


def parse_id(text: str) -> tuple[int, int]:
    """The pair of numbers in an id (``5`` is ``5-0``), else ValueError."""
    match = ID_PATTERN.fullmatch(text)
    if match is None or int(match[1]) >= 1 << 64 or int(match[2] or 0) >= 1 << 64:
        shown = repr(text)[:40]
        raise ValueError(f"malformed last_id {shown}: expected an id such as 1700000000000-0")
    return int(match[1]), int(match[2] or 0)


def is_broker_id(text: str) -> bool:
    """True if ``text`` is an id, as :func:`parse_id` takes it."""
    try:
        parse_id(text)
    except ValueError:
        return False
    return True


def format_id(pair: tuple[int, int]) -> str:
    """The id of a pair of numbers."""
    return f"{pair[0]}-{pair[1]}"


@dataclasses.dataclass(frozen=True)
class Retention:
    """How much a broker keeps: the newest ``count`` entries, or those younger than ``age`` seconds."""

    count: int | None = DEFAULT_KEEP
    age: float | None = None

    @classmethod
    def parse(cls, text: str) -> Retention:
        """``10000`` (a count) or ``30s``, ``10m``, ``2h``, ``1d`` (an age), else ValueError."""
        match = RETENTION_PATTERN.fullmatch(text)
        if match and int(match[1]) > 0:
            number, unit = int(match[1]), match[2]
            return cls(count=None, age=number * AGE_UNITS[unit]) if unit else cls(count=number)
        raise ValueError(f"keep must be a count (10000) or an age (30s, 10m, 2h, 1d): {text!r}")


class MemoryBroker:
    """The broker of one process: a list under a lock. Ids come from the clock, as Redis makes them."""

    where = "memory"

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._entries: list[tuple[tuple[int, int], Entry]] = []
        self._newest = (0, 0)
        self._changed = threading.Condition()
        self._closed = False
        self._wakes = 0  # how many times waiting reads were told to return

    def publish(self, topic: str, data: str) -> str:
        """Append a message; its id."""
        check_message(topic, data)
        with self._changed:
            if self._closed:
                raise BrokerError("the in-process broker is closed")
            now = int(time.time() * 1000)
            ms, seq = self._newest
            self._newest = (now, 0) if now > ms else (ms, seq + 1)
            entry = Entry(format_id(self._newest), topic, data)
            self._entries.append((self._newest, entry))
            self._trim(now)
            self._changed.notify_all()
        return entry.id

    def read(self, after: str, count: int, timeout: float = 0) -> list[Entry]:
        """Up to ``count`` entries after ``after``; waits up to ``timeout`` s for the first."""
        position = parse_id(after)
        with self._changed:
            wakes = self._wakes
            self._changed.wait_for(
                lambda: self._closed or self._newest > position or self._wakes != wakes, timeout
            )
            if self._closed:
                raise BrokerError("the in-process broker is closed")
            start = self._index_after(position)
            return [entry for _, entry in self._entries[start : start + count]]

    def trim(self) -> None:
        """Nothing: publishing trims."""

    def wake_readers(self) -> None:
        """End the reads waiting now, with what they have (a follower that stops need not wait)."""
        with self._changed:
            self._wakes += 1
            self._changed.notify_all()

    def bounds(self) -> Bounds:
        """The oldest id kept and the newest given."""
        with self._changed:
            first = self._entries[0][1].id if self._entries else None
            return Bounds(first, format_id(self._newest))

    def close(self) -> None:
        """Wake every waiting read; later publishes fail."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _index_after(self, position: tuple[int, int]) -> int:
        low, high = 0, len(self._entries)
        while low < high:  # bisect on the ids (bisect's key= needs Python 3.10)
            middle = (low + high) // 2
            if self._entries[middle][0] <= position:
                low = middle + 1
            else:
                high = middle
        return low

    def _trim(self, now_ms: int) -> None:
        drop = 0
        if self.retention.count is not None:
            drop = max(len(self._entries) - self.retention.count, 0)
        if self.retention.age is not None:  # those published before now - age
            cutoff_ms = now_ms - int(self.retention.age * 1000)
            drop = max(drop, self._index_after((cutoff_ms - 1, 1 << 64)))
        del self._entries[:drop]


class RedisBroker:
    """A Redis stream as the broker: ``XADD`` with trimming, ``XREAD BLOCK`` and ``XRANGE`` to read.

    redis-py's connection pool is thread-safe; a blocking read holds one of
    its connections for at most its ``timeout`` (plus :data:`REDIS_TIMEOUT`).
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = DEFAULT_STREAM,
        retention: Retention | None = None,
        trims: bool = True,
    ) -> None:
        try:
            import redis
        except ImportError:
            raise BrokerError("a redis:// broker needs redis-py: pip install 'wsthreads[redis]'") from None
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self._unreachable: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)
        self.stream = stream
        self.retention = retention or Retention()
        #: Whether publishing trims too; :meth:`trim` always does (the servers' followers call it).
        self.trims = trims
        self.where = without_password(url)
        try:
            self._redis = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, **REDIS_OPTIONS)
            # Blocking reads on connections of their own, whose timeout outlasts the wait.
            waiting_timeout = MAX_WAIT + REDIS_TIMEOUT
            self._waiting = redis.Redis.from_url(url, socket_timeout=waiting_timeout, **REDIS_OPTIONS)
        except ValueError as error:
            raise ValueError(f"bad broker URL {self.where!r}: {error}") from None

    def publish(self, topic: str, data: str) -> str:
        """``XADD`` the message (trimming what retention lets go, if ``trims``); its id."""
        check_message(topic, data)
        trim = self._trim_options() if self.trims else {}
        return text(self._call(self._redis.xadd, self.stream, {"topic": topic, "data": data}, **trim))

    def trim(self) -> None:
        """``XTRIM`` to the retention (approximately: Redis drops whole nodes of its tree)."""
        self._call(self._redis.xtrim, self.stream, **self._trim_options())

    def _trim_options(self) -> dict[str, Any]:
        if self.retention.age is None:
            return {"maxlen": self.retention.count, "approximate": True}
        oldest_ms = max(int((time.time() - self.retention.age) * 1000), 0)
        return {"minid": f"{oldest_ms}-0", "approximate": True}

    def read(self, after: str, count: int, timeout: float = 0) -> list[Entry]:
        """``XRANGE`` after ``after`` (no wait), or ``XREAD BLOCK`` for ``timeout`` s (at most MAX_WAIT)."""
        if timeout <= 0:
            rows = self._call(self._redis.xrange, self.stream, f"({after}", "+", count=count)
        else:
            block = max(int(min(timeout, MAX_WAIT) * 1000), 1)
            streams = self._call(self._waiting.xread, {self.stream: after}, count=count, block=block)
            rows = streams[0][1] if streams else []
        return [entry_of(entry_id, fields) for entry_id, fields in rows]

    def bounds(self) -> Bounds:
        """From ``XINFO STREAM`` (a stream that does not exist yet holds nothing)."""
        try:
            info = self._call(self._redis.xinfo_stream, self.stream)
        except BrokerError as error:
            if "no such key" not in str(error):
                raise
            return Bounds(None, "0-0")
        first = info.get("first-entry")
        return Bounds(text(first[0]) if first else None, text(info["last-generated-id"]))

    def close(self) -> None:
        """Close the pools' idle connections (call it once no read waits: see :class:`Broker`)."""
        self._redis.close()
        self._waiting.close()

    def _call(self, command: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except self._unreachable as error:
            raise BrokerError(f"cannot reach the broker at {self.where}: {one_line(error)}") from None
        except self._errors as error:
            raise BrokerError(f"the broker at {self.where} failed: {one_line(error)}") from None


def text(value: bytes | str) -> str:
    """A field of a Redis answer as text; bytes that are not UTF-8 become U+FFFD."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def entry_of(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Entry:
    """An entry of a Redis answer (fields another program left out are empty)."""
    return Entry(text(entry_id), text(fields.get(b"topic", b"")), text(fields.get(b"data", b"")))


def one_line(error: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def without_password(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_broker(url: str | None) -> Broker:
    """The broker a URL names: ``redis://HOST:PORT/DB`` (or ``rediss://``, ``unix://``), ``memory://``.

    None, like ``memory://``, is a new in-process broker.

    The URL's query may hold ``keep`` (see :class:`Retention`) and, for
    Redis, ``stream`` (the stream's key); the rest goes to redis-py. The
    servers' followers trim a Redis stream to their ``keep`` (default
    10000); a publisher trims only if its URL gives ``keep`` itself.
    Raises ValueError for a URL of another kind or a bad ``keep``, and
    BrokerError when redis-py is missing. Connects to nothing yet.
    """
    if url is None:
        return MemoryBroker()
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    keep = options.pop("keep", None)
    retention = Retention() if keep is None else Retention.parse(keep)
    stream = options.pop("stream", DEFAULT_STREAM)
    if parts.scheme == "memory":
        return MemoryBroker(retention)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"the broker must be a redis://HOST:PORT/DB URL: {without_password(url)!r}")
    if not stream:
        raise ValueError("stream= must name the Redis stream's key")
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ValueError(f"the database is a number (redis://HOST:PORT/0): {without_password(url)!r}")
    # Only the query changes: urlunsplit would turn unix:///path into unix:/path.
    redis_url = url.split("?", 1)[0] + (f"?{urlencode(options)}" if options else "")
    return RedisBroker(redis_url, stream=stream, retention=retention, trims=keep is not None)


_shared: dict[str | None, Broker] = {}
_sharing = threading.Lock()


def shared_broker(url: str | None = None) -> Broker:
    """This process's broker for ``url``, opened once (None: the process's in-process broker).

    Apps created with the same URL, and :func:`publish`, share it: one
    in-process broker per process, one connection pool per Redis URL.
    """
    with _sharing:
        if url not in _shared:
            _shared[url] = open_broker(url)
        return _shared[url]


def publish(topic: str, data: str, broker: str | None = None) -> str:
    """Publish ``data`` to ``topic`` from any process (a Flask view, a cron job); the message's id.

    ``broker`` is the servers' broker URL (``redis://HOST:PORT/DB``); None
    publishes to this process's in-process broker, which the apps created
    here without one read. Raises BrokerError (one line) when the broker
    cannot be reached, ValueError for a bad topic name or URL.
    """
    return shared_broker(broker).publish(topic, data)
