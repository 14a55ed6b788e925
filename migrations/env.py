"""Alembic environment for the ledger's own migration history.

It keeps its version table inside the ledger schema, so a host application's
alembic history (in ``public.alembic_version``) never collides with ours, and
it serialises concurrent migrations with an advisory lock.

Inputs, in order of precedence:
- ``config.attributes["connection"]`` (an ``Engine`` or a ``Connection``) and
  ``["schema"]``, as ``ledger.migrate`` and pytest-alembic pass them;
- ``-x url=... -x schema=...`` on the alembic command line;
- ``LEDGER_DATABASE_URL`` / ``LEDGER_SCHEMA`` in the environment.
Migration settings (docs/migrations.md) come from ``config.attributes`` or
``-x``: ``lock_timeout``, ``statement_timeout``, ``online_statement_timeout``,
``lock_attempts``, ``batch_size``.

How transactions go:
- a ``Connection`` already inside a transaction: everything runs in it and
  nothing commits (the caller commits); indexes are built plainly;
- otherwise (an ``Engine``, a URL, an idle ``Connection``): each revision
  commits on its own, and its online phases (``CREATE INDEX CONCURRENTLY``,
  batched backfills) run between transactions, so no long lock is held;
- offline (``--sql``): a script for ``psql -v ON_ERROR_STOP=1`` that creates
  the schema and leaves the transaction for online phases just the same.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from ledger import migrator
from ledger.tables import metadata

config = context.config
x_args = context.get_x_argument(as_dictionary=True)

schema = (
    config.attributes.get("schema")
    or x_args.get("schema")
    or os.environ.get("LEDGER_SCHEMA", "ledger")
)
if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", schema):
    raise SystemExit(f"invalid ledger schema name {schema!r}: use a lowercase SQL identifier")
config.attributes["ledger_schema"] = schema
for _name, _default in migrator.SETTINGS.items():
    _value = str(config.attributes.get(_name) or x_args.get(_name) or _default)
    config.attributes[f"ledger_{_name}"] = migrator.check_setting(_name, _value)

# What autogenerate compares against (`alembic revision --autogenerate`,
# pytest-alembic's test_model_definitions_match_ddl).
target_metadata = metadata(schema)


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Autogenerate looks at the ledger schema only, minus our version table."""
    if type_ == "schema":
        return name == schema
    if type_ == "table":
        return parent_names.get("schema_name") == schema and name != "alembic_version"
    return True


def _options() -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "version_table": "alembic_version",
        "version_table_schema": schema,
        "include_schemas": True,
        "include_name": include_name,
        "compare_type": True,
        "compare_server_default": True,
    }


def _url() -> str:
    url = (
        x_args.get("url")
        or os.environ.get("LEDGER_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit(
            "no database given: set LEDGER_DATABASE_URL or pass -x url=postgresql://..."
        )
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _check_encoding(connection: Connection) -> None:
    encoding = connection.execute(text("SHOW server_encoding")).scalar()
    if str(encoding).upper() not in ("UTF8", "UTF-8"):
        raise SystemExit(
            f"the ledger needs a UTF8 database (tenant ids sort by UTF-8 bytes); "
            f"this one is {encoding}"
        )


def _lock_key() -> dict[str, str]:
    return {"key": f"sql-ledger:{schema}"}


def _take_lock(connection: Connection, function: str, *, commit: bool) -> None:
    """Wait for the migration lock by polling, never inside a blocked statement.

    A statement blocked on a lock holds a snapshot, and CREATE INDEX
    CONCURRENTLY in the migrator that holds the lock waits for every older
    snapshot: waiting in ``pg_advisory_lock()`` would deadlock with it.
    """
    delay = 0.02
    while True:
        got = connection.execute(text(f"SELECT {function}(hashtext(:key))"), _lock_key()).scalar()
        if commit:
            connection.commit()
        if got:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _run_in_callers_transaction(connection: Connection) -> None:
    config.attributes["ledger_in_caller_transaction"] = True
    _check_encoding(connection)
    # Lock first: concurrent CREATE SCHEMA IF NOT EXISTS can itself collide.
    _take_lock(connection, "pg_try_advisory_xact_lock", commit=False)
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    context.configure(connection=connection, transactional_ddl=True, **_options())
    with context.begin_transaction():
        context.run_migrations()


def _run_committing(connection: Connection) -> None:
    config.attributes["ledger_in_caller_transaction"] = False
    _check_encoding(connection)
    # A session lock: revisions commit along the way, and the next migrator
    # must not start until the whole run is over.
    connection.commit()
    _take_lock(connection, "pg_try_advisory_lock", commit=True)
    try:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.commit()
        context.configure(
            connection=connection,
            transactional_ddl=True,
            transaction_per_migration=True,
            **_options(),
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), _lock_key())
        connection.commit()


def run_migrations_offline() -> None:
    url = x_args.get("url") or os.environ.get("LEDGER_DATABASE_URL")
    context.configure(
        **({"url": _url()} if url else {"dialect_name": "postgresql"}),
        literal_binds=True,
        # `%` in SQL text stays `%` (psycopg's pyformat would double it).
        dialect_opts={"paramstyle": "named"},
        transactional_ddl=True,
        transaction_per_migration=True,
        **_options(),
    )
    # Session-wide for the script; each revision then sets its own.
    context.execute(f"SET lock_timeout = '{config.attributes['ledger_lock_timeout']}'")
    context.execute(f"SET statement_timeout = '{config.attributes['ledger_statement_timeout']}'")
    context.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    if connection.in_transaction():
        _run_in_callers_transaction(connection)
    else:
        _run_committing(connection)


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
    elif given is not None:
        # An Engine, or anything with connect() (pytest-alembic wraps a
        # connection that way to keep its transaction).
        with given.connect() as conn:
            _run(conn)
    else:
        engine = create_engine(_url(), poolclass=pool.NullPool)
        try:
            with engine.connect() as conn:
                _run(conn)
        finally:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
