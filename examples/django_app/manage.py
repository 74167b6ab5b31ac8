#!/usr/bin/env python
"""The Django example's manage.py: ``python manage.py migrate``, ``createsuperuser``, ``runwsserver``."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifier.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
