"""The project's WSGI application: Django's pages, and the WebSocket endpoint on /ws.

Served by ``python manage.py runwsserver`` while developing, and in production by
``gunicorn -c gunicorn.conf.py -w 1 --chdir examples/django_app notifier.wsgi:application``
(from the repository's root; with Redis, ``WSTHREADS_BROKER=redis://...`` and more workers).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifier.settings")
django_application = get_wsgi_application()  # django.setup() first: the models below need it

from notifier.live import ws  # noqa: E402

application = ws.mount(django_application)
