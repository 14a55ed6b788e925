"""Apply the ledger's alembic migrations from the installed package.

Applications call :func:`migrate` instead of shipping our ``alembic.ini``:
the scripts travel inside the wheel (``ledger/_migrations``), and in a source
checkout they are read from the top-level ``migrations/`` folder.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from . import _validate
from ._engine import EngineLike, as_engine


def script_location() -> Path:
    """Where the migration scripts are: inside the wheel, or the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(
        "sql-ledger's migration scripts are missing from this installation; reinstall the package"
    )


# alembic's `context`/`op` are module-level proxies, so two migrations in one
# process must not overlap; across processes the advisory lock in env.py
# serialises them.
_IN_PROCESS = threading.Lock()


def _config(schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["schema"] = schema
    return cfg


def _run(target: EngineLike | Connection, schema: str, action: str, revision: str) -> None:
    schema = _validate.schema_name(schema)
    if isinstance(target, Connection):
        # Inside a host application's transaction (for example its alembic env.py).
        with _IN_PROCESS, _preserving_alembic_proxies():
            cfg = _config(schema)
            cfg.attributes["connection"] = target
            getattr(command, action)(cfg, revision)
        return
    engine, owned = as_engine(target)
    try:
        with _IN_PROCESS, _preserving_alembic_proxies(), engine.begin() as conn:
            cfg = _config(schema)
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        if owned:
            engine.dispose()


@contextmanager
def _preserving_alembic_proxies() -> Iterator[None]:
    """Put back a host's ``alembic.context``/``alembic.op`` after our run.

    Alembic keeps the running environment in module-level proxies and removes
    them when a run ends; without this, calling :func:`migrate` from a host
    application's ``env.py`` would leave the host's own run without them.
    """
    import alembic.context
    import alembic.op

    saved = [getattr(module, "_proxy", None) for module in (alembic.context, alembic.op)]
    try:
        yield
    finally:
        for proxy in saved:
            if proxy is not None:
                proxy._install_proxy()


def migrate(
    engine_or_url: EngineLike | Connection, revision: str = "head", *, schema: str = "ledger"
) -> None:
    """Upgrade the ledger schema to ``revision`` (default: the newest).

    Safe to call at every application start: it is a no-op when already at
    head, and concurrent callers are serialised by an advisory lock. Given a
    ``Connection``, it runs in that connection's transaction (the recipe for
    a host application's own alembic ``env.py``, in docs/integration.md).
    """
    _run(engine_or_url, schema, "upgrade", revision)


def downgrade(
    engine_or_url: EngineLike | Connection, revision: str, *, schema: str = "ledger"
) -> None:
    """Downgrade the ledger schema; ``"base"`` drops every ledger table."""
    _run(engine_or_url, schema, "downgrade", revision)


def head_revision() -> str:
    """The newest revision shipped with this version of the package."""
    head = ScriptDirectory.from_config(_config("ledger")).get_current_head()
    assert head is not None
    return head


def current_revision(engine_or_url: EngineLike, *, schema: str = "ledger") -> str | None:
    """The revision the database is at, or None if the ledger was never migrated."""
    schema = _validate.schema_name(schema)
    engine, owned = as_engine(engine_or_url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version", schema=schema):
                return None
            ctx = MigrationContext.configure(
                conn, opts={"version_table": "alembic_version", "version_table_schema": schema}
            )
            return ctx.get_current_revision()
    finally:
        if owned:
            engine.dispose()


__all__ = ["current_revision", "downgrade", "head_revision", "migrate", "script_location"]
