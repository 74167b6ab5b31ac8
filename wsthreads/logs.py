"""Log lines with their session's context, and a JSON format for log shippers.

Every line the library logs about a session carries that session's fields
as attributes of its record (``extra``): ``session`` (``conn-17``), and on a
server ``remote`` (the client's address, a trusted proxy's forwarded one),
``path`` and, once the ``authenticate`` hook has said who it is, ``user``.
Handlers get the same from ``conn.logger``. The text format shows none of
them (the thread's name, ``[conn-17-reader]``, says which session it is);
:class:`JsonFormatter` puts them all on every line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

#: The fields a session's lines carry, in the order JsonFormatter writes them.
SESSION_FIELDS = ("session", "remote", "user", "path")

#: What ``conn.logger`` logs to, unless you wrap a logger of your own.
handler_log = logging.getLogger("wsthreads.handler")


class SessionLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose lines carry one session's fields (``conn.logger``).

    ``SessionLogger(logging.getLogger("myapp"), conn.log_fields)`` does the
    same for a logger of your own. An ``extra`` given to one call adds to
    the fields.
    """

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Add the session's fields to the record's (Python 3.13's ``merge_extra``, on every version)."""
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def with_fields(record: logging.LogRecord, fields: Mapping[str, str]) -> logging.LogRecord:
    """``record`` carrying ``fields``, for a record made by hand (as the per-message lines are)."""
    record.__dict__.update(fields)
    return record


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, thread, logger, the session's fields, message.

    ``{"time": "2026-12-07T04:01:02.345Z", "level": "INFO", "thread":
    "conn-1-reader", "logger": "wsthreads", "session": "conn-1", "remote":
    "127.0.0.1", "path": "/ws", "message": "received: hello"}``; an
    exception's traceback goes in ``"exception"``, ``stack_info`` in
    ``"stack"``. Text that came from a peer is escaped as in the text
    format (the fields too), and JSON escapes the rest. Use it
    from a logging config (``"()": "wsthreads.logs.JsonFormatter"``) or
    ``--log-format json``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "thread": record.threadName,
            "logger": record.name,
        }
        for field in SESSION_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = str(value)
        line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line)  # ASCII: a lone surrogate from a peer cannot break the stream
