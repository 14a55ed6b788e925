"""Django migrations that apply the ledger's alembic revisions, one for one."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def table_name(name: str) -> str:
    """``db_table`` of a ledger table in the configured schema (models and migrations share it).

    Django has no schema option; quoting the dot is the documented trick.
    """
    from . import ledger_settings

    return f'{ledger_settings()["SCHEMA"]}"."{name}'


class AlembicRevision(migrations.operations.base.Operation):
    """Upgrade to ``revision`` forwards, downgrade to ``previous`` backwards.

    Alembic runs on a connection of its own (the migration is non-atomic), so
    the ledger schema keeps one history, in its own version table, whether it
    is migrated by Django, by ``ledger migrate`` or by ``ledger.migrate()``;
    each revision commits on its own and builds its indexes CONCURRENTLY
    (docs/migrations.md). ``sqlmigrate`` prints the revision's SQL: alembic's
    offline script, which applies with ``psql -v ON_ERROR_STOP=1``.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, revision: str, previous: str) -> None:
        self.revision = revision
        self.previous = previous

    def deconstruct(self) -> tuple[str, list[Any], dict[str, str]]:
        return (
            f"{__name__}.{type(self).__qualname__}",
            [],
            {"revision": self.revision, "previous": self.previous},
        )

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass  # the ledger's tables are alembic's; the admin's models are unmanaged

    def database_forwards(self, app_label: str, schema_editor: Any, *_: Any) -> None:
        _run(schema_editor, self.previous, self.revision, downgrade=False)

    def database_backwards(self, app_label: str, schema_editor: Any, *_: Any) -> None:
        _run(schema_editor, self.revision, self.previous, downgrade=True)

    def describe(self) -> str:
        return f"sql-ledger alembic revision {self.revision} (from {self.previous})"


def alembic_revision(revision: str, previous: str) -> AlembicRevision:
    """The operation of a ledger Django migration: the alembic revision it mirrors."""
    return AlembicRevision(revision=revision, previous=previous)


def _run(schema_editor: Any, start: str, end: str, *, downgrade: bool) -> None:
    from ... import migrator
    from . import database_url, ledger_settings

    conf = ledger_settings()
    if schema_editor.connection.alias != conf["DATABASE"]:
        return
    if schema_editor.collect_sql:
        script = migrator.sql(f"{start}:{end}", schema=conf["SCHEMA"], downgrade=downgrade)
        schema_editor.collected_sql.append(script.strip())
        return
    url = database_url(schema_editor.connection.alias)
    action = migrator.downgrade if downgrade else migrator.migrate
    action(url, end, schema=conf["SCHEMA"])
