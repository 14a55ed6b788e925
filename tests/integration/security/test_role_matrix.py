"""The role matrix: every public operation under each role (docs/deployment.md).

Roles: the owner (who ran the migrations), ``ledger_app``, a tenant-scoped
role (``ledger_tenant_app`` under row-level security, with
``SET LOCAL ledger.tenant_id = 'a'``) and the auditor. Each cell runs one
operation in its own transaction as that role and checks the outcome against
the expectation: allowed, or refused with a typed error and the database
unchanged (compared with the owner's view of every table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, create_engine, pool, text

import ledger
from ledger import BudgetSnapshot, TenantLedger, errors
from ledger.roles import create_roles, enable_row_level_security
from tests.conftest import _database_url, _plain, drop_database, make_database
from tests.helpers import state

pytestmark = pytest.mark.pg_versions

Op = Callable[[ledger.Ledger, Connection, dict[str, int]], Any]

#: (name, kind, operation). kind: "tenant" writes one tenant, "read" reads,
#: "wide" writes ledger-wide state (certificate history, every tenant, every key).
OPS: list[tuple[str, str, Op]] = [
    ("ensure_tenant", "tenant", lambda b, c, h: b.ensure_tenant("a", 1_000, connection=c)),
    ("try_reserve", "tenant", lambda b, c, h: b.try_reserve("a", 5, connection=c)),
    (
        "keyed_try_reserve",
        "tenant",
        lambda b, c, h: b.try_reserve("a", 5, idempotency_key="rk", connection=c),
    ),
    ("commit", "tenant", lambda b, c, h: b.commit(h["a"], 60, tenant_id="a", connection=c)),
    ("release", "tenant", lambda b, c, h: b.release(h["a2"], tenant_id="a", connection=c)),
    ("top_up", "tenant", lambda b, c, h: b.top_up_tenant("a", 7, connection=c)),
    ("set_cap", "tenant", lambda b, c, h: b.set_max_reserved_microcents("a", 900, connection=c)),
    ("batch", "tenant", lambda b, c, h: b.try_reserve_many([("a", 1), ("a", 2)], connection=c)),
    ("tenant", "read", lambda b, c, h: b.tenant("a", connection=c)),
    ("snapshot", "read", lambda b, c, h: b.snapshot(connection=c)),
    ("verify_conservation", "read", lambda b, c, h: b.verify_conservation(connection=c)),
    # As-of queries read the journal under the role's row-level security (docs/asof.md).
    (
        "balances_at",
        "read",
        lambda b, c, h: tuple(b.balances_at(datetime.now(UTC), connection=c)),
    ),
    (
        "spend_between",
        "read",
        lambda b, c, h: b.spend_between(
            datetime.now(UTC) - timedelta(days=1), datetime.now(UTC), connection=c
        ),
    ),
    ("asof_checkpoint", "wide", lambda b, c, h: b.asof_checkpoint(connection=c)),
    # It replays every chain and every certificate: ledger-wide, like the writes below.
    ("verify_journal", "wide", lambda b, c, h: b.verify_journal(connection=c)),
    ("certify", "wide", lambda b, c, h: b.certify(connection=c)),
    (
        "restore",
        "wide",
        lambda b, c, h: b.restore_from_snapshot(
            BudgetSnapshot(99, (TenantLedger("a", 5, 5, 0, 0),), 0), connection=c
        ),
    ),
    ("expire_holds", "wide", lambda b, c, h: b.expire_holds(connection=c)),
    (
        "prune_keys",
        "wide",
        lambda b, c, h: b.prune_idempotency_keys(timedelta(0), connection=c),
    ),
]

ROLES = ["owner", "ledger_app", "ledger_tenant_app", "ledger_auditor"]


def _cells() -> Iterator[Any]:
    for role in ROLES:
        for name, kind, op in OPS:
            yield pytest.param(role, name, kind, op, id=f"{role}-{name}")


@pytest.fixture(scope="module")
def matrix_template(server_url: str, template_db: str) -> Iterator[tuple[str, dict[str, int]]]:
    """A migrated database with the roles, row-level security, two tenants, holds and a
    certificate, built once; each cell runs on its own copy."""
    name = make_database(server_url, template_db)
    url = _database_url(server_url, name)
    create_roles(url)
    enable_row_level_security(url)
    with ledger.Ledger(url) as book:
        for t in ("a", "b"):
            book.ensure_tenant(t, 1_000)
        holds = {
            "a": book.try_reserve("a", 100, idempotency_key="h1").reservation_id,
            "a2": book.try_reserve("a", 50).reservation_id,
            "b": book.try_reserve("b", 30).reservation_id,
        }
        book.certify()
    try:
        yield name, holds  # type: ignore[misc]
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def shared(
    server_url: str, matrix_template: tuple[str, dict[str, int]]
) -> Iterator[tuple[ledger.Ledger, Any, str]]:
    """One copy for the cells that are allowed: each runs in a transaction rolled back after."""
    name = make_database(server_url, matrix_template[0])
    url = _database_url(server_url, name)
    book = ledger.Ledger(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        yield book, engine, url
    finally:
        engine.dispose()
        book.close()
        drop_database(server_url, name)


@pytest.fixture
def fresh(
    server_url: str, matrix_template: tuple[str, dict[str, int]]
) -> Iterator[tuple[ledger.Ledger, Any, str]]:
    """Its own copy, for cells that must be refused: they commit if they are not."""
    name = make_database(server_url, matrix_template[0])
    url = _database_url(server_url, name)
    book = ledger.Ledger(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        yield book, engine, url
    finally:
        engine.dispose()
        book.close()
        drop_database(server_url, name)


def _raw(db_url: str) -> psycopg.Connection:
    return psycopg.connect(_plain(db_url), autocommit=True)


def _as(engine: Any, role: str) -> Connection:
    conn: Connection = engine.connect()
    if role != "owner":
        conn.execute(text(f'SET ROLE "{role}"'))
        conn.commit()
    return conn


def _scope(conn: Connection, role: str) -> None:
    if role == "ledger_tenant_app":
        conn.execute(text("SET LOCAL ledger.tenant_id = 'a'"))


@pytest.mark.parametrize("role,name,kind,op", list(_cells()))
def test_role_matrix(
    request: pytest.FixtureRequest,
    matrix_template: tuple[str, dict[str, int]],
    role: str,
    name: str,
    kind: str,
    op: Op,
) -> None:
    holds = matrix_template[1]
    refused = role == "ledger_auditor" or (role == "ledger_tenant_app" and kind == "wide")
    book, engine, url = request.getfixturevalue("fresh" if refused else "shared")
    with _raw(url) as raw:
        before = state(raw)
    conn = _as(engine, role)
    try:
        if refused:
            with pytest.raises(errors.PermissionDenied), conn.begin():  # commits if not refused
                _scope(conn, role)
                op(book, conn, holds)
            with _raw(url) as raw:
                assert state(raw) == before  # nothing changed
            return
        tx = conn.begin()
        try:
            _scope(conn, role)
            result = op(book, conn, holds)
        finally:
            tx.rollback()  # the next cell starts from the same state
    finally:
        conn.close()
    if hasattr(result, "ok") and not isinstance(result, bool):
        assert result.ok, (role, name, result)
    if isinstance(result, list):
        assert all(o.ok for o in result), (role, name, result)
    if name == "snapshot":
        expected = ["a"] if role == "ledger_tenant_app" else ["a", "b"]
        assert [t.tenant_id for t in result.tenants] == expected  # a tenant sees itself only
    if name == "balances_at":
        expected = ["a"] if role == "ledger_tenant_app" else ["a", "b"]
        assert [t.tenant_id for t in result] == expected  # a tenant sees itself only
    if name == "spend_between":
        assert result.tenants == ()  # the template commits nothing
    if name == "verify_conservation":
        assert result.is_balanced
    if name == "verify_journal":
        assert result.ok, result
    with _raw(url) as raw:  # rolled back (sequences are not transactional)
        after = state(raw)
    assert {**after, "reservation_seq": None} == {**before, "reservation_seq": None}
