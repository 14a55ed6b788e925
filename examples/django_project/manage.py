#!/usr/bin/env python
"""Django's command-line utility for the example project.

DATABASE_URL=postgresql://user:pass@host/db python manage.py migrate
python manage.py runserver            # without DATABASE_URL: embedded PostgreSQL
python manage.py ledger tenant list
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
