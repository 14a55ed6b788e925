"""A hot standby: reads and verification work there, writes fail with a typed error.

The module starts a primary and a streaming standby (``pg_basebackup -R``)
from Debian's PostgreSQL binaries on loopback ports (docs/deployment.md).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import ledger
from ledger import errors
from ledger.audit import AUDIT_VIEWS
from tests.faults import PgServer, require_replication_binaries
from tests.helpers import state


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[PgServer, PgServer]]:
    require_replication_binaries()
    root = PgServer.workspace()
    primary = PgServer(root, "primary").init_primary()
    standby: PgServer | None = None
    try:
        ledger.migrate(primary.url)
        with ledger.Ledger(primary.url) as book:
            for t in ("r1", "r2"):
                book.ensure_tenant(t, 10_000)
            hold = book.try_reserve("r1", 1_000, idempotency_key="k1")
            book.commit(hold.reservation_id, 400)  # type: ignore[arg-type]
            book.try_reserve("r2", 300)  # an open hold
            book.certify()
        standby = PgServer(root, "standby").standby_of(primary)
        standby.wait_replayed(primary)
        yield primary, standby
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_reads_and_verification_on_the_standby(pair: tuple[PgServer, PgServer]) -> None:
    _, standby = pair
    with psycopg.connect(standby.plain, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    with ledger.Ledger(standby.url) as replica:
        assert replica.tenant("r1") == ledger.TenantLedger("r1", 10_000, 9_600, 0, 400)
        assert replica.verify_journal().ok
        assert replica.active_reservations() == 1
        assert replica.committed_since_last_certificate() == 0
    with psycopg.connect(standby.plain, autocommit=True) as conn:
        for view in AUDIT_VIEWS:
            conn.execute(f"SELECT * FROM ledger.{view}").fetchall()


def test_snapshot_and_conservation_on_the_standby(pair: tuple[PgServer, PgServer]) -> None:
    primary, standby = pair
    with ledger.Ledger(standby.url) as replica, ledger.Ledger(primary.url) as main:
        assert replica.verify_conservation().is_balanced
        snap = replica.snapshot()
        assert snap.tenants == main.snapshot().tenants
        assert ledger.conservation_status_for_snapshot(snap).is_balanced


WRITES: list[tuple[str, Any]] = [
    ("ensure_tenant", lambda b: b.ensure_tenant("new", 5)),
    ("try_reserve", lambda b: b.try_reserve("r1", 5)),
    ("keyed try_reserve", lambda b: b.try_reserve("r1", 5, idempotency_key="fresh")),
    ("commit", lambda b: b.commit(1, 1, tenant_id="r1")),
    ("release", lambda b: b.release(2)),
    ("top_up", lambda b: b.top_up_tenant("r1", 5)),
    ("batch", lambda b: b.try_reserve_many([("r1", 1), ("r2", 1)])),
    ("certify", lambda b: b.certify()),
    ("expire_holds", lambda b: b.expire_holds()),
    (
        "restore",
        lambda b: b.restore_from_snapshot(
            ledger.BudgetSnapshot(1, (ledger.TenantLedger("r1", 10, 10, 0, 0),), 0)
        ),
    ),
    ("prune_keys", lambda b: b.prune_idempotency_keys(timedelta(0))),
    ("set_cap", lambda b: b.set_max_reserved_microcents("r1", 5)),
]


@pytest.mark.parametrize("name,write", WRITES, ids=[w[0] for w in WRITES])
def test_writes_on_the_standby_are_typed_errors(
    pair: tuple[PgServer, PgServer], name: str, write: Any
) -> None:
    primary, standby = pair
    with psycopg.connect(primary.plain, autocommit=True) as conn:
        before = state(conn)
    with ledger.Ledger(standby.url) as replica, pytest.raises(errors.ReadOnlyDatabase) as info:
        write(replica)
    assert info.value.sqlstate == "25006" and "primary" in str(info.value)
    standby.wait_replayed(primary)
    with psycopg.connect(primary.plain, autocommit=True) as conn:
        assert state(conn) == before


def test_read_only_session_on_the_primary_is_the_same_typed_error(
    pair: tuple[PgServer, PgServer],
) -> None:
    primary, _ = pair
    url = primary.url + "?options=-c%20default_transaction_read_only%3Don"
    with ledger.Ledger(url) as ro:
        assert ro.verify_journal().ok
        with pytest.raises(errors.ReadOnlyDatabase):
            ro.top_up_tenant("r1", 1)
