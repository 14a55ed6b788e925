"""Least privilege: what each role can and cannot do, checked by acting as that role."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, create_engine, pool, text

import ledger
from ledger import BudgetSnapshot, TenantLedger, errors
from ledger.roles import create_roles, enable_row_level_security
from tests.conftest import FIGURES

pytestmark = pytest.mark.pg_versions


@pytest.fixture
def as_role(db_url: str) -> Iterator[object]:
    engine = create_engine(db_url, poolclass=pool.NullPool)

    def connect(role: str) -> Connection:
        conn = engine.connect()
        conn.execute(text(f'SET ROLE "{role}"'))
        conn.commit()
        return conn

    yield connect
    engine.dispose()


def test_application_role_runs_the_ledger_but_cannot_rewrite_history(
    db_url: str, as_role: object
) -> None:
    create_roles(db_url)
    create_roles(db_url)  # idempotent
    book = ledger.Ledger(db_url)
    conn = as_role("ledger_app")  # type: ignore[operator]
    try:
        with conn.begin():
            book.ensure_tenant("a", 1_000, connection=conn)
            book.set_max_reserved_microcents("a", 900, connection=conn)
            hold = book.try_reserve("a", 100, idempotency_key="k", connection=conn)
            assert book.commit(hold.reservation_id, 90, connection=conn).ok  # type: ignore[arg-type]
            assert book.top_up_tenant("a", 5, connection=conn).ok
            lapsing = book.try_reserve("a", 5, ttl=1, connection=conn)
            assert book.release(lapsing.reservation_id, connection=conn).ok  # type: ignore[arg-type]
            assert book.try_reserve_many([("a", 1), ("a", 2)], connection=conn)[1].ok
            book.certify(connection=conn)
            book.restore_from_snapshot(
                BudgetSnapshot(3, (TenantLedger("a", 1_005, 915, 0, 90),), 0), connection=conn
            )
            assert book.verify_journal(connection=conn).ok
            assert book.verify_conservation(connection=conn).is_balanced
        refused = [
            "UPDATE ledger.journal SET amount_microcents = 0",
            "DELETE FROM ledger.journal",
            "TRUNCATE ledger.journal",
            "ALTER TABLE ledger.tenants DROP CONSTRAINT tenants_conservation",
            "ALTER TABLE ledger.journal DISABLE TRIGGER USER",
            "UPDATE ledger.certificates SET conservation_balanced = false",
            "DROP TABLE ledger.journal",
        ]
        for sql in refused:
            with pytest.raises(Exception) as info:
                conn.execute(text(sql))
            conn.rollback()
            assert "permission denied" in str(info.value) or "must be owner" in str(info.value), sql
    finally:
        conn.close()
        book.close()
    FIGURES.append(
        (
            "least privilege",
            "application role",
            f"{len(refused)} forbidden statements",
            "all refused; every ledger operation allowed",
        )
    )


def test_auditor_role_reads_views_only(db_url: str, as_role: object) -> None:
    create_roles(db_url)
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 10)
    conn = as_role("ledger_auditor")  # type: ignore[operator]
    try:
        assert conn.execute(text("SELECT count(*) FROM ledger.balances")).scalar() == 1
        conn.rollback()
        for sql in (
            "SELECT * FROM ledger.tenants",
            "SELECT * FROM ledger.journal",
            "INSERT INTO ledger.tenants (tenant_id) VALUES ('x')",
        ):
            with pytest.raises(Exception, match="permission denied"):
                conn.execute(text(sql))
            conn.rollback()
        with pytest.raises(errors.PermissionDenied):
            ledger.Ledger(db_url).try_reserve("a", 1, connection=conn)
    finally:
        conn.close()


def test_row_level_security_confines_a_tenant_scoped_role(db_url: str, as_role: object) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 100)
        book.ensure_tenant("b", 100)
        enable_row_level_security(db_url)
        conn = as_role("ledger_tenant_app")  # type: ignore[operator]
        try:
            with conn.begin():
                conn.execute(text("SET LOCAL ledger.tenant_id = 'a'"))
                assert book.try_reserve("a", 10, connection=conn).ok
                assert book.try_reserve("b", 10, connection=conn).status == "missing_tenant"
                assert [t.tenant_id for t in book.snapshot(connection=conn).tenants] == ["a"]
            with pytest.raises(errors.PermissionDenied), conn.begin():
                conn.execute(text("SET LOCAL ledger.tenant_id = 'a'"))
                book.ensure_tenant("c", 5, connection=conn)  # another tenant's row: refused
            with conn.begin():
                assert conn.execute(text("SELECT count(*) FROM ledger.tenants")).scalar() == 0
        finally:
            conn.close()
        # everyone else still sees every tenant, and the journal still verifies
        assert book.tenant_count() == 2
        assert book.reserved_microcents("a") == 10
        assert book.verify_journal().ok
