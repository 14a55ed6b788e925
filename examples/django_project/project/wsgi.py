"""WSGI entry point, for gunicorn (or any WSGI server).

    cd examples/django_project
    DATABASE_URL=postgresql://... python manage.py migrate
    DATABASE_URL=postgresql://... gunicorn -k gthread -w 2 --threads 16 project.wsgi

Threads suit this app: each request spends its time waiting (on the work, or
on the database), and the ledger holds no lock while it waits.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_wsgi_application()
