"""Django app: ``INSTALLED_APPS += ["ledger.contrib.django"]``.

Settings (all optional), in one prefixed object::

    SQL_LEDGER = {
        "DATABASE": "default",   # which Django database holds the ledger
        "SCHEMA": "ledger",      # PostgreSQL schema of the ledger tables
    }

``manage.py migrate`` creates and upgrades the ledger schema (each Django
migration of this app runs the alembic revision it mirrors).
:func:`get_ledger` returns a ledger whose operations run on Django's own
database connection, so they commit or roll back with ``transaction.atomic()``
and the app's model writes. For slow work, hold first, work outside any
transaction, and settle atomically with the app's rows::

    book = get_ledger()
    with book.hold(tenant, 250_000, ttl=30) as h:   # own short transaction
        actual = call_the_model()                   # no transaction, no lock
        with transaction.atomic():
            Job.objects.create(tenant=tenant, cost=actual)
            h.settle(actual)                        # on Django's connection

An exception, or leaving without settling, releases the hold; its TTL
returns the money if the process dies first. Reserving inside
``transaction.atomic()`` keeps the tenant's row locked until the block ends:
right only for short work that must be atomic with the reserve.

``manage.py ledger ...`` offers the CLI's commands, and the admin shows
tenants, open holds and certificates read-only.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import URL

from ..._executor import ForeignConnection
from ..._ledger import BoundLedger, Ledger

DEFAULTS = {"DATABASE": "default", "SCHEMA": "ledger"}


def ledger_settings() -> dict[str, str]:
    from django.conf import settings

    merged = {**DEFAULTS, **getattr(settings, "SQL_LEDGER", {})}
    unknown = set(merged) - set(DEFAULTS)
    if unknown:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"unknown SQL_LEDGER settings: {sorted(unknown)}")
    return merged


def database_url(alias: str | None = None) -> URL:
    """A SQLAlchemy URL for a Django database (for migrations and the CLI)."""
    from django.db import connections

    s: dict[str, Any] = connections[alias or ledger_settings()["DATABASE"]].settings_dict
    if "postgresql" not in s["ENGINE"]:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("sql-ledger needs a PostgreSQL database")
    host = s.get("HOST") or None
    socket_dir = host if host and host.startswith("/") else None
    return URL.create(
        "postgresql+psycopg",
        username=s.get("USER") or None,
        password=s.get("PASSWORD") or None,
        host=None if socket_dir else host,
        port=int(s["PORT"]) if s.get("PORT") else None,
        database=s.get("NAME"),
        # a Unix-socket directory travels as libpq's host parameter
        query={"host": socket_dir} if socket_dir else {},
    )


@cache
def _ledger(alias: str, schema: str) -> Ledger:
    # Its own engine serves only what cannot run on Django's connection.
    return Ledger(database_url(alias), schema=schema)


def get_ledger(alias: str | None = None) -> BoundLedger:
    """The ledger, running on Django's connection (and inside its atomic blocks)."""
    from django.db import connections, transaction

    conf = ledger_settings()
    alias = alias or conf["DATABASE"]
    foreign = ForeignConnection(
        cursor=lambda: connections[alias].cursor(),
        atomic=lambda: transaction.atomic(using=alias),
    )
    return BoundLedger(_ledger(alias, conf["SCHEMA"]), lambda: foreign)
