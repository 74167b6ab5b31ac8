"""Pub/sub on an app: :class:`PubSub`, the extension that subscribes clients to topics.

``create_app(handler=..., extensions=[PubSub("redis://...")])``: a client
that asks for ``/ws?topic=NAME`` (and ``&last_id=ID`` to resume) gets every
message published to that topic, from any process reading the same broker,
once and in order (:mod:`wsthreads.pubsub.fanout`), beside whatever its
handler does. A request without ``topic`` is left alone.

As an :class:`~wsthreads.extension.Extension`, it checks and registers the
subscription before the 101 (so that whatever is published once the client
has the 101 reaches it), tells a new subscriber where it starts in the 101's
``Wsthreads-Last-Id`` header, sends what it missed as the session's first
step, and ends the subscription with the session.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from ..closing import CloseCode
from ..extension import Opening
from .broker import Broker, BrokerError, format_id, open_broker, shared_broker
from .fanout import Fanout, MaySubscribe, Subscriber, requested_subscription
from .resume import LAST_ID_HEADER

if TYPE_CHECKING:
    from ..app import WebSocketApp
    from ..connection import Connection

log = logging.getLogger("wsthreads.server")


class PubSub:
    """Topics for one app's clients, from a broker: an :class:`~wsthreads.extension.Extension`.

    Args:
        broker: where published messages come from (see
            :mod:`wsthreads.pubsub.broker`): ``redis://HOST:PORT/DB`` for
            every worker and host, or a broker object; None: this process's
            in-process broker (which :func:`wsthreads.publish` without a URL
            reaches). A bad URL is a ValueError here; it connects to nothing yet.
        may_subscribe: ``may_subscribe(user, topic)``, with what the app's
            ``authenticate`` returned (None without it): whether that user
            may read that topic; a refused one closes the session with 1008.
            None: any topic.

    One PubSub serves one app at a time.
    """

    def __init__(self, broker: str | Broker | None = None, may_subscribe: MaySubscribe | None = None) -> None:
        if isinstance(broker, str):
            open_broker(broker)  # a bad URL is a ValueError here, before any app starts
        elif broker is not None and not all(hasattr(broker, name) for name in ("publish", "read", "bounds")):
            raise TypeError(f"broker is a redis://HOST:PORT/DB URL, a broker object or None, not {broker!r}")
        if may_subscribe is not None and not callable(may_subscribe):
            raise TypeError(f"may_subscribe is a function may_subscribe(user, topic), not {may_subscribe!r}")
        #: Where :meth:`publish` sends and subscribers' messages come from.
        self.broker = shared_broker(broker) if broker is None or isinstance(broker, str) else broker
        self.may_subscribe = may_subscribe
        self._fanout: Fanout | None = None
        self._app: WebSocketApp | None = None

    def __repr__(self) -> str:
        return f"PubSub({getattr(self.broker, 'where', type(self.broker).__name__)!r})"

    def publish(self, topic: str, data: str) -> str:
        """Publish ``data`` to ``topic`` through this broker; the message's id.

        Every subscriber of ``topic``, in every process reading the same
        broker, gets it once. Raises BrokerError (one line) when the broker
        cannot be reached, ValueError for a bad topic name.
        """
        return self.broker.publish(topic, data)

    def start(self, app: WebSocketApp) -> None:
        """Follow the broker for ``app`` (its follower thread starts with the first subscriber)."""
        if self._fanout is not None and self._app is not app:
            raise ValueError(f"{self!r} already serves another app: make one PubSub per app")
        if sum(isinstance(extension, PubSub) for extension in app.config.extensions) > 1:
            raise ValueError("an app takes one PubSub: two would each deliver every message")
        if self._fanout is None:
            self._app = app
            self._fanout = Fanout(self.broker, app.metrics)

    def stop(self) -> None:
        """Stop following the broker: the app's shutdown has begun (a new start follows it afresh)."""
        fanout, self._fanout, self._app = self._fanout, None, None
        if fanout is not None:
            fanout.close()

    def open(self, conn: Connection) -> Opening:
        """The subscription the client asked for, registered; or how its session must close."""
        try:
            subscription = requested_subscription(conn.request)  # type: ignore[arg-type]
        except ValueError as error:
            return Opening(closing=(CloseCode.POLICY_VIOLATION, str(error)))
        if subscription is None:
            return Opening()
        fanout = self._fanout
        if fanout is None:  # stopped: the app's shutdown has begun, and it answers this request
            return Opening(closing=(CloseCode.GOING_AWAY, "the server is shutting down"))
        for topic in subscription.topics if self.may_subscribe is not None else ():
            try:
                allowed = self.may_subscribe(conn.user, topic)  # type: ignore[misc]
            except BaseException as error:  # SystemExit too: it would end the request with no answer
                log.error("the may_subscribe hook failed: %r", error, extra=conn.log_fields)
                return Opening(closing=(CloseCode.INTERNAL_ERROR, "internal error while checking the topics"))
            if not allowed:
                return Opening(closing=(CloseCode.POLICY_VIOLATION, f"not allowed to subscribe to {topic!r}"))
        try:
            subscriber = fanout.subscribe(conn, subscription)
        except BrokerError as error:
            log.warning("no subscription: %s", error, extra=conn.log_fields)
            return Opening(closing=(CloseCode.TRY_AGAIN_LATER, "the broker is unavailable: try again later"))
        return Opening(
            headers=starting_place(subscriber),
            first=functools.partial(fanout.catch_up, subscriber),
            end=functools.partial(fanout.unsubscribe, subscriber),
        )


def starting_place(subscriber: Subscriber) -> tuple[tuple[str, str], ...]:
    """Where a new subscriber's messages start, for the 101: a client cut before the first resumes there."""
    if subscriber.last_id is not None:
        return ()
    return ((LAST_ID_HEADER, format_id(subscriber.start)),)
