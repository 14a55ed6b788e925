"""Apply the ledger's alembic migrations from the installed package.

Applications call :func:`migrate` instead of shipping our ``alembic.ini``:
the scripts travel inside the wheel (``ledger/_migrations``), and in a source
checkout they are read from the top-level ``migrations/`` folder.
"""

from __future__ import annotations

import io
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError

from . import _validate, errors
from ._engine import EngineLike, as_engine
from ._translate import translate


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


def _config(schema: str, output: io.StringIO | None = None) -> Config:
    cfg = Config(output_buffer=output)
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["schema"] = schema
    return cfg


def _run(target: EngineLike | Connection, schema: str, action: str, revision: str) -> None:
    schema = _validate.schema_name(schema)
    if isinstance(target, Connection):
        # A host application's connection (for example from its alembic env.py):
        # inside its transaction if one is open, else committing step by step.
        _refuse_foreign_tables(target, schema, action)
        with _IN_PROCESS, _preserving_alembic_proxies():
            cfg = _config(schema)
            cfg.attributes["connection"] = target
            getattr(command, action)(cfg, revision)
        return
    engine, owned = as_engine(target)
    try:
        # Not in a transaction: env.py commits each revision on its own and
        # runs the online phases (CONCURRENTLY, batched backfills) outside one.
        with _IN_PROCESS, _preserving_alembic_proxies(), engine.connect() as conn:
            _refuse_foreign_tables(conn, schema, action)
            cfg = _config(schema)
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        if owned:
            engine.dispose()


#: Tables revision 0001 creates: finding one in a schema without a ledger revision
#: means the schema belongs to something else.
_FIRST_TABLES = ("tenants", "reservations", "journal", "idempotency_keys", "certificates")


def _refuse_foreign_tables(conn: Connection, schema: str, action: str) -> None:
    """Refuse, before any DDL, an upgrade into a schema whose tables are not the ledger's.

    ``migrate(schema="public")`` in a database whose application has its own
    ``public.tenants`` would otherwise fail half-way with a raw driver error.
    """
    if action != "upgrade":
        return
    began = not conn.in_transaction()  # env.py decides how revisions commit: leave none open
    try:
        # One statement, so one snapshot: asked table by table, a migration
        # committing in another process between two questions (0001's tables
        # and alembic_version commit together) looked like a foreign schema.
        found = set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_catalog.pg_class AS c"
                    " JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = :schema AND c.relname = ANY(:names)"
                    " AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
                ),
                {"schema": schema, "names": ["alembic_version", *_FIRST_TABLES]},
            ).scalars()
        )
        if "alembic_version" in found:
            return
        clash = [t for t in _FIRST_TABLES if t in found]
    except DBAPIError as exc:
        raise translate(exc) from exc
    finally:
        if began and conn.in_transaction():
            conn.rollback()
    if clash:
        raise errors.SchemaOccupied(
            f"schema {schema!r} already has table(s) {', '.join(clash)} that no ledger "
            "migration made (it records no revision): migrate into another schema, for "
            "example schema='ledger' (the default)"
        )


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


def sql(revisions: str = "base:head", *, schema: str = "ledger", downgrade: bool = False) -> str:
    """The SQL a migration over ``revisions`` would run, for review or for ``psql``.

    ``revisions`` is alembic's ``FROM:TO`` range (``"0003:head"``; for a
    downgrade ``"head:0003"``). No database is needed. The script applies with
    ``psql -v ON_ERROR_STOP=1``; it creates the schema itself, and its online
    phases (``CREATE INDEX CONCURRENTLY``, batched backfills) leave the
    transaction as they do online. A lock timeout is not retried in a script:
    re-run it (every revision is stamped in the transaction that finishes it).
    """
    schema = _validate.schema_name(schema)
    buffer = io.StringIO()
    with _IN_PROCESS, _preserving_alembic_proxies():
        cfg = _config(schema, buffer)
        if downgrade:
            command.downgrade(cfg, revisions, sql=True)
        else:
            command.upgrade(cfg, revisions, sql=True)
    return buffer.getvalue()


# ---------------------------------------------------- helpers for revisions
#
# Every revision runs its DDL through `locked()` and its long work through
# `online()`/`backfill()`/`create_index()`; docs/migrations.md has the rules
# and tests/integration/migrations/test_revisions.py checks that every revision obeys them.

log = logging.getLogger("ledger.migrations")

#: Longest wait for a lock. Traffic queued behind a waiting ALTER waits as
#: long, so this bounds what readers and writers can see.
LOCK_TIMEOUT = "500ms"
#: Longest statement while a DDL lock is held.
STATEMENT_TIMEOUT = "15s"
#: Longest statement of an online phase (no lock that blocks traffic is held).
ONLINE_STATEMENT_TIMEOUT = "1h"
#: Longest lock wait of an online step (CONCURRENTLY, VALIDATE): their locks
#: queue no traffic, and CONCURRENTLY must outwait every older transaction.
ONLINE_LOCK_TIMEOUT = "1min"
#: Tries for a step whose lock times out, with exponential backoff between them.
LOCK_ATTEMPTS = 5
BACKOFF_SECONDS = 0.2
#: Rows per backfill batch; each batch is its own short transaction.
BATCH_SIZE = 1000
#: The last revision released before these rules: CI lints the SQL of later ones
#: with squawk (.squawk.toml, scripts/test.sh).
LINT_FROM = "0003"

_TIMEOUT = re.compile(r"^[0-9]{1,9}(us|ms|s|min|h|d)?$")

#: Where env.py keeps the settings it resolved, in ``config.attributes``.
SETTINGS = {
    "lock_timeout": LOCK_TIMEOUT,
    "statement_timeout": STATEMENT_TIMEOUT,
    "online_statement_timeout": ONLINE_STATEMENT_TIMEOUT,
    "online_lock_timeout": ONLINE_LOCK_TIMEOUT,
    "lock_attempts": str(LOCK_ATTEMPTS),
    "batch_size": str(BATCH_SIZE),
}


def check_setting(name: str, value: str) -> str:
    """Validate a migration setting before it is written into SQL."""
    if name in ("lock_attempts", "batch_size"):
        if not value.isdigit() or not 0 < int(value) <= 1_000_000:
            raise errors.InputError(f"migration setting {name}={value!r}: use a positive integer")
    elif not _TIMEOUT.match(value):
        raise errors.InputError(
            f"migration setting {name}={value!r}: use a PostgreSQL duration such as 500ms or 30s"
        )
    return value


def _context() -> Any:
    from alembic import op

    return op.get_context()


def _setting(name: str) -> str:
    value: str = _context().config.attributes.get(f"ledger_{name}", SETTINGS[name])
    return value


def in_caller_transaction() -> bool:
    """True when the run shares a transaction it did not open (``migrate(connection)``).

    Then nothing may commit: online phases run inside that transaction, and
    indexes are built without CONCURRENTLY.
    """
    ctx = _context()
    return bool(not ctx.as_sql and ctx.config.attributes.get("ledger_in_caller_transaction"))


def _timeouts(statement_timeout: str, *, local: bool, lock_timeout: str | None = None) -> None:
    from alembic import op

    scope = "SET LOCAL" if local else "SET"
    op.execute(f"{scope} lock_timeout = '{lock_timeout or _setting('lock_timeout')}'")
    op.execute(f"{scope} statement_timeout = '{statement_timeout}'")


def _lock_timed_out(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "55P03"


def _retrying(step: Callable[[], None], attempt: Callable[[Callable[[], None]], None]) -> None:
    tries = int(_setting("lock_attempts"))
    for n in range(1, tries + 1):
        try:
            attempt(step)
            return
        except DBAPIError as exc:
            if not _lock_timed_out(exc):
                raise
            if n == tries:
                raise errors.LockTimeout(
                    f"the ledger migration could not take a lock within its lock_timeout "
                    f"in {tries} tries: a long transaction holds it. Find it in "
                    "pg_stat_activity, then run the migration again (or raise -x "
                    "lock_timeout / online_lock_timeout / lock_attempts).",
                    sqlstate="55P03",
                ) from exc
            delay = BACKOFF_SECONDS * 2 ** (n - 1) * random.uniform(0.75, 1.25)
            log.warning("lock timeout (try %d of %d); retrying in %.2fs", n, tries, delay)
            time.sleep(delay)


def locked(step: Callable[[], None]) -> None:
    """Run ``step`` (alembic ``op`` calls) in the revision's transaction, safely.

    It runs under ``lock_timeout`` and ``statement_timeout`` (SET LOCAL), in a
    savepoint: if a lock is not granted in time, the savepoint is rolled back
    (releasing whatever the step had locked, so traffic moves on) and the step
    is tried again after a growing pause. Keep steps short: every lock taken
    is held until the revision commits.
    """
    _timeouts(_setting("statement_timeout"), local=True)
    if _context().as_sql:
        step()
    else:
        _in_savepoint_retrying(step)


def _in_savepoint_retrying(step: Callable[[], None]) -> None:
    def in_savepoint(work: Callable[[], None]) -> None:
        savepoint = _context().connection.begin_nested()
        try:
            work()
        except BaseException:
            savepoint.rollback()
            raise
        savepoint.commit()

    _retrying(step, in_savepoint)


@contextmanager
def online(*, patient: bool = False) -> Iterator[bool]:
    """Leave the DDL transaction for work that must not hold its locks.

    The revision's transaction so far is committed; the block runs in
    autocommit mode with session-level timeouts (``statement_timeout`` is the
    online one), and a new transaction starts after it. Yields True then; it
    yields False, staying inside, when the run shares a caller's transaction.
    ``patient`` uses ``online_lock_timeout`` instead of ``lock_timeout``: only
    for statements whose locks queue no traffic (CONCURRENTLY, VALIDATE).
    """
    from alembic import op

    ctx = _context()
    wait = _setting("online_lock_timeout") if patient else None
    if in_caller_transaction():
        _timeouts(_setting("online_statement_timeout"), local=True, lock_timeout=wait)
        yield False
        return
    with ctx.autocommit_block():
        _timeouts(_setting("online_statement_timeout"), local=False, lock_timeout=wait)
        try:
            yield True
        finally:
            op.execute("RESET lock_timeout")
            op.execute("RESET statement_timeout")


def online_step(step: Callable[[], None]) -> None:
    """Run ``step`` in an :func:`online` phase, retrying it on a lock timeout.

    For statements that take only locks traffic can pass (``VALIDATE
    CONSTRAINT``, ``CREATE INDEX CONCURRENTLY`` and the like) but that may wait;
    they wait up to ``online_lock_timeout``.
    """
    with online(patient=True) as outside:
        if _context().as_sql:
            step()
        elif outside:
            _retrying(step, lambda work: work())
        else:
            _in_savepoint_retrying(step)


def _schema() -> str:
    schema: str = _context().config.attributes["ledger_schema"]
    return schema


def create_index(name: str, table: str, definition: str) -> None:
    """``CREATE INDEX CONCURRENTLY IF NOT EXISTS name ON table definition``, retried.

    A concurrent build that fails leaves an invalid index behind; it is
    dropped before the next try. In a caller's transaction the index is
    built plainly (under :func:`locked`), which blocks writes to ``table``.
    """
    from alembic import op

    target = f'"{_schema()}".{table} {definition}'
    if in_caller_transaction():
        locked(lambda: op.execute(f"CREATE INDEX {name} ON {target}"))
        return
    create = f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {target}"
    with online(patient=True):
        if _context().as_sql:
            op.execute(create)
            return

        def build(_: Callable[[], None]) -> None:
            _drop_invalid_index(name)
            op.execute(create)

        _retrying(lambda: None, build)
        _drop_invalid_index(name, fail=True)


def _drop_invalid_index(name: str, *, fail: bool = False) -> None:
    from alembic import op
    from sqlalchemy import text

    invalid = (
        op.get_bind()
        .execute(
            text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
            {"name": f'"{_schema()}".{name}'},
        )
        .scalar()
    )
    if invalid:
        if fail:
            raise errors.DatabaseError(f"index {name} was left invalid; run the migration again")
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{_schema()}".{name}')


def drop_index(name: str) -> None:
    """``DROP INDEX CONCURRENTLY IF EXISTS``, retried (plain inside a caller's transaction)."""
    from alembic import op

    target = f'"{_schema()}".{name}'
    if in_caller_transaction():
        locked(lambda: op.execute(f"DROP INDEX IF EXISTS {target}"))
        return
    online_step(lambda: op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {target}"))


def backfill(batch: str, *, declare: str = "") -> None:
    """Run a PL/pgSQL ``batch`` until it sets ``more := false``, one transaction per batch.

    ``batch`` processes at most ``batch_size`` rows (the variable of that name)
    and must take its row locks first: a lock timeout rolls back only the
    batch, which is retried with backoff. Outside a caller's transaction each
    batch commits, so no lock outlives its batch and the backfill can run for
    as long as the ledger is large while traffic continues. ``declare`` adds
    variables; they keep their values across batches (use them for keysets).
    """
    from alembic import op

    with online() as outside:
        commit = "COMMIT;" if outside else ""
        statement = f"""DO $backfill$
DECLARE
    batch_size constant int := {_setting("batch_size")};
    more boolean := true;
    tries int := 0;
    {declare}
BEGIN
    WHILE more LOOP
        BEGIN
            {batch}
            tries := 0;
        EXCEPTION WHEN lock_not_available THEN
            tries := tries + 1;
            IF tries >= {_setting("lock_attempts")} THEN
                RAISE;
            END IF;
            PERFORM pg_sleep({BACKOFF_SECONDS} * 2 ^ (tries - 1));
        END;
        {commit}
    END LOOP;
END
$backfill$"""
        if _context().as_sql:
            op.execute(statement)
            return
        try:
            op.execute(statement)
        except DBAPIError as exc:
            if not _lock_timed_out(exc):
                raise
            raise errors.LockTimeout(
                f"a migration backfill could not lock its rows within {_setting('lock_timeout')}"
                f" in {_setting('lock_attempts')} tries: a long transaction holds them. Find it"
                " in pg_stat_activity and run the migration again; the batches already done"
                " stay done and the backfill resumes after them.",
                sqlstate="55P03",
            ) from exc


__all__ = [
    "backfill",
    "create_index",
    "current_revision",
    "downgrade",
    "drop_index",
    "head_revision",
    "locked",
    "migrate",
    "online",
    "online_step",
    "script_location",
    "sql",
]
