"""A host application's alembic env.py that runs the ledger's history beside its own.

This is the recipe of docs/integration.md, exercised by tests/integration/migrations/test_host_alembic.py.
"""

from alembic import context
from sqlalchemy import create_engine, pool

import ledger
from ledger.migrator import downgrade as ledger_downgrade

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    # alembic reports "base" as None; any named target means "up" for the ledger.
    going_down = context.get_revision_argument() in (None, "base")
    with engine.connect() as connection:
        # Our tables may reference the ledger's: ledger first on the way up...
        if not going_down:
            ledger.migrate(connection)  # its own schema and version table
        context.configure(connection=connection)  # the host's version table: public.alembic_version
        with context.begin_transaction():
            context.run_migrations()
        # ...and last on the way down.
        if going_down:
            ledger_downgrade(connection, "base")
        connection.commit()
    engine.dispose()


run_migrations_online()
