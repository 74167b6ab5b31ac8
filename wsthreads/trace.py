"""A timeline of what every thread did, in the Trace Event Format (Perfetto, ``chrome://tracing``).

Go has ``go tool trace``; here ``--trace FILE`` (or :func:`start`) records,
per thread (one lane each, named as in the log):

* spans for the waits that matter: the reader blocked in ``recv``, a
  ``send`` under the wire lock, the sender's pause, the closing handshake,
  the server's shutdown;
* an instant for every message sent and received, with its text (cut to
  :data:`TEXT_LIMIT` characters) and size, and a flow arrow from the sent
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
import json
import os
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: Events kept at most; beyond, the oldest go (about 200 bytes each: 20 MB at most).
MAX_EVENTS = 100_000
#: Characters of a message's text kept in its event.
TEXT_LIMIT = 60


class Tracer:
    """The events of one process, bounded, and the names of the threads that made them."""

    def __init__(self, path: str | os.PathLike[str], max_events: int = MAX_EVENTS) -> None:
        self.path = Path(path)
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_events)
        self.threads: dict[int, str] = {}  # first name each thread had when it traced
        self.pid = os.getpid()

    def add(self, event: dict[str, Any]) -> None:
        """Record one event of the calling thread (any thread)."""
        thread = threading.current_thread()
        tid = thread.native_id or thread.ident or 0
        self.threads.setdefault(tid, thread.name)
        event.update(pid=self.pid, tid=tid)
        self.events.append(event)

    def document(self) -> dict[str, Any]:
        """The trace as a Trace Event Format object: thread names first, then the events."""
        names = [
            {"ph": "M", "name": "thread_name", "pid": self.pid, "tid": tid, "args": {"name": name}}
            for tid, name in list(self.threads.items())
        ]
        process = {"ph": "M", "name": "process_name", "pid": self.pid, "args": {"name": program_name()}}
        return {"traceEvents": [process, *names, *list(self.events)], "displayTimeUnit": "ms"}

    def write(self) -> None:
        """Write the file whole: to a temporary file first, then renamed over ``path``."""
        temporary = self.path.with_name(f".{self.path.name}.{self.pid}.tmp")
        temporary.write_text(json.dumps(self.document()))
        temporary.replace(self.path)


#: The tracer of this process while tracing; None (the default) when off.
_tracer: Tracer | None = None


def start(path: str | os.PathLike[str], max_events: int = MAX_EVENTS) -> None:
    """Trace this process from now on, into ``path`` (written by :func:`stop`)."""
    global _tracer
    _tracer = Tracer(path, max_events)


def stop() -> None:
    """Stop tracing and write the file (no-op when off)."""
    global _tracer
    tracer, _tracer = _tracer, None
    if tracer is not None:
        tracer.write()


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


def message(direction: str, data: str | bytes, flow: int | None) -> None:
    """A message ``sent`` or ``received``: an instant with its text and size, and one end of its arrow."""
    tracer = _tracer
    if tracer is None:
        return
    size = len(data.encode() if isinstance(data, str) else data)
    text = data if isinstance(data, str) else f"<binary, {size} bytes>"
    ts = now()
    name = f"{direction} message"
    args = {"text": text[:TEXT_LIMIT], "size": size}
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


def merge(paths: Sequence[str], out: str) -> None:
    """One timeline from several processes' traces (each keeps its own pid, so its own group)."""
    events: list[dict[str, Any]] = []
    for path in paths:
        events.extend(json.loads(Path(path).read_text())["traceEvents"])
    Path(out).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
