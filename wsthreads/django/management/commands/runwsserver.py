"""``python manage.py runwsserver [ADDRPORT]``: the project's pages and WebSockets on one port.

``runserver`` cannot serve a WebSocket: its server has no way to hand a
connection over. This command serves the same WSGI application
(``WSGI_APPLICATION``, where the endpoint is mounted) with wsthreads'
Werkzeug serving, and reloads on code changes as ``runserver`` does
(``--noreload`` to not). For development; in production, gunicorn with
wsthreads' worker (``gunicorn.conf.py``).
"""

from __future__ import annotations

import re
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.servers.basehttp import get_internal_wsgi_application
from django.utils import autoreload

from wsthreads.app import Mounted, WebSocketApp
from wsthreads.serving import start_server

ADDRPORT = re.compile(r"^(?:(?P<host>[\w.:-]+|\[[0-9a-fA-F:]+\]):)?(?P<port>\d+)$")


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no types
    help = "Serve the project's WSGI application, pages and WebSockets, for development."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addrport", nargs="?", default="127.0.0.1:8000", help="[HOST:]PORT (default 127.0.0.1:8000)"
        )
        parser.add_argument(
            "--noreload", action="store_false", dest="reload", help="do not reload on code changes"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        match = ADDRPORT.match(options["addrport"])
        if match is None:
            raise CommandError(f"{options['addrport']!r} is not a port or HOST:PORT")
        host, port = (match["host"] or "127.0.0.1").strip("[]"), int(match["port"])
        if options["reload"]:
            autoreload.run_with_reloader(self.serve, host, port, in_main_thread=False)
        else:
            self.serve(host, port, in_main_thread=True)

    def serve(self, host: str, port: int, in_main_thread: bool) -> None:
        """Serve until Ctrl+C (or, under the reloader, until the code changes)."""
        application = get_internal_wsgi_application()
        if not isinstance(application, (WebSocketApp, Mounted)):
            raise CommandError(
                "WSGI_APPLICATION has no WebSocket endpoint: in wsgi.py, application ="
                " ws.mount(get_wsgi_application()), with ws = wsthreads.create_app(...)"
            )
        try:
            server = start_server(application, host, port)
        except OSError as error:
            raise CommandError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        self.stdout.write(
            f"serving pages on {server.page_url} and WebSockets on {server.url}; Ctrl+C stops it"
        )
        if in_main_thread:
            server.serve_until_signal()
        else:  # the reloader's thread: its main thread watches the files, and ends the process
            threading.Event().wait()
