"""Restore and certificates: seed semantics, atomicity and concurrency."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from sqlalchemy import Engine, create_engine

import ledger
from ledger import BudgetSnapshot, TenantLedger, ledger_digest
from tests.helpers import holds_match_reserved

pytestmark = pytest.mark.pg_versions


def _engine(url: str, size: int = 12) -> Engine:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=size)


@pytest.fixture
def pooled(db_url: str) -> Iterator[ledger.Ledger]:
    engine = _engine(db_url, 24)
    yield ledger.Ledger(engine)
    engine.dispose()


def snap(version: int, *rows: tuple[str, int, int, int]) -> BudgetSnapshot:
    """rows: (id, initial, remaining, committed); reserved is always 0 in a restorable snapshot."""
    return BudgetSnapshot(version, tuple(TenantLedger(t, i, r, 0, c) for t, i, r, c in rows), 0)


def test_restore_replaces_state_voids_holds_and_sets_version(book: ledger.Ledger) -> None:
    book.ensure_tenant("keep", 100)
    book.ensure_tenant("drop", 100)
    hold = book.try_reserve("keep", 40).reservation_id
    target = snap(41, ("keep", 500, 300, 200), ("new", 7, 7, 0))
    book.restore_from_snapshot(target)
    assert book.snapshot_version() == 41
    after = book.snapshot()
    assert after.version == 42
    assert list(after.tenants) == list(target.tenants)
    assert after.active_reservations == 0
    assert book.commit(hold, 1).status == "missing_reservation"  # type: ignore[arg-type]
    assert book.tenant("drop") is None


def test_restore_keeps_caps_like_the_seed(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("kept", 1_000)
    book.ensure_tenant("dropped", 1_000)
    book.set_max_reserved_microcents("kept", 10)
    book.set_max_reserved_microcents("dropped", 20)
    book.restore_from_snapshot(snap(3, ("kept", 1_000, 1_000, 0)))
    assert book.max_reserved_microcents("kept") == 10
    assert book.try_reserve("kept", 11).status == "exposure_limit_exceeded"
    # the seed's cap map still knows "dropped": re-creating it brings the cap back
    assert book.ensure_tenant("dropped", 1_000)
    assert book.max_reserved_microcents("dropped") == 20
    assert raw.execute("SELECT count(*) FROM ledger.detached_tenants").fetchone() == (0,)
    # and a tenant restored back into existence gets its parked cap as well
    book.restore_from_snapshot(snap(4, ("kept", 1_000, 1_000, 0)))
    book.restore_from_snapshot(snap(5, ("kept", 1_000, 1_000, 0), ("dropped", 5, 5, 0)))
    assert book.max_reserved_microcents("dropped") == 20


def test_restore_waits_for_writers_and_is_atomic(db_url: str) -> None:
    engine = _engine(db_url)
    book = ledger.Ledger(engine)
    book.ensure_tenant("a", 1_000)
    target = snap(9, ("a", 50, 50, 0), ("b", 60, 10, 50))
    with engine.begin() as conn:
        book.try_reserve("a", 100, connection=conn)  # an open writer holds a row lock
        restorer = threading.Thread(target=book.restore_from_snapshot, args=(target,))
        restorer.start()
        time.sleep(0.5)
        assert restorer.is_alive(), "restore must wait for the in-flight writer"
    restorer.join(30)
    assert not restorer.is_alive()
    after = book.snapshot()
    assert list(after.tenants) == list(target.tenants)
    assert (after.version, after.active_reservations) == (10, 0)
    engine.dispose()


def test_restore_under_concurrent_load_keeps_every_invariant(
    pooled: ledger.Ledger, raw: psycopg.Connection
) -> None:
    names = [f"t{i}" for i in range(4)]
    for n in names:
        pooled.ensure_tenant(n, 2_000_000)
    stop = threading.Event()
    bad: list[object] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            tenant = rng.choice(names)
            hold = pooled.try_reserve(tenant, rng.randint(1, 50_000))
            if hold.ok:
                out = pooled.commit(hold.reservation_id, rng.randint(0, 60_000))  # type: ignore[arg-type]
                if out.status not in ("committed", "overrun", "missing_reservation"):
                    bad.append(out)

    def reader() -> None:
        while not stop.is_set():
            s = pooled.snapshot()
            if not ledger.conservation_status_for_snapshot(s).is_balanced:
                bad.append(s)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(writer, i) for i in range(6)] + [pool.submit(reader)]
        for round_no in range(5):
            time.sleep(0.2)
            pooled.restore_from_snapshot(
                snap(100 + round_no, *[(n, 3_000_000, 3_000_000, 0) for n in names])
            )
        stop.set()
        for f in futures:
            f.result(60)
    assert bad == []
    assert pooled.verify_conservation().is_balanced
    assert holds_match_reserved(raw) == []


def test_certificates_are_stored_with_their_digest(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("a", 1_000)
    rid = book.try_reserve("a", 300).reservation_id
    book.commit(rid, 250)  # type: ignore[arg-type]
    cert = ledger.certify_ledger(book)
    row = raw.execute(
        "SELECT snapshot_version, ledger_digest, total_committed_microcents,"
        " committed_since_last_certificate, baseline_before_microcents, baseline_after_microcents"
        " FROM ledger.certificates"
    ).fetchall()
    assert row == [(cert.snapshot_version, bytes.fromhex(cert.ledger_digest_hex), 250, 250, 0, 250)]
    assert book.committed_since_last_certificate() == 0
    rid = book.try_reserve("a", 100).reservation_id
    book.commit(rid, 100)  # type: ignore[arg-type]
    assert book.committed_since_last_certificate() == 100
    # the certificate's digest is the digest of the snapshot it certified
    again = book.certify()
    assert again.committed_since_last_certificate == 100
    s = book.snapshot()
    replay = BudgetSnapshot(again.snapshot_version, s.tenants, s.active_reservations)
    assert ledger_digest(replay).hex() == again.ledger_digest_hex


def test_concurrent_certifiers_never_count_spend_twice(
    pooled: ledger.Ledger, raw: psycopg.Connection
) -> None:
    pooled.ensure_tenant("a", 10**12)
    stop = threading.Event()

    def spender(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            hold = pooled.try_reserve("a", 1_000)
            pooled.commit(hold.reservation_id, rng.randint(1, 1_000))  # type: ignore[arg-type]

    def certifier(_: int) -> list[int]:
        return [pooled.certify().committed_since_last_certificate for _ in range(10)]

    with ThreadPoolExecutor(10) as pool:
        spenders = [pool.submit(spender, i) for i in range(3)]
        deltas = [d for ds in pool.map(certifier, range(6)) for d in ds]
        stop.set()
        for f in spenders:
            f.result(60)
    final = pooled.certify().committed_since_last_certificate
    rows = raw.execute(
        "SELECT committed_since_last_certificate, baseline_before_microcents,"
        " baseline_after_microcents, total_committed_microcents FROM ledger.certificates"
        " ORDER BY certificate_id"
    ).fetchall()
    assert len(rows) == 61
    assert sum(r[0] for r in rows) == sum(deltas) + final
    highest = max(r[3] for r in rows)
    assert sum(r[0] for r in rows) == highest  # every microcent counted exactly once
    for since, before, after, total in rows:
        assert after >= before and since == max(total - before, 0)
    # baselines chain: each certificate starts where the previous one (in lock order) ended
    assert all(rows[i + 1][1] == rows[i][2] for i in range(len(rows) - 1))
