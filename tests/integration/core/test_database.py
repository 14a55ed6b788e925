"""The database's own guarantees, migrations, round trips and transaction embedding."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session

import ledger
from ledger import errors
from ledger._translate import translate
from ledger.migrator import current_revision, downgrade, head_revision
from tests.conftest import _plain
from tests.helpers import state

pytestmark = pytest.mark.pg_versions


def _engine(url: str, **kw: Any) -> Engine:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), **kw)


# ------------------------------------------------------------ constraints

INSERT_TENANT = (
    "INSERT INTO ledger.tenants (tenant_id, initial_microcents, remaining_microcents,"
    " reserved_microcents, committed_microcents) "
)


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        (
            "UPDATE ledger.tenants SET remaining_microcents = remaining_microcents + 1",
            "tenants_conservation",
        ),
        (
            "UPDATE ledger.tenants SET initial_microcents = initial_microcents - 1",
            "tenants_conservation",
        ),
        ("UPDATE ledger.tenants SET committed_microcents = 0", "tenants_conservation"),
        (
            "UPDATE ledger.tenants SET remaining_microcents = -1,"
            " committed_microcents = committed_microcents + remaining_microcents + 1",
            "tenants_remaining_nonnegative",
        ),
        (
            "UPDATE ledger.tenants SET remaining_microcents = 9223372036854775807,"
            " committed_microcents = 9223372036854775807, initial_microcents = 9223372036854775807",
            "tenants_conservation",
        ),
        ("UPDATE ledger.reservations SET amount_microcents = 0", "reservations_amount_positive"),
        (
            "UPDATE ledger.tenants SET max_reserved_microcents = -5",
            "tenants_max_reserved_nonnegative",
        ),
        (
            INSERT_TENANT + "VALUES ('x', 10, 5, 0, 0)",
            "tenants_conservation",
        ),
        (
            INSERT_TENANT + "VALUES ('', 0, 0, 0, 0)",
            "tenants_tenant_id_length",
        ),
        ("DELETE FROM ledger.tenants", "reservations_tenant_fkey"),
    ],
)
def test_database_refuses_raw_sql_that_breaks_the_rules(
    book: ledger.Ledger, raw: psycopg.Connection, sql: str, constraint: str
) -> None:
    book.ensure_tenant("t", 1_000)
    rid = book.try_reserve("t", 100).reservation_id
    book.commit(rid, 50)  # type: ignore[arg-type]
    book.try_reserve("t", 10)
    before = state(raw)
    with pytest.raises(psycopg.errors.IntegrityError) as info:
        raw.execute(sql)
    assert info.value.diag.constraint_name == constraint
    assert state(raw) == before
    # The ledger's translation keeps the constraint and the real SQLSTATE
    # (23514 for a CHECK, 23503 for the foreign key), not a fixed one.
    typed = translate(info.value)
    assert isinstance(typed, errors.ConstraintViolation)
    assert (typed.constraint, typed.sqlstate) == (constraint, info.value.sqlstate)


def test_constraint_violation_inside_caller_transaction_is_typed(db_url: str) -> None:
    engine = _engine(db_url)
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 10)
    with engine.connect() as conn:
        conn.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
        conn.execute(
            text("ALTER TABLE ledger.tenants DROP CONSTRAINT tenants_remaining_nonnegative")
        )
        conn.execute(
            text("UPDATE ledger.tenants SET remaining_microcents = -5, committed_microcents = 15")
        )
        # The conservation CHECK still holds; the table says -5 remaining. Verification must see it.
        status = book.verify_conservation(connection=conn)
        assert status.status == "violation" and status.delta_microcents == -5
        conn.rollback()
    engine.dispose()


# ------------------------------------------------------------- migrations


def test_migrations_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    assert current_revision(empty_db_url) is None
    ledger.migrate(empty_db_url)
    assert current_revision(empty_db_url) == head_revision()
    ledger.migrate(empty_db_url)  # idempotent
    with ledger.Ledger(empty_db_url) as book:
        book.ensure_tenant("t", 5)
    downgrade(empty_db_url, "base")
    assert current_revision(empty_db_url) is None
    with psycopg.connect(_plain(empty_db_url)) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'ledger'"
            " AND table_name <> 'alembic_version'"
        ).fetchone()
        assert tables == (0,)
    ledger.migrate(empty_db_url)
    with ledger.Ledger(empty_db_url) as book:
        assert book.tenant_count() == 0
        assert book.ensure_tenant("t", 5)


def _migrate_in_child(url: str) -> None:
    ledger.migrate(url)


def test_concurrent_migrations_are_serialised(empty_db_url: str) -> None:
    """Several app instances starting at once all call migrate(); exactly one does the work."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate_in_child, args=(empty_db_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert current_revision(empty_db_url) == head_revision()
    # and threads in one process are serialised too
    threads = [threading.Thread(target=ledger.migrate, args=(empty_db_url,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert current_revision(empty_db_url) == head_revision()


def test_two_schemas_are_independent(empty_db_url: str) -> None:
    ledger.migrate(empty_db_url, schema="billing")
    ledger.migrate(empty_db_url, schema="credits")
    with (
        ledger.Ledger(empty_db_url, schema="billing") as a,
        ledger.Ledger(empty_db_url, schema="credits") as b,
    ):
        a.ensure_tenant("t", 100)
        assert b.tenant("t") is None
        b.ensure_tenant("t", 7)
        assert (a.remaining_microcents("t"), b.remaining_microcents("t")) == (100, 7)
    assert current_revision(empty_db_url, schema="billing") == head_revision()
    assert current_revision(empty_db_url) is None


def test_unmigrated_database_gives_actionable_error(empty_db_url: str) -> None:
    with ledger.Ledger(empty_db_url) as book:
        with pytest.raises(errors.SchemaNotMigrated, match=r"ledger\.migrate"):
            book.try_reserve("t", 1)
        with pytest.raises(errors.SchemaNotMigrated):
            book.snapshot()


def test_migration_scripts_ship_inside_the_wheel(tmp_path: Any) -> None:
    """Build the wheel and check the alembic scripts are packaged under ledger/_migrations."""
    import subprocess
    import sys
    import zipfile

    root = str(Path(__file__).resolve().parents[3])
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            root,
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = list(tmp_path.glob("sql_ledger-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ledger/_migrations/env.py" in names
    assert "ledger/_migrations/versions/0001_core.py" in names
    assert "ledger/py.typed" in names


# ---------------------------------------------------------- round trips


class Tracer:
    """Counts protocol round trips (Sync/Query messages) using libpq's own trace."""

    def __init__(self, engine: Engine) -> None:
        self.file = tempfile.NamedTemporaryFile("w+", delete=False)  # noqa: SIM115 - closed in fixture
        self.statements: list[str] = []

        @event.listens_for(engine, "connect")
        def _trace(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.pgconn.trace(self.file.fileno())
            dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

        @event.listens_for(engine, "before_cursor_execute")
        def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            self.statements.append(statement)

    def mark(self) -> None:
        self.file.flush()
        self._start = os.path.getsize(self.file.name)
        self.statements.clear()

    def _sent(self) -> list[str]:
        self.file.flush()
        with open(self.file.name) as f:
            f.seek(self._start)
            lines = f.read().splitlines()
        return [line.split("\t")[2].split()[0] for line in lines if line.startswith("F\t")]

    def round_trips(self) -> int:
        """Sync (extended protocol) or Query (simple protocol) messages sent."""
        return sum(1 for kind in self._sent() if kind in ("Sync", "Query"))

    def executed(self) -> int:
        """Statements the server was asked to run, whichever layer sent them."""
        return sum(1 for kind in self._sent() if kind in ("Execute", "Query"))


@pytest.fixture
def traced(db_url: str) -> Iterator[tuple[ledger.Ledger, Tracer]]:
    engine = _engine(db_url)
    tracer = Tracer(engine)
    book = ledger.Ledger(engine)
    book.ensure_tenant("warm", 10)  # open the pooled connection before counting
    yield book, tracer
    engine.dispose()
    tracer.file.close()
    os.unlink(tracer.file.name)


def test_each_operation_is_one_statement_and_one_round_trip(
    traced: tuple[ledger.Ledger, Tracer],
) -> None:
    book, tracer = traced
    results = {}

    def measure(name: str, fn: Any) -> Any:
        tracer.mark()
        out = fn()
        results[name] = (tracer.executed(), tracer.round_trips())
        return out

    measure("ensure_tenant", lambda: book.ensure_tenant("t", 1_000))
    measure("top_up_tenant", lambda: book.top_up_tenant("t", 10))
    measure("set_max_reserved_microcents", lambda: book.set_max_reserved_microcents("t", 500))
    hold = measure("try_reserve", lambda: book.try_reserve("t", 100))
    measure("commit", lambda: book.commit(hold.reservation_id, 90))
    hold2 = book.try_reserve("t", 100)
    measure("release", lambda: book.release(hold2.reservation_id))
    measure("refused try_reserve", lambda: book.try_reserve("t", 10**9))
    measure("missing commit", lambda: book.commit(12345, 1))
    hold3 = book.try_reserve("t", 5)
    measure("commit with tenant hint", lambda: book.commit(hold3.reservation_id, 5, tenant_id="t"))
    hold4 = book.try_reserve("t", 5)
    measure("release with tenant hint", lambda: book.release(hold4.reservation_id, tenant_id="t"))
    missing = results.pop("missing commit")
    assert all(v == (1, 1) for v in results.values()), results
    # An unknown hold costs one more statement: a fresh look in the journal, so a
    # hold that expired while we waited for its lock reads as "expired".
    assert missing == (2, 2)


def test_validation_failures_send_nothing(traced: tuple[ledger.Ledger, Tracer]) -> None:
    book, tracer = traced
    tracer.mark()
    for call in (
        lambda: book.try_reserve("t", 1.0),
        lambda: book.commit(1, True),
        lambda: book.try_reserve("", 1),
    ):
        with pytest.raises(errors.LedgerError):
            call()
    assert book.try_reserve("t", 0).status == "insufficient"
    assert tracer.executed() == 0 and tracer.round_trips() == 0


# -------------------------------------------------------- caller transactions


def test_connection_rollback_undoes_ledger_and_app_writes(db_url: str) -> None:
    engine = _engine(db_url)
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 1_000)
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE public.orders (id int)"))
        conn.commit()
        conn.execute(text("INSERT INTO public.orders VALUES (1)"))
        hold = book.try_reserve("t", 300, connection=conn)
        assert book.remaining_microcents("t", connection=conn) == 700
        assert book.remaining_microcents("t") == 1_000  # not visible outside yet
        conn.rollback()
    assert book.remaining_microcents("t") == 1_000
    assert book.active_reservations() == 0
    assert book.commit(hold.reservation_id, 1).status == "missing_reservation"  # type: ignore[arg-type]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM public.orders")).scalar() == 0
        conn.commit()
        with conn.begin():
            conn.execute(text("INSERT INTO public.orders VALUES (2)"))
            book.try_reserve("t", 300, connection=conn)
    assert book.remaining_microcents("t") == 700
    engine.dispose()


def test_session_joins_the_orm_transaction(db_url: str) -> None:
    engine = _engine(db_url)
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 1_000)
    with Session(engine) as session:
        hold = book.try_reserve("t", 400, connection=session)
        assert hold.ok
        book.commit(hold.reservation_id, 100, connection=session)  # type: ignore[arg-type]
        session.rollback()
    assert book.remaining_microcents("t") == 1_000
    with Session(engine) as session, session.begin():
        hold = book.try_reserve("t", 400, connection=session)
        book.commit(hold.reservation_id, 100, connection=session)  # type: ignore[arg-type]
    assert (book.remaining_microcents("t"), book.committed_microcents("t")) == (900, 100)
    engine.dispose()


def test_exception_inside_caller_block_rolls_back(db_url: str) -> None:
    engine = _engine(db_url)
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 1_000)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        book.try_reserve("t", 999, connection=conn)
        raise RuntimeError("the view failed after reserving")
    assert book.remaining_microcents("t") == 1_000
    engine.dispose()


def test_serialization_conflict_in_caller_repeatable_read_is_typed(db_url: str) -> None:
    engine = _engine(db_url)
    book = ledger.Ledger(engine)
    book.ensure_tenant("t", 1_000)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            assert book.remaining_microcents("t", connection=conn) == 1_000  # takes the snapshot
            book.try_reserve("t", 10)  # a concurrent, committed change
            with pytest.raises(errors.SerializationConflict) as info:
                book.try_reserve("t", 10, connection=conn)
            assert isinstance(info.value, errors.RetryableError)
            assert isinstance(info.value.__cause__, Exception)
    assert book.remaining_microcents("t") == 990
    engine.dispose()


def test_lock_timeout_is_typed_and_changes_nothing(db_url: str) -> None:
    engine = _engine(db_url)
    impatient = _engine(db_url, connect_args={"options": "-c lock_timeout=200"})
    book = ledger.Ledger(engine)
    other = ledger.Ledger(impatient)
    book.ensure_tenant("t", 1_000)
    with engine.begin() as conn:
        book.try_reserve("t", 10, connection=conn)  # holds the tenant row lock
        with pytest.raises(errors.LockTimeout):
            other.try_reserve("t", 10)
    assert book.reserved_microcents("t") == 10
    assert book.active_reservations() == 1
    engine.dispose()
    impatient.dispose()


def test_deadlock_between_caller_transactions_is_typed(db_url: str) -> None:
    engine = _engine(db_url, pool_size=4)
    book = ledger.Ledger(engine)
    book.ensure_tenant("a", 100)
    book.ensure_tenant("b", 100)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def worker(first: str, second: str) -> None:
        try:
            with engine.begin() as conn:
                book.try_reserve(first, 1, connection=conn)
                barrier.wait()
                book.try_reserve(second, 1, connection=conn)
            outcomes.append("ok")
        except errors.DeadlockDetected:
            outcomes.append("deadlock")

    threads = [threading.Thread(target=worker, args=p) for p in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["deadlock", "ok"]
    assert book.verify_conservation().is_balanced
    assert book.active_reservations() == 2
    engine.dispose()


def test_snapshot_is_sorted_by_utf8_bytes(book: ledger.Ledger) -> None:
    ids = ["zulu", "Desk", "desk-é", "desk-z", "é", "a", "Z", "éa", "🙂", "ﬀ"]
    for tid in ids:
        book.ensure_tenant(tid, 1)
    got = [t.tenant_id for t in book.snapshot().tenants]
    assert got == sorted(ids, key=lambda s: s.encode("utf-8"))
