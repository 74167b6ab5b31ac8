"""The Django app that brings ``manage.py runwsserver``: add ``"wsthreads.django"`` to INSTALLED_APPS."""

from django.apps import AppConfig


class WsthreadsConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    name = "wsthreads.django"
    label = "wsthreads"
    verbose_name = "WebSockets (wsthreads)"
