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
from django.db import close_old_connections, connections

from ..connection import Connection, Message
from ..request import Request
from ..session import Handler, SessionCode


class _SessionRequest:
    """What ``django.contrib.auth.get_user`` reads of a request: its session."""

    def __init__(self, session: Any) -> None:
        self.session = session


def authenticate(request: Request) -> Any:
    """The authenticated Django user of the handshake's session cookie; None (401) for anyone else."""
    key = request.cookies.get(settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    try:
        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=key)
        user = auth.get_user(_SessionRequest(store))  # checks the backend and the password's hash
        return user if user.is_authenticated else None
    finally:
        connections.close_all()  # this request thread's, as Django does at a request's end


def closing_db(handler: SessionCode) -> SessionCode:
    """``handler``, closing the database connections its code opens when that code is done.

    A handler function: when it returns. A handler object: its ``run`` when
    it returns, and after each ``on_message`` the connections Django would
    close after a request (``CONN_MAX_AGE``; all of them with the default, 0).
    """
    if callable(handler) and not hasattr(handler, "on_message"):
        function: Callable[[Connection], None] = handler

        @functools.wraps(function)
        def session(conn: Connection) -> None:
            try:
                function(conn)
            finally:
                connections.close_all()

        return session
    return _ClosingHandler(handler)  # type: ignore[arg-type]


class _ClosingHandler:
    """A handler object whose callbacks close the database connections they leave."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def on_message(self, conn: Connection, message: Message) -> None:
        try:
            self.handler.on_message(conn, message)
        finally:
            close_old_connections()

    def run(self, conn: Connection) -> None:
        try:
            self.handler.run(conn)
        finally:
            connections.close_all()
