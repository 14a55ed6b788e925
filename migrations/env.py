"""Alembic environment for the ledger's own migration history.

It keeps its version table inside the ledger schema, so a host application's
alembic history (in ``public.alembic_version``) never collides with ours, and
it serialises concurrent ``migrate`` calls with an advisory lock.

Inputs, in order of precedence:
- ``config.attributes["connection"]`` / ``["schema"]`` (set by ``ledger.migrate``);
- ``-x url=... -x schema=...`` on the alembic command line;
- ``LEDGER_DATABASE_URL`` / ``LEDGER_SCHEMA`` in the environment.
"""

from __future__ import annotations

import os
import re

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

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


def _run(connection: Connection) -> None:
    encoding = connection.execute(text("SHOW server_encoding")).scalar()
    if str(encoding).upper() not in ("UTF8", "UTF-8"):
        raise SystemExit(
            f"the ledger needs a UTF8 database (tenant ids sort by UTF-8 bytes); "
            f"this one is {encoding}"
        )
    # Lock first: concurrent CREATE SCHEMA IF NOT EXISTS can itself collide.
    connection.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"sql-ledger:{schema}"}
    )
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    context.configure(
        connection=connection,
        version_table="alembic_version",
        version_table_schema=schema,
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        literal_binds=True,
        version_table="alembic_version",
        version_table_schema=schema,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
