"""Publish and subscribe: topics, brokers, the fan-out to connections, resuming by last id.

Its modules, one layer each:

* :mod:`wsthreads.pubsub.broker` — where published messages are kept, in order: in-process or Redis;
* :mod:`wsthreads.pubsub.fanout` — published messages to the subscribed connections of a process;
* :mod:`wsthreads.pubsub.extension` — :class:`PubSub`, which brings them to an app
  (``create_app(extensions=[PubSub(broker)])``) through the app's generic hooks;
* :mod:`wsthreads.pubsub.resume` — the client's side: where a subscription is, for the next dial;
* :mod:`wsthreads.pubsub.command` — ``python -m wsthreads publish``.

A client subscribes with the endpoint's query, ``/ws?topic=NAME``; a
publisher calls ``pubsub.publish`` or :func:`publish` from any process
reading the same broker. See ``docs/howto/publish.md``.
"""

from __future__ import annotations

from .broker import Broker, BrokerError, MemoryBroker, open_broker, publish
from .extension import PubSub
from .resume import Resume

__all__ = ["Broker", "BrokerError", "MemoryBroker", "PubSub", "Resume", "open_broker", "publish"]
