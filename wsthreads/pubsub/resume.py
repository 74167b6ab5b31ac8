"""Resuming a subscription: where the client is, so that a redial misses nothing.

A subscription's place is the id of the last published message received.
The server's 101 says where a new subscription starts (:data:`LAST_ID_HEADER`,
so even a client cut before its first message knows); then each published
message comes as ``{"topic": ..., "id": ..., "data": ...}``, and notes carry
the ``last_id`` to resume after. A redial to ``/ws?topic=...&last_id=ID``
gets what was published meanwhile first (see :mod:`wsthreads.pubsub.fanout`).

:class:`Resume` is how a reconnecting :class:`~wsthreads.WebSocketClient`
does that: ``WebSocketClient(url, reconnect=True, resume=Resume)``. The client
makes one for itself: two clients sharing one would redial each other's place.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from ..connection import Connection, Message
from .broker import is_broker_id, parse_id
from .fanout import MESSAGE_FIELDS, NOTES

#: The 101's header that says where a new subscription starts.
LAST_ID_HEADER = "Wsthreads-Last-Id"


class Resume:
    """A subscription's place, kept across the sessions of one client (see the module).

    The client calls :meth:`next_url` before each dial, :meth:`opened` with each
    new connection and :meth:`seen` with each message, in its threads, one at a
    time. The topics and a first ``last_id`` come from the client's URL.

    Only the fan-out's own shapes move the place, and only forward (but for
    the ``ahead`` note, which corrects a place past the newest message): an
    app's JSON message that looks like one, by accident, cannot make the
    client miss messages or get them twice. A message counts as received
    once it arrived, even if ``on_message`` then raised: it is not sent again
    (a message that always fails would otherwise come back for ever).
    """

    def __init__(self) -> None:
        self._topics: frozenset[str] = frozenset()
        #: The id of the last published message received (or the URL's own ``last_id``).
        self.last_id: str | None = None

    def next_url(self, url: str) -> str:
        """The URL to dial now: ``url`` as it is, or with its ``last_id`` the last id received.

        Only the ``last_id`` parameter changes: the rest of the query goes as the
        caller wrote it (a signed query stays signed).
        """
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        self._topics = frozenset(value for key, value in query if key == "topic")
        if self.last_id is None:
            self.last_id = next((value for key, value in query if key == "last_id"), None)
            return url
        kept = [
            part for part in parts.query.split("&") if part and unquote_plus(part.split("=")[0]) != "last_id"
        ]
        kept.append(urlencode({"last_id": self.last_id}))
        return urlunsplit(parts._replace(query="&".join(kept)))

    def opened(self, conn: Connection) -> None:
        """A new subscription's connection is open: it starts after the id the server's 101 names."""
        start = conn.response_headers.get(LAST_ID_HEADER.lower())
        if start and is_broker_id(start):
            self.last_id = start

    def seen(self, message: Message) -> None:
        """Note where a published message of our topics or a note says to resume (others: left alone)."""
        if not (isinstance(message, str) and message.startswith(('{"topic":', '{"note":'))):
            return
        try:
            fields = json.loads(message)
        except ValueError:
            return
        if not isinstance(fields, dict):
            return
        topic, note = fields.get("topic"), fields.get("note")
        if fields.keys() == MESSAGE_FIELDS and isinstance(topic, str) and topic in self._topics:
            self._move(fields["id"])
        elif isinstance(note, str) and fields.keys() == NOTES.get(note):
            self._move(fields["last_id"], back=note == "ahead")

    def _move(self, last_id: object, back: bool = False) -> None:
        if not (isinstance(last_id, str) and is_broker_id(last_id)):
            return
        if (
            back
            or self.last_id is None
            or not is_broker_id(self.last_id)
            or parse_id(last_id) > parse_id(self.last_id)
        ):
            self.last_id = last_id
