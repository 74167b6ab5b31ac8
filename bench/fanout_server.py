"""The app bench/fanout.py serves: subscribers on ``/ws?topic=fanout``, and a publisher connection.

    gunicorn -c gunicorn.conf.py --pythonpath bench 'fanout_server:create_app(broker="redis://...")'

A connection with no topic is a publisher: every text message it sends is
published to :data:`TOPIC` with the app's ``PubSub`` (its broker: Redis, or
the in-process one of this worker). A subscriber sends nothing. No pings
(the benchmark's raw clients do not answer them), and room for more than
the default max_connections in one process.
"""

from __future__ import annotations

import wsthreads
from wsthreads import Connection, Message

#: The topic every subscriber reads and every published message goes to.
TOPIC = "fanout"
#: Sessions one process may hold: 1000 subscribers and a publisher, with room to spare.
MAX_CONNECTIONS = 2000


class Publish:
    """Publish every text message a client sends to :data:`TOPIC` through ``pubsub``."""

    def __init__(self, pubsub: wsthreads.PubSub) -> None:
        self.pubsub = pubsub

    def on_message(self, conn: Connection, message: Message) -> None:
        """In the connection's reader thread: one ``publish`` per message, in order."""
        assert isinstance(message, str)
        self.pubsub.publish(TOPIC, message)

    def run(self, conn: Connection) -> None:
        """Nothing of our own to send."""


def create_app(broker: str | None = None) -> wsthreads.WebSocketApp:
    """The WSGI app; ``broker`` as for :class:`wsthreads.PubSub` (None: in-process)."""
    pubsub = wsthreads.PubSub(broker)
    return wsthreads.create_app(
        handler=Publish(pubsub), extensions=[pubsub], ping_interval=None, max_connections=MAX_CONNECTIONS
    )
