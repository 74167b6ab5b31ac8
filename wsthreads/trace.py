"""A timeline of what every thread did, in the Trace Event Format (Perfetto, ``chrome://tracing``).

Go has ``go tool trace``; here ``--trace FILE`` (or :func:`start`) records,
per thread (one lane each, named as in the log):

* spans for the waits that matter: the reader blocked in ``recv``, a
  ``send`` under the wire lock, the sender's pause, the closing handshake,
  the server's shutdown;
* an instant for every message sent and received, with its text as the
  log line shows it (a long one cut to its first 200 characters) and its
  size, and a flow arrow from the sent
  message to the same message received when both ends trace (the arrow's
  id is made of the connection's ``Sec-WebSocket-Key``, which both ends
  know, the direction and the message's number).

Off (the default), every hook is one test of a module global: nothing is
recorded and no thread or file is made. On, events go to a ring of at most
:data:`MAX_EVENTS` (the oldest are dropped first), appended from any thread
without a lock (``deque.append`` is atomic), and :func:`stop` writes the
file once, whole, through a temporary file: it is valid JSON after Ctrl+C
too. Timestamps are ``time.monotonic()``, one clock for every process of a
machine, so the server's and the client's files merge into one timeline::

    python -m wsthreads merge-traces server.json client.json -o run.json
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .lines import shown_path

#: Events kept at most; beyond, the oldest go (about 500 bytes each: 25 MB at most).
MAX_EVENTS = 50_000


#: What opens a trace file.
OPEN_WITH = "ui.perfetto.dev or chrome://tracing"


class Written(NamedTuple):
    """A trace file just written: where, and how many events (lane names not counted)."""

    path: Path
    events: int
    full: bool = False  # the ring overflowed: older events were dropped

    def summary(self) -> str:
        """``trace written to server.json: 212 events; open it in ui.perfetto.dev or chrome://tracing``."""
        dropped = f" (the newest {self.events}: older ones were dropped)" if self.full else ""
        where = shown_path(str(self.path))
        return f"trace written to {where}: {self.events} events{dropped}; open it in {OPEN_WITH}"


class Tracer:
    """The events of one process, bounded, and the lanes they belong to.

    A lane is a thread under one name: a server thread that serves
    ``conn-1`` and later ``conn-4`` (gunicorn reuses its threads) gets a
    lane for each, as the log names them.
    """

    def __init__(self, path: str | os.PathLike[str], max_events: int = MAX_EVENTS) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_events)
        self.lanes: dict[tuple[int, str], int] = {}  # (thread id, name) -> lane number
        self._numbers = itertools.count(1)
        self._added = itertools.count()  # events ever added (next() is atomic: no lock)
        self.pid = os.getpid()

    def add(self, event: dict[str, Any]) -> None:
        """Record one event of the calling thread (any thread)."""
        thread = threading.current_thread()
        key = (thread.native_id or thread.ident or 0, thread.name)
        lane = self.lanes.get(key)
        if lane is None:
            if len(self.lanes) > self.max_events:  # many short-lived threads: keep lanes still in the ring
                self._forget_old_lanes()
            lane = self.lanes.setdefault(key, next(self._numbers))
        event.update(pid=self.pid, tid=lane)
        self.events.append(event)
        next(self._added)

    def _forget_old_lanes(self) -> None:
        used = {event["tid"] for event in list(self.events)}
        self.lanes = {key: lane for key, lane in self.lanes.copy().items() if lane in used}

    def document(self) -> dict[str, Any]:
        """The trace as a Trace Event Format object: lane names first, then the events."""
        events = list(self.events)
        used = {event["tid"] for event in events}
        names = [
            {"ph": "M", "name": "thread_name", "pid": self.pid, "tid": lane, "args": {"name": name}}
            for (_, name), lane in self.lanes.copy().items()  # copy(): atomic, even while threads add lanes
            if lane in used
        ]
        process = {"ph": "M", "name": "process_name", "pid": self.pid, "args": {"name": program_name()}}
        return {"traceEvents": [process, *names, *events], "displayTimeUnit": "ms"}

    def write(self) -> Written:
        """Write the file whole: to a temporary file first, then renamed over ``path``.

        A path that is not a regular file (a symlink, ``/dev/stdout``) is
        written in place instead, so that it stays what it is. OSError with
        the reason if it cannot be written; no temporary file is left.
        """
        document = self.document()
        events = sum(1 for event in document["traceEvents"] if event["ph"] != "M")
        written = Written(self.path, events, full=next(self._added) > self.max_events)
        text = json.dumps(document)
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            with open(self.path, "w") as out:
                out.write(text)
            return written
        temporary = self.path.with_name(f".trace-{self.pid}.tmp")
        try:
            temporary.write_text(text)
            temporary.replace(self.path)
        finally:
            temporary.unlink(missing_ok=True)
        return written

    def forked(self) -> None:
        """In a child process: a fresh trace of its own, next to the parent's file."""
        self.pid = os.getpid()
        self.events.clear()
        self.lanes.clear()
        self.path = self.path.with_name(f"{self.path.stem}.{self.pid}{self.path.suffix}")


#: The tracer of this process while tracing; None (the default) when off.
_tracer: Tracer | None = None


def start(path: str | os.PathLike[str], max_events: int = MAX_EVENTS) -> None:
    """Trace this process from now on, into ``path`` (written by :func:`stop`).

    A process forked meanwhile (gunicorn's workers, multiprocessing) traces
    into ``NAME.PID.json`` beside it.
    """
    global _tracer
    _tracer = Tracer(path, max_events)


def _after_fork() -> None:
    if _tracer is not None:
        _tracer.forked()


os.register_at_fork(after_in_child=_after_fork)


def stop() -> Written | None:
    """Stop tracing and write the file: what was written, None when off; OSError if it cannot be written."""
    global _tracer
    tracer, _tracer = _tracer, None
    return tracer.write() if tracer is not None else None


def active() -> bool:
    """True while tracing."""
    return _tracer is not None


def now() -> float:
    """The trace's clock, in microseconds."""
    return time.monotonic() * 1e6


@contextlib.contextmanager
def span(name: str, **args: Any) -> Iterator[None]:
    """A span of the calling thread's lane around the ``with`` block (nothing when off)."""
    started = begin()
    try:
        yield
    finally:
        end(started, name, **args)


def begin() -> float | None:
    """Start a span that ends elsewhere in the same thread: pass what this returns to :func:`end`."""
    return now() if _tracer is not None else None


def end(started: float | None, name: str, **args: Any) -> None:
    """End a span begun with :func:`begin` (nothing if tracing was off then, or is now)."""
    tracer = _tracer
    if tracer is not None and started is not None:
        duration = now() - started
        tracer.add({"ph": "X", "name": name, "cat": "wait", "ts": started, "dur": duration, "args": args})


def instant(name: str, **args: Any) -> None:
    """A moment in the calling thread's lane."""
    tracer = _tracer
    if tracer is not None:
        tracer.add({"ph": "i", "s": "t", "name": name, "cat": "event", "ts": now(), "args": args})


def message(direction: str, text: str, size: int, flow: int | None, ts: float | None = None) -> None:
    """A message ``sent`` or ``received``: an instant with its text (as its log line shows it) and
    size in bytes, and one end of its arrow."""
    tracer = _tracer
    if tracer is None:
        return
    ts = now() if ts is None else ts
    name = f"{direction} message"
    args = {"text": text, "size": size}
    tracer.add({"ph": "i", "s": "t", "name": name, "cat": "message", "ts": ts, "args": args})
    if flow is not None:
        phase = {"ph": "s"} if direction == "sent" else {"ph": "f", "bp": "e"}
        tracer.add({**phase, "name": "message", "cat": "message", "id": flow, "ts": ts})


def flow_id(key: str, client_to_server: bool, number: int) -> int:
    """The id both ends give message ``number`` of the connection with ``Sec-WebSocket-Key`` ``key``."""
    return zlib.crc32(f"{key} {'c2s' if client_to_server else 's2c'} {number}".encode())


def program_name() -> str:
    """The process's lane group name: the script and its pid."""
    return f"{Path(sys.argv[0]).name or 'python'} ({os.getpid()})"


def merge(paths: Sequence[str], out: str) -> Written:
    """One timeline from several processes' traces (each keeps its own pid, so its own group).

    Takes the object form (``{"traceEvents": [...]}``) and the array form.
    ValueError naming the file for one that is neither. Returns what was written.
    """
    events: list[Any] = []
    for path in paths:
        try:
            document = json.loads(Path(path).read_text())
        except ValueError as error:
            raise ValueError(f"{path} is not JSON: {error}") from None
        except RecursionError:
            raise ValueError(f"{path} is not a trace (nested too deep)") from None
        found = document.get("traceEvents") if isinstance(document, dict) else document
        if not isinstance(found, list) or not all(isinstance(event, dict) for event in found):
            raise ValueError(f"{path} is not a trace (no list of events in traceEvents)")
        events.extend(found)
    Path(out).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return Written(Path(out), sum(1 for event in events if event.get("ph") != "M"))
