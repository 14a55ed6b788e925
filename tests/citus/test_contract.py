"""Every public operation on a distributed schema: exact results, and what it sent.

Each test runs one operation on a fresh distributed schema, checks its outcome
and the balances to the microcent, and records the remote commands of the call
(the "Citus routing" table at the end of the run).

Every operation works on Citus. ``test_routing`` holds the issue's target for
single-tenant operations, keyed (idempotent) calls included: one remote
command, to one worker, no two-phase commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import ledger
from ledger import BudgetSnapshot, TenantLedger, errors
from tests.helpers import holds_match_reserved

from .conftest import Recorder, Remote


def settled(book: ledger.Ledger, raw: psycopg.Connection, schema: str) -> None:
    """The invariants every test ends with."""
    assert book.verify_conservation().is_balanced
    assert holds_match_reserved(raw, schema) == []
    report = book.verify_journal()
    assert report.ok, report.discrepancies


def call(recorder: Recorder, name: str, fn: Callable[[], Any]) -> tuple[Any, Remote]:
    with recorder.capture(name) as remote:
        result = fn()
    return result, remote


# ------------------------------------------------------------------ tenants


def test_ensure_tenant(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    created, _ = call(recorder, "ensure_tenant", lambda: book.ensure_tenant("acme", 1_000))
    assert created is True
    again, _ = call(recorder, "ensure_tenant (exists)", lambda: book.ensure_tenant("acme", 5))
    assert again is False
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 1_000, 0, 0)
    settled(book, raw, schema)


def test_top_up_and_cap(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 1_000)
    out, _ = call(recorder, "top_up_tenant", lambda: book.top_up_tenant("acme", 500))
    assert out.ok and out.remaining_microcents == 1_500
    out, _ = call(
        recorder, "top_up_tenant (key)", lambda: book.top_up_tenant("acme", 7, idempotency_key="k")
    )
    again = book.top_up_tenant("acme", 7, idempotency_key="k")
    assert again == out and book.remaining_microcents("acme") == 1_507
    call(
        recorder,
        "set_max_reserved_microcents",
        lambda: book.set_max_reserved_microcents("acme", 100),
    )
    assert book.max_reserved_microcents("acme") == 100
    assert book.try_reserve("acme", 101).status == "exposure_limit_exceeded"
    with pytest.raises(errors.TenantNotFound):
        book.set_max_reserved_microcents("nobody", 5)
    settled(book, raw, schema)


# ------------------------------------------------------------------ reserve


def test_try_reserve_every_outcome(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 1_000)
    hold, _ = call(recorder, "try_reserve", lambda: book.try_reserve("acme", 600))
    assert hold.status == "reserved" and hold.remaining_microcents == 400
    short, _ = call(recorder, "try_reserve (insufficient)", lambda: book.try_reserve("acme", 600))
    assert short.status == "insufficient"
    assert book.try_reserve("nobody", 1).status == "missing_tenant"
    assert book.try_reserve("acme", 0).status == "insufficient"
    keyed, _ = call(
        recorder, "try_reserve (key)", lambda: book.try_reserve("acme", 100, idempotency_key="r1")
    )
    assert book.try_reserve("acme", 100, idempotency_key="r1") == keyed
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 300, 700, 0)
    settled(book, raw, schema)


def test_reservation_ids_are_unique(book: ledger.Ledger) -> None:
    for t in ("a", "b", "c", "d"):
        book.ensure_tenant(t, 10**6)
    ids = [book.try_reserve(t, 1).reservation_id for t in ("a", "b", "c", "d") * 25]
    assert len(set(ids)) == 100


# ------------------------------------------------------------------ settle


def test_release_with_tenant(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 1_000)
    hold = book.try_reserve("acme", 300)
    out, _ = call(
        recorder,
        "release (tenant_id)",
        lambda: book.release(hold.reservation_id, tenant_id="acme"),  # type: ignore[arg-type]
    )
    assert out.status == "released" and out.returned_microcents == 300
    gone = book.release(hold.reservation_id, tenant_id="acme")  # type: ignore[arg-type]
    assert gone.status == "missing_reservation"
    keyed = book.try_reserve("acme", 50)
    out, _ = call(
        recorder,
        "release (tenant_id, key)",
        lambda: book.release(keyed.reservation_id, tenant_id="acme", idempotency_key="x"),  # type: ignore[arg-type]
    )
    assert out.status == "released"
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 1_000, 0, 0)
    settled(book, raw, schema)


def test_release_without_tenant(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 1_000)
    hold = book.try_reserve("acme", 300)
    out, _ = call(recorder, "release", lambda: book.release(hold.reservation_id))  # type: ignore[arg-type]
    assert out.status == "released"
    settled(book, raw, schema)


def test_commit_with_tenant(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 1_000)
    hold = book.try_reserve("acme", 300)
    out, _ = call(
        recorder,
        "commit (tenant_id)",
        lambda: book.commit(hold.reservation_id, 200, tenant_id="acme"),  # type: ignore[arg-type]
    )
    assert out.status == "committed" and out.remaining_microcents == 800
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 800, 0, 200)
    settled(book, raw, schema)


def test_commit_without_tenant(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 1_000)
    hold = book.try_reserve("acme", 300)
    out, _ = call(recorder, "commit", lambda: book.commit(hold.reservation_id, 350))  # type: ignore[arg-type]
    assert out.status == "committed" and out.remaining_microcents == 650
    settled(book, raw, schema)


def test_commit_with_key_and_overrun(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 100)
    hold = book.try_reserve("acme", 60)
    rid = hold.reservation_id
    assert rid is not None
    over = book.commit(rid, 500, tenant_id="acme")
    assert over.status == "overrun"
    out, _ = call(
        recorder,
        "commit (tenant_id, key)",
        lambda: book.commit(rid, 50, tenant_id="acme", idempotency_key="c1"),
    )
    assert book.commit(rid, 50, tenant_id="acme", idempotency_key="c1") == out
    assert book.tenant("acme") == TenantLedger("acme", 100, 50, 0, 50)
    settled(book, raw, schema)


def test_hold_context_manager(book: ledger.Ledger, raw: psycopg.Connection, schema: str) -> None:
    book.ensure_tenant("acme", 1_000)
    with book.hold("acme", 400) as h:
        h.settle(250)
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 750, 0, 250)
    settled(book, raw, schema)


def test_commit_with_tenant_of_a_lapsed_hold(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str
) -> None:
    book.ensure_tenant("acme", 1_000)
    hold = book.try_reserve("acme", 300, ttl=timedelta(microseconds=1))
    time.sleep(0.01)
    out = book.commit(hold.reservation_id, 200, tenant_id="acme")  # type: ignore[arg-type]
    assert out.status == "expired"
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 1_000, 0, 0)
    settled(book, raw, schema)


# ------------------------------------------------------------------ batches


def test_try_reserve_many(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("a", 100)
    book.ensure_tenant("b", 100)
    outs, _ = call(
        recorder,
        "try_reserve_many",
        lambda: book.try_reserve_many([("a", 60), ("b", 60), ("a", 60)]),
    )
    assert [o.status for o in outs] == ["reserved", "reserved", "insufficient"]
    settled(book, raw, schema)


def test_commit_and_release_many(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("a", 100)
    book.ensure_tenant("b", 100)
    h = [book.try_reserve(t, 30).reservation_id for t in ("a", "b", "a", "b")]
    outs, _ = call(recorder, "commit_many", lambda: book.commit_many([(h[0], 10), (h[1], 30)]))
    assert [o.status for o in outs] == ["committed", "committed"]
    outs, _ = call(recorder, "release_many", lambda: book.release_many([h[2], h[3]]))
    assert [o.status for o in outs] == ["released", "released"]
    assert book.total_committed_microcents() == 40
    settled(book, raw, schema)


# ------------------------------------------------------------------ expiry


def test_expire_holds(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 1_000)
    book.try_reserve("acme", 300, ttl=timedelta(microseconds=1))
    time.sleep(0.01)
    n, _ = call(recorder, "expire_holds", lambda: book.expire_holds())
    assert n == 1
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 1_000, 0, 0)
    settled(book, raw, schema)


def test_lazy_expiry_on_a_refused_reserve(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 1_000)
    book.try_reserve("acme", 900, ttl=timedelta(microseconds=1))
    time.sleep(0.01)
    hold, _ = call(recorder, "try_reserve (lazy expiry)", lambda: book.try_reserve("acme", 500))
    assert hold.status == "reserved"
    assert book.tenant("acme") == TenantLedger("acme", 1_000, 500, 500, 0)
    settled(book, raw, schema)


# ------------------------------------------------------------------ keys


def test_idempotency_keys(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("acme", 1_000)
    first = book.try_reserve("acme", 10, idempotency_key="same")
    assert book.try_reserve("acme", 10, idempotency_key="same") == first
    with pytest.raises(errors.IdempotencyConflict):
        book.try_reserve("acme", 11, idempotency_key="same")
    n, _ = call(
        recorder,
        "prune_idempotency_keys",
        lambda: book.prune_idempotency_keys(timedelta(0)),
    )
    assert n == 1
    settled(book, raw, schema)


# ------------------------------------------------------------------ reads, snapshots, proofs


def test_reads(book: ledger.Ledger, recorder: Recorder) -> None:
    book.ensure_tenant("acme", 1_000)
    book.ensure_tenant("zed", 5)
    book.try_reserve("acme", 10)
    t, _ = call(recorder, "tenant", lambda: book.tenant("acme"))
    assert t == TenantLedger("acme", 1_000, 990, 10, 0)
    n, _ = call(recorder, "tenant_count", lambda: book.tenant_count())
    assert n == 2
    assert book.active_reservations() == 1
    assert book.total_committed_microcents() == 0
    assert book.committed_since_last_certificate() == 0


def test_snapshot_and_conservation(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    for i in range(20):
        book.ensure_tenant(f"t{i:02}", 1_000 + i)
    book.try_reserve("t03", 3)
    snap, _ = call(recorder, "snapshot", lambda: book.snapshot())
    assert [t.tenant_id for t in snap.tenants] == [f"t{i:02}" for i in range(20)]
    assert snap.active_reservations == 1
    assert ledger.conservation_status_for_snapshot(snap).is_balanced
    status, _ = call(recorder, "verify_conservation", lambda: book.verify_conservation())
    assert status.is_balanced
    assert book.snapshot().version > snap.version + 1  # verify_conservation advanced it
    settled(book, raw, schema)


def test_certify(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("a", 1_000)
    book.ensure_tenant("b", 2_000)
    cert, _ = call(recorder, "certify", lambda: book.certify())
    assert cert.tenant_count == 2 and cert.conservation_balanced
    assert cert.total_initial_microcents == 3_000
    snap = book.snapshot()
    assert ledger.certify_snapshot(snap).ledger_digest_hex != ""  # pure function works as well
    report, _ = call(recorder, "verify_journal", lambda: book.verify_journal())
    assert report.ok and report.certificates_checked == 1
    since = book.verify_journal(since_certificate=cert.certificate_id)
    assert since.ok
    settled(book, raw, schema)


def test_restore_from_snapshot(
    book: ledger.Ledger, raw: psycopg.Connection, schema: str, recorder: Recorder
) -> None:
    book.ensure_tenant("keep", 1_000)
    book.ensure_tenant("drop", 1_000)
    snap = BudgetSnapshot(
        7, (TenantLedger("keep", 500, 400, 0, 100), TenantLedger("new", 9, 5, 0, 4)), 0
    )
    call(recorder, "restore_from_snapshot", lambda: book.restore_from_snapshot(snap))
    assert book.snapshot().tenants == snap.tenants
    settled(book, raw, schema)


def test_restore_validation_refuses_before_touching_anything(book: ledger.Ledger) -> None:
    book.ensure_tenant("keep", 1_000)
    bad = BudgetSnapshot(7, (TenantLedger("keep", 500, 400, 1, 100),), 0)
    with pytest.raises(errors.GhostReservation):
        book.restore_from_snapshot(bad)
    assert book.tenant("keep") == TenantLedger("keep", 1_000, 1_000, 0, 0)


# ------------------------------------------------------------------ audit views


def test_audit_views(book: ledger.Ledger, raw: psycopg.Connection, schema: str) -> None:
    from ledger.audit import AUDIT_VIEWS

    book.ensure_tenant("acme", 1_000)
    book.ensure_tenant("zed", 50)
    book.try_reserve("acme", 100)
    book.top_up_tenant("zed", 5)
    book.certify()
    s = f'"{schema}"'
    for view in AUDIT_VIEWS:
        raw.execute(f"SELECT * FROM {s}.{view}").fetchall()
    balances = raw.execute(
        f"SELECT tenant_id, open_holds, balanced, journal_entries FROM {s}.balances ORDER BY 1"
    ).fetchall()
    assert balances == [("acme", 1, True, 2), ("zed", 0, True, 2)]
    assert raw.execute(f"SELECT count(*) FROM {s}.conservation_violations").fetchone() == (0,)
    assert raw.execute(f"SELECT count(*) FROM {s}.reserved_mismatches").fetchone() == (0,)
    assert raw.execute(f"SELECT amount_microcents FROM {s}.open_holds").fetchall() == [(100,)]
    assert raw.execute(f"SELECT count(*) FROM {s}.certificate_history").fetchone() == (1,)
    entries = raw.execute(
        f"SELECT op, topped_up_total_microcents FROM {s}.journal_entries"
        " WHERE tenant_id = 'zed' ORDER BY seq"
    ).fetchall()
    assert entries == [("create", 0), ("top_up", 5)]


# ------------------------------------------------------------------ routing targets

SINGLE_TENANT = {
    # name: (set-up, the call), each on tenant "acme" with 1_000 and a hold of 100 open
    "ensure_tenant": lambda b, rid: b.ensure_tenant("new", 5),
    "top_up_tenant": lambda b, rid: b.top_up_tenant("acme", 5),
    "top_up_tenant (key)": lambda b, rid: b.top_up_tenant("acme", 5, idempotency_key="k"),
    "set_max_reserved_microcents": lambda b, rid: b.set_max_reserved_microcents("acme", 10**6),
    "try_reserve": lambda b, rid: b.try_reserve("acme", 5),
    "try_reserve (key)": lambda b, rid: b.try_reserve("acme", 5, idempotency_key="k"),
    "commit (tenant_id)": lambda b, rid: b.commit(rid, 50, tenant_id="acme"),
    "commit (tenant_id, key)": lambda b, rid: b.commit(
        rid, 50, tenant_id="acme", idempotency_key="k"
    ),
    "release (tenant_id)": lambda b, rid: b.release(rid, tenant_id="acme"),
    "release (tenant_id, key)": lambda b, rid: b.release(
        rid, tenant_id="acme", idempotency_key="k"
    ),
    "adjust": lambda b, rid: b.adjust("acme", 5, reason="fix"),
    "adjust (key)": lambda b, rid: b.adjust("acme", 5, reason="fix", idempotency_key="k"),
    "tenant": lambda b, rid: b.tenant("acme"),
}


@pytest.mark.parametrize("name", list(SINGLE_TENANT))
def test_routing(name: str, book: ledger.Ledger, recorder: Recorder) -> None:
    """Single-tenant calls: one remote command, to one worker, no two-phase commit."""
    book.ensure_tenant("acme", 1_000)
    rid = book.try_reserve("acme", 100).reservation_id
    with recorder.capture(f"routing: {name}") as remote:
        SINGLE_TENANT[name](book, rid)
    assert remote.one_round_trip(), remote.summary()


@pytest.mark.parametrize("name", [n for n in SINGLE_TENANT if "key" in n])
def test_keyed_calls_are_one_routed_function_call(
    name: str, book: ledger.Ledger, recorder: Recorder
) -> None:
    """Idempotent calls: claim, operation and record in one call of its keyed function."""
    book.ensure_tenant("acme", 1_000)
    rid = book.try_reserve("acme", 100).reservation_id
    with recorder.capture(f"keyed: {name}") as remote:
        SINGLE_TENANT[name](book, rid)
    assert remote.one_round_trip(), remote.summary()
    assert "routed_keyed_" in remote.statements[0], remote.statements
