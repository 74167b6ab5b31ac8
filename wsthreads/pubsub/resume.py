"""Resuming a subscription: where the client is, so that a redial misses nothing.

A subscription's place is the id of the last published message received.
The server's 101 says where a new subscription starts (:data:`LAST_ID_HEADER`,
so even a client cut before its first message knows); then each published
message comes as ``{"topic": ..., "id": ..., "data": ...}``, and notes carry
the ``last_id`` to resume after. A redial to ``/ws?topic=...&last_id=ID``
gets what was published meanwhile first (see :mod:`wsthreads.pubsub.fanout`).

:class:`Resume` is what a reconnecting :class:`~wsthreads.WebSocketClient`
is given to do that: ``WebSocketClient(url, reconnect=True, resume=Resume())``.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..connection import Connection, Message
from .broker import is_broker_id

#: The 101's header that says where a new subscription starts.
LAST_ID_HEADER = "Wsthreads-Last-Id"


class Resume:
    """A subscription's place, kept across the sessions of one client (see the module).

    The client calls :meth:`next_url` before each dial, :meth:`opened` with each
    new connection and :meth:`seen` with each message, all in its threads, one
    at a time. Topics and a first ``last_id`` come from the client's URL.
    """

    def __init__(self) -> None:
        self._topics: frozenset[str] = frozenset()
        #: The id of the last published message received (or the URL's own ``last_id``).
        self.last_id: str | None = None

    def next_url(self, url: str) -> str:
        """The URL to dial now: ``url``'s subscription, resuming after the last id received."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        self._topics = frozenset(value for key, value in query if key == "topic")
        if self.last_id is None:
            self.last_id = dict(query).get("last_id")
        kept = [(key, value) for key, value in query if key != "last_id"]
        kept += [("last_id", self.last_id)] if self.last_id else []
        return urlunsplit(parts._replace(query=urlencode(kept)))

    def opened(self, conn: Connection) -> None:
        """A new subscription's connection is open: it starts after the id the server's 101 names."""
        start = conn.response_headers.get(LAST_ID_HEADER.lower())
        if start:
            self.last_id = start

    def seen(self, message: Message) -> None:
        """Note where a published message or a note says to resume (others: cheaply left alone).

        Only the server's shapes count: a message of one of our topics with a
        broker id, or a note; the app's own JSON messages are left alone.
        """
        if not (isinstance(message, str) and message.startswith(('{"topic":', '{"note":'))):
            return
        try:
            fields = json.loads(message)
        except ValueError:
            return
        if "note" in fields:
            resume_after = fields.get("last_id")
        elif fields.keys() == {"topic", "id", "data"} and fields["topic"] in self._topics:
            resume_after = fields["id"]
        else:
            return
        if isinstance(resume_after, str) and is_broker_id(resume_after):
            self.last_id = resume_after
