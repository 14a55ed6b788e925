"""Django migrations that apply the ledger's alembic revisions, one for one."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def alembic_revision(revision: str, previous: str) -> migrations.RunPython:
    """Upgrade to ``revision`` forwards, downgrade to ``previous`` backwards.

    Alembic runs on a connection of its own (the migration is non-atomic), so
    the ledger schema keeps one history, in its own version table, whether it
    is migrated by Django, by ``ledger migrate`` or by ``ledger.migrate()``.
    """

    def forwards(apps: Any, schema_editor: Any) -> None:
        _run(schema_editor, "migrate", revision)

    def backwards(apps: Any, schema_editor: Any) -> None:
        _run(schema_editor, "downgrade", previous)

    return migrations.RunPython(forwards, backwards)


def _run(schema_editor: Any, action: str, revision: str) -> None:
    from ... import migrator
    from . import database_url, ledger_settings

    conf = ledger_settings()
    if schema_editor.connection.alias != conf["DATABASE"]:
        return
    url = database_url(schema_editor.connection.alias)
    getattr(migrator, action)(url, revision, schema=conf["SCHEMA"])
