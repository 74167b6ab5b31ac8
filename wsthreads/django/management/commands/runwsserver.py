"""``python manage.py runwsserver [ADDRPORT]``: the project's pages and WebSockets on one port.

``runserver`` cannot serve a WebSocket: its server has no way to hand a
connection over. This command serves the same WSGI application
(``WSGI_APPLICATION``, where the endpoint is mounted) with wsthreads'
Werkzeug serving, and reloads on code changes as ``runserver`` does
(``--noreload`` to not). For development; in production, gunicorn with
wsthreads' worker (``gunicorn.conf.py``).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys
import threading
from typing import Any, NoReturn

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
        if match is None or not 0 <= int(match["port"]) <= 65535:
            raise CommandError(f"{options['addrport']!r} is not a port (0-65535) or HOST:PORT")
        host, port = (match["host"] or "127.0.0.1").strip("[]"), int(match["port"])
        if not options["reload"]:
            self.serve(host, port, under_reloader=False)
            return
        # The reloader's child ends by sys.exit() in its main thread (a code change, Ctrl+C):
        # atexit closes the sessions with 1001 then. SIGTERM ends it the same way.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        autoreload.run_with_reloader(self.serve, host, port, under_reloader=True)

    def serve(self, host: str, port: int, under_reloader: bool) -> None:
        """Serve until Ctrl+C or SIGTERM (under the reloader, or until the code changes)."""
        try:
            server = start_server(wsgi_application(), host, port)
        except (OSError, OverflowError) as error:
            reason = getattr(error, "strerror", None) or error
            self.fail(CommandError(f"cannot listen on {host}:{port}: {reason}"), under_reloader)
        except CommandError as error:
            self.fail(error, under_reloader)
        self.stdout.write(
            f"serving pages on {server.page_url} and WebSockets on {server.url}; Ctrl+C stops it"
        )
        if not under_reloader:
            server.serve_until_signal()
            return
        atexit.register(server.shutdown)
        threading.Event().wait()  # the reloader's main thread watches the files, and ends the process

    def fail(self, error: CommandError, under_reloader: bool) -> NoReturn:
        """Stop with ``error``'s one line: raised, or, in the reloader's thread, where a raise
        would leave the process waiting for ever, written and the process ended."""
        if not under_reloader:
            raise error
        self.stderr.write(f"Error: {error}")
        os._exit(1)


def wsgi_application() -> WebSocketApp | Mounted:
    """WSGI_APPLICATION, which must be the WebSocketApp or the app it is mounted in, outermost."""
    application = get_internal_wsgi_application()
    if not isinstance(application, (WebSocketApp, Mounted)):
        raise CommandError(
            "WSGI_APPLICATION must be the WebSocket endpoint mounted in Django, outermost: in wsgi.py,"
            " application = ws.mount(get_wsgi_application()), any WSGI middleware inside the mount"
        )
    return application
