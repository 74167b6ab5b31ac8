"""What the article's two programs share, and nothing else.

* :class:`Sender`: the article's per-connection behaviour, the same on both
  sides: the reader prints every message (Go: ``reader(conn)``), and the
  session's own thread sends COUNT messages with a pause between two
  (Go: the loop with ``time.Sleep``).
* The programs' plumbing: log lines as ``time [thread] event``, one-line
  errors, the option types.

The WebSocket machinery itself is the ``wsthreads`` package; this module
and the two programs import it, never the other way round.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

from wsthreads import trace
from wsthreads.client import RESERVED_HEADERS
from wsthreads.closing import Closed
from wsthreads.connection import Connection, Message, log_message, message_log
from wsthreads.handshake import check_header, is_token
from wsthreads.lines import shown_path
from wsthreads.logs import JsonFormatter
from wsthreads.settings import MAX_SECONDS, RATES

log = logging.getLogger("wsthreads.program")

#: Messages each side sends, and the pause between two of them (seconds).
DEFAULT_COUNT = 5
DEFAULT_INTERVAL = 1.0
#: --log-format's choices, the default first.
LOG_FORMATS = ("text", "json")


def message_text(label: str, number: int, count: int) -> str:
    """The text of the sender's message ``number`` out of ``count``."""
    return f"{label} message {number} of {count}"


def send_messages(conn: Connection, count: int, interval: float, label: str) -> None:
    """The article's sender: ``count`` messages, ``interval`` seconds apart.

    ``conn.stop.wait(interval)`` is the interruptible ``time.Sleep``: it
    returns at once when the session winds down, so a shutdown never waits
    out a pause. Returns early if the connection closes underneath.
    """
    for number in range(1, count + 1):
        if conn.stop.is_set():
            return
        text = message_text(label, number, count)
        try:
            conn.send(text)
        except Closed:
            return
        log_message("sent", text, conn.log_fields)
        if number < count:
            with trace.span("pause (stop.wait)", seconds=interval):
                stopping = conn.stop.wait(interval)
            if stopping:
                return


class Sender:
    """The article's session: print what arrives, send ``count`` messages ``interval`` apart."""

    def __init__(self, count: int, interval: float, label: str) -> None:
        self.count, self.interval, self.label = count, interval, label

    def on_message(self, conn: Connection, message: Message) -> None:
        """Nothing to add: the reader has printed it (Go: ``reader(conn)``)."""

    def run(self, conn: Connection) -> None:
        """Send the messages (Go: the loop with ``time.Sleep``)."""
        send_messages(conn, self.count, self.interval, self.label)


# --- Program plumbing: logging, options, signals --------------------------------


class _LineFormatter(logging.Formatter):
    """``time [thread] event``, with the clock's text made once a second, not once a line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d [%(threadName)s] %(message)s", datefmt="%H:%M:%S")
        self._clock = (-1, "")  # (second, its text): one attribute, so threads never see half of it

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second, text = self._clock
        if int(record.created) != second:
            text = time.strftime(self.datefmt or "", self.converter(record.created))
            self._clock = (int(record.created), text)
        return text


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def setup_logging(level: int = logging.INFO, quiet: bool = False, log_format: str = "text") -> None:
    """Log lines as ``time [thread] event``: events to stdout, errors to stderr.

    ``log_format="json"``: one JSON object per line instead, with the session's
    fields (:class:`wsthreads.logs.JsonFormatter`).

    Both streams are line-buffered (a program reading our stdout through a
    pipe sees each line at once) and never fail on characters the terminal
    cannot encode. ``quiet`` leaves out the line for every message.
    """
    message_log.setLevel(logging.WARNING if quiet else logging.NOTSET)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True, errors="backslashreplace")
    formatter = JsonFormatter() if log_format == "json" else _LineFormatter()
    events = logging.StreamHandler(sys.stdout)
    events.addFilter(_BelowWarning())
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.WARNING)
    root = logging.getLogger()
    for handler in (events, errors):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)


def fail(prog: str, message: str, status: int = 1) -> NoReturn:
    """Print one line on stderr and exit: the programs' only way to fail."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see --help)`` and exit 2, without the usage block."""
        fail(self.prog, f"{message} (see --help)", status=2)


Number = TypeVar("Number", int, float)


def parsed(text: str, kind: Callable[[str], Number], what: str) -> Number:
    """``kind(text)``, or the option's one-line error: ``not a whole number: 'x'``."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def count_arg(text: str) -> int:
    """argparse type: a whole number >= 0."""
    value = parsed(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seconds_arg(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    value = parsed(text, float, "a number of seconds")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    if value > MAX_SECONDS:  # past this, a deadline overflows the clock
        raise argparse.ArgumentTypeError(f"is too large (at most 1e9 seconds), got {text}")
    return value


def positive_seconds_arg(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = seconds_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def limit_arg(text: str) -> int:
    """argparse type: a whole number >= 1 (a limit; leaving the option out means none)."""
    value = parsed(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be 1 or more (leave the option out for no limit), got {value}"
        )
    return value


def rate_arg(text: str) -> float:
    """argparse type: a rate a second, within wsthreads.settings.RATES (left out: no limit)."""
    value = parsed(text, float, "a number")
    low, high = RATES
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(
            f"must be from {low:g} to {high:g} (leave the option out for no limit), got {text[:40]}"
        )
    return value


def subprotocol_arg(text: str) -> str:
    """argparse type: a subprotocol name (an RFC 7230 token: no spaces, commas or quotes)."""
    if not is_token(text):
        raise argparse.ArgumentTypeError(f"not a valid subprotocol name: {text!r}")
    return text


def header_arg(text: str) -> tuple[str, str]:
    """argparse type: ``"Name: value"``, a header for the opening handshake (see ``check_header``)."""
    name, colon, value = text.partition(":")
    if not colon:
        raise argparse.ArgumentTypeError(f"not a header 'Name: value': {text!r}")
    value = value.strip(" \t")  # the optional white space around a field value (RFC 7230 3.2)
    try:
        check_header(name, value, RESERVED_HEADERS)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name, value


def add_common_options(parser: argparse.ArgumentParser, max_message_size: int, write_timeout: float) -> None:
    """The options both programs have."""
    parser.add_argument(
        "--quiet", action="store_true", help="do not print every message, only connections and closes"
    )
    parser.add_argument(
        "--count", type=count_arg, default=DEFAULT_COUNT, help=f"messages to send (default {DEFAULT_COUNT})"
    )
    parser.add_argument(
        "--interval",
        type=seconds_arg,
        default=DEFAULT_INTERVAL,
        help=f"seconds between two messages (default {DEFAULT_INTERVAL})",
    )
    parser.add_argument(
        "--echo", action="store_true", help="send every message back instead of sending our own"
    )
    parser.add_argument(
        "--max-message-size",
        type=count_arg,
        default=max_message_size,
        metavar="BYTES",
        help="largest message accepted; larger ones close with 1009; 0: no limit"
        f" (default {max_message_size})",
    )
    parser.add_argument(
        "--write-timeout",
        type=positive_seconds_arg,
        default=write_timeout,
        metavar="SECONDS",
        help=f"time one write may take; a peer that stops reading is dropped (default {write_timeout:g})",
    )
    parser.add_argument(
        "--compression",
        action="store_const",
        const="deflate",
        help="compress messages with permessage-deflate (RFC 7692) when the other side agrees;"
        " the 'connected' line says if it did",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=LOG_FORMATS[0],
        metavar="FORMAT",
        help="text (time [thread] event) or json (one JSON object per line, with the session's id,"
        " address, user and path) (default text)",
    )
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="at exit, write a timeline of every thread to FILE (Trace Event Format: open it in"
        f" {trace.OPEN_WITH})",
    )


@contextlib.contextmanager
def tracing(prog: str, path: str | None) -> Iterator[None]:
    """Trace the ``with`` block into ``path`` (if given); the file is written at its end, Ctrl+C or not."""
    if path is None:
        yield
        return
    if not path:
        fail(prog, "--trace needs a file name", status=2)
    try:
        Path(path).write_text('{"traceEvents": []}')  # fails now, not after the whole run
    except OSError as error:
        fail(prog, f"cannot write the trace to {shown_path(path)}: {error.strerror or error}")
    trace.start(path)
    try:
        yield
    finally:
        try:
            written = trace.stop()
        except OSError as error:  # the directory went away, the disk is full
            fail(prog, f"cannot write the trace to {shown_path(path)}: {error.strerror or error}")
        if written is not None:
            log.info("%s", written.summary())
