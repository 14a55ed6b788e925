"""Where a benchmark runs: the server it is given, or one it starts, and a fresh database.

Every ``python -m bench.*`` takes ``--database-url`` (or
``LEDGER_BENCH_DATABASE_URL``); without one it starts an embedded PostgreSQL
for the run and deletes it afterwards. Benchmarks that create data of their
own work in a database of their own, dropped and created afresh each run, so
two runs never measure each other's leftovers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import psycopg
from sqlalchemy import make_url

import ledger
from ledger import embedded


@contextmanager
def server(url: str | None, name: str, settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """``url``, or the URL of an embedded server started (and removed) for this run.

    ``settings`` apply to the embedded server only (a given server is used as it is).
    """
    if url is not None:
        yield url
        return
    started = embedded.start(
        os.path.join(tempfile.mkdtemp(prefix=f"ledger-{name}-"), "data"),
        cleanup="delete",
        settings=dict(settings or {}),
    )
    try:
        yield started.url
    finally:
        started.stop()


@contextmanager
def fresh_database(
    url: str | None, name: str, settings: Mapping[str, str] | None = None
) -> Iterator[str]:
    """A newly created and migrated database ``ledger_<name>`` on :func:`server`; its URL."""
    with server(url, name, settings) as base:
        plain = make_url(base).set(drivername="postgresql")
        database = f"ledger_{name}"
        with psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{database}"')
        db_url = plain.set(database=database).render_as_string(hide_password=False)
        ledger.migrate(db_url)
        yield db_url
