"""The WebSocket side: each logged-in user follows the topic ``user.<id>``; views publish to it."""

import os
from typing import Any

from django.contrib.auth import get_user_model

import wsthreads
from wsthreads.django import authenticate, closing_db


def may_subscribe(user: Any, topic: str) -> bool:
    """A user reads their own topic only."""
    return topic == f"user.{user.pk}"


def greet(conn: wsthreads.Connection) -> None:
    """One tab's session: say who it is (a query, in this thread), then stay until the tab goes."""
    name = get_user_model().objects.filter(pk=conn.user.pk).values_list("username", flat=True).get()
    conn.send(f"connected as {name}")
    for _message in conn:  # the page only listens
        pass


#: Topics for the pages, from a broker: None is this process's; redis://... for several workers.
pubsub = wsthreads.PubSub(os.environ.get("WSTHREADS_BROKER"), may_subscribe=may_subscribe)

ws = wsthreads.create_app(
    handler=closing_db(greet),  # the query's database connection is closed when the session ends
    authenticate=authenticate,  # the user of Django's session cookie, or 401
    extensions=[pubsub],  # /ws?topic=user.<id>: what the views publish
)
