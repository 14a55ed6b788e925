"""A host app's alembic history beside ours, and no drift between migrations and models."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

import ledger
from ledger.migrator import current_revision, head_revision
from ledger.tables import metadata
from tests.conftest import _plain

pytestmark = pytest.mark.pg_versions

HOST = Path(__file__).resolve().parents[2] / "host_app"


def host_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HOST))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser escaping
    return cfg


def tables(url: str) -> set[str]:
    with psycopg.connect(_plain(url)) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema IN ('public', 'ledger') AND table_type = 'BASE TABLE'"
        ).fetchall()
    return {r[0] for r in rows}


def host_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_host_env_upgrades_downgrades_and_upgrades_both(empty_db_url: str) -> None:
    cfg = host_config(empty_db_url)
    command.upgrade(cfg, "head")
    assert host_revision(empty_db_url) == "a1"
    assert current_revision(empty_db_url) == head_revision()
    assert {
        "public.orders",
        "public.alembic_version",
        "ledger.alembic_version",
        "ledger.tenants",
        "ledger.journal",
    } <= tables(empty_db_url)
    with ledger.Ledger(empty_db_url) as book:
        book.ensure_tenant("t", 5)
        assert book.verify_journal().ok

    command.downgrade(cfg, "base")
    assert host_revision(empty_db_url) is None
    assert current_revision(empty_db_url) is None
    assert tables(empty_db_url) == {"public.alembic_version", "ledger.alembic_version"}

    command.upgrade(cfg, "head")
    assert host_revision(empty_db_url) == "a1"
    assert current_revision(empty_db_url) == head_revision()


def test_migrations_and_models_do_not_drift(db_url: str) -> None:
    """alembic autogenerate, comparing the migrated database with ledger.tables, finds nothing."""
    engine = create_engine(db_url)

    def include_name(name: str | None, type_: str, parent: dict[str, str | None]) -> bool:
        if type_ == "schema":
            return name == "ledger"
        if type_ == "table":
            return parent.get("schema_name") == "ledger" and name != "alembic_version"
        return True

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_schemas": True,
                "include_name": include_name,
            },
        )
        assert compare_metadata(ctx, metadata("ledger")) == []
    engine.dispose()
