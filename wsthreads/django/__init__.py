"""WebSockets in a Django project: who connects, from Django's session; database connections closed.

Django runs WSGI, so the endpoint mounts in the project's own WSGI application
(``wsgi.py``)::

    from django.core.wsgi import get_wsgi_application
    import wsthreads
    from wsthreads.django import authenticate, closing_db

    ws = wsthreads.create_app(handler=closing_db(notifications), authenticate=authenticate)
    application = ws.mount(get_wsgi_application())

* :func:`authenticate` gives each session the user Django's session cookie
  names (``conn.user``): Django's own session engine and authentication
  backends decide, with ``SESSION_COOKIE_NAME`` and ``AUTH_USER_MODEL`` as
  the project sets them. An anonymous, expired or tampered session, or a
  user since deleted or whose password changed, gets 401.
* :func:`closing_db` closes the database connections the session's code
  opened, when it ends: Django opens one per thread and closes it at the
  end of a request, and a session is no request. Without it each session
  thread would keep one (Channels warns of the same for its sync consumers).
  Wrap any other hook that queries the database too (a PubSub's ``may_subscribe``).
* ``python manage.py runwsserver`` (add ``"wsthreads.django"`` to
  ``INSTALLED_APPS``) serves the project's WSGI application, pages and
  ``/ws`` on one port, reloading on code changes as ``runserver`` does:
  ``runserver`` itself cannot hand a connection over to a WebSocket.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.db import connections
from django.http.cookie import parse_cookie

from ..connection import Connection, Message
from ..request import Request
from ..session import Handler


class _ReadOnlySession:
    """A session as ``django.contrib.auth.get_user`` reads it, which a handshake must not change.

    ``get_user`` may rotate the session's key (after a ``SECRET_KEY``
    rotation) or flush it; a page does that and sends the new cookie, but
    no cookie can reach the browser over a WebSocket: the stored session
    would be gone, and the user logged out of the whole site.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        """Not kept."""

    def cycle_key(self) -> None:
        """Not done: the browser could not learn the new key."""

    def flush(self) -> None:
        """Not done: the pages decide when a session ends."""


class _SessionRequest:
    """What ``get_user`` reads of a request: its session."""

    def __init__(self, session: _ReadOnlySession) -> None:
        self.session = session


def authenticate(request: Request) -> Any:
    """The authenticated Django user of the handshake's session cookie; None (401) for anyone else.

    Read as Django reads it: the last cookie of that name, the project's
    session engine and authentication backends; the session itself is left
    as it is. A database error is the hook's failure (500, logged).
    """
    try:
        cookies = parse_cookie(request.environ.get("HTTP_COOKIE", ""))
    except ValueError:  # bytes no cookie can hold
        return None
    key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    try:
        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=key)
        user = auth.get_user(_SessionRequest(_ReadOnlySession(store)))  # backend, password hash
        return user if user.is_authenticated else None
    finally:
        connections.close_all()  # this request thread's, as Django does at a request's end


def closing_db(code: Any) -> Any:
    """``code``, closing the database connections it opens when it is done.

    A handler function, or any function (a PubSub's ``may_subscribe``, whose refusal
    ends the request before a handler runs): when it returns. A handler
    object: when ``run`` returns, and after each ``on_message`` too, since
    that runs in the netpoller's shared worker threads, which come and go
    (a connection kept there for ``CONN_MAX_AGE`` would outlive its thread).
    """
    if hasattr(code, "on_message"):
        return _ClosingHandler(code)
    function: Callable[..., Any] = code

    @functools.wraps(function)
    def closing(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return closing


class _ClosingHandler:
    """A handler object whose callbacks close the database connections they open."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def on_message(self, conn: Connection, message: Message) -> None:
        try:
            self.handler.on_message(conn, message)
        finally:
            connections.close_all()

    def run(self, conn: Connection) -> None:
        try:
            self.handler.run(conn)
        finally:
            connections.close_all()
