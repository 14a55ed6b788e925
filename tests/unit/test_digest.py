"""Digests, proofs and pure certificates (ledger/certificates.py), without a database.

Three independent references for ``ledger_digest``: the fixed vectors of
docs/digest.md, an encoder written from that document's table
(``tests.helpers.reference_digest``) on random snapshots, and the seed's own
engine (PyPI ``calybris``, in the test extra), which digests, proves and
certifies random restored states in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import pytest
from calybris import _core as calybris
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ledger import (
    BudgetSnapshot,
    TenantLedger,
    certify_snapshot,
    errors,
    ledger_digest,
    prove_conservation,
)
from ledger.outcomes import Balance
from tests.helpers import I64_MAX, I64_MIN, reference_digest

VECTORS = [
    (
        7,
        [("alpha", 100000, 90000, 0, 10000), ("zulu", 200000, 180000, 0, 20000)],
        0,
        "7b5002f589c5814cb7a35adb9f5e5c431e3de76473a3a14515b9a5ee9746a7b6",
    ),
    (
        42,
        [("desk-é", 1000000, 850000, 100000, 50000), ("Desk", 5, 5, 0, 0)],
        1,
        "0bc173709772b734c6ef5f9bc14bd9fecfa0f21f74eadc9ba0feedd991c17e7b",
    ),
    (1, [], 0, "2cbdfff1c2660dea9ce868bd8204caf1627d9f27d20df0a45b48b7b95438b0b6"),
]


def snap(version: int, rows: list[tuple[str, int, int, int, int]], active: int) -> BudgetSnapshot:
    return BudgetSnapshot(version, tuple(TenantLedger(*r) for r in rows), active)


@pytest.mark.parametrize(("version", "rows", "active", "hexdigest"), VECTORS)
def test_digest_vectors(version: int, rows: list, active: int, hexdigest: str) -> None:  # type: ignore[type-arg]
    assert ledger_digest(snap(version, rows, active)).hex() == hexdigest


@pytest.mark.parametrize(("version", "rows", "active", "hexdigest"), VECTORS)
def test_reference_encoder_reproduces_the_vectors(
    version: int, rows: list[tuple[str, int, int, int, int]], active: int, hexdigest: str
) -> None:
    assert reference_digest(version, rows, active).hex() == hexdigest


def test_vector_message_spelled_out() -> None:
    """docs/digest.md's first vector, every byte of the hashed message written by hand."""
    # fmt: off
    message = bytes.fromhex(
        "63616c796c64673100"  # "calyldg1" NUL
        + "0700000000000000"  # version 7, u64 little-endian
        + "0200000000000000"  # 2 tenants
        + "0000000000000000"  # 0 active reservations
        + "05000000" + "616c706861"  # "alpha": u32 length 5, UTF-8
        + "a086010000000000"  # initial 100000, i64 little-endian
        + "905f010000000000"  # remaining 90000
        + "0000000000000000"  # reserved 0
        + "1027000000000000"  # committed 10000
        + "04000000" + "7a756c75"  # "zulu"
        + "400d030000000000"  # initial 200000
        + "20bf020000000000"  # remaining 180000
        + "0000000000000000"  # reserved 0
        + "204e000000000000"  # committed 20000
    )
    # fmt: on
    assert hashlib.sha256(message).hexdigest() == VECTORS[0][3]


tenant_ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
)
i64 = st.integers(min_value=I64_MIN, max_value=I64_MAX)


@given(
    version=st.integers(0, 2**64 - 1),
    rows=st.lists(st.tuples(tenant_ids, i64, i64, i64, i64), max_size=6),
    active=st.integers(0, 2**64 - 1),
)
def test_digest_matches_the_documented_layout(
    version: int, rows: list[tuple[str, int, int, int, int]], active: int
) -> None:
    """Any representable snapshot, balanced or not, with duplicates or not."""
    assert ledger_digest(snap(version, rows, active)) == reference_digest(version, rows, active)


def test_digest_sorts_by_utf8_bytes_not_input_order() -> None:
    version, rows, active, hexdigest = VECTORS[1]
    assert ledger_digest(snap(version, list(reversed(rows)), active)).hex() == hexdigest


@pytest.mark.parametrize(
    "field",
    ["initial_microcents", "remaining_microcents", "reserved_microcents", "committed_microcents"],
)
def test_digest_changes_with_every_field(field: str) -> None:
    base = snap(*VECTORS[0][:3])
    changed = list(base.tenants)
    t = changed[0]
    changed[0] = TenantLedger(**{**t.to_dict(), field: getattr(t, field) + 1})
    assert ledger_digest(BudgetSnapshot(base.version, tuple(changed), 0)) != ledger_digest(base)


def test_digest_of_unrepresentable_snapshot_is_a_typed_error() -> None:
    with pytest.raises(errors.MalformedSnapshot):
        ledger_digest(snap(-1, [], 0))
    with pytest.raises(errors.MalformedSnapshot):
        ledger_digest(snap(1, [("a", 2**63, 0, 0, 0)], 0))


def test_prove_conservation_balanced() -> None:
    proof = prove_conservation(snap(*VECTORS[0][:3]))
    assert proof.ledger_digest_hex == VECTORS[0][3]
    assert (proof.total_initial_microcents, proof.total_committed_microcents) == (300000, 30000)
    assert proof.tenant_count == 2 and proof.aggregate_totals_representable


def test_prove_conservation_refuses_violation_and_aggregate_overflow() -> None:
    with pytest.raises(errors.ConservationError) as info:
        prove_conservation(snap(1, [("a", 10, 9, 0, 0)], 0))
    assert info.value.status.status is Balance.VIOLATION
    huge = snap(1, [("a", I64_MAX, I64_MAX, 0, 0), ("b", I64_MAX, I64_MAX, 0, 0)], 0)
    with pytest.raises(errors.ConservationError) as info:
        prove_conservation(huge)
    assert info.value.status.status is Balance.AGGREGATE_OVERFLOW


def test_certify_snapshot_aggregate_overflow_reports_zero_totals() -> None:
    # Matches the calybris binding: totals 0, not balanced, nothing counted.
    huge = snap(3, [("a", I64_MAX, I64_MAX, 0, 0), ("b", I64_MAX, I64_MAX, 0, 0)], 0)
    cert = certify_snapshot(huge)
    assert not cert.aggregate_totals_representable
    assert not cert.conservation_balanced
    assert cert.total_initial_microcents == cert.total_committed_microcents == 0
    assert cert.committed_since_last_certificate == 0


def test_certify_snapshot_measures_against_baseline() -> None:
    s = snap(*VECTORS[0][:3])
    assert certify_snapshot(s).committed_since_last_certificate == 30000
    assert (
        certify_snapshot(s, baseline_committed_microcents=10000).committed_since_last_certificate
        == 20000
    )
    assert (
        certify_snapshot(s, baseline_committed_microcents=99999).committed_since_last_certificate
        == 0
    )


# ------------------------------------------------------------ the seed's engine

TAG = 2**63  # the binding's "recovery-aware" version tag

balances = st.one_of(
    st.integers(0, 10**9), st.sampled_from([0, 1, I64_MAX // 2, I64_MAX - 1, I64_MAX])
)
restorable = st.dictionaries(tenant_ids, st.tuples(balances, balances), max_size=6).map(
    # (remaining, committed) with initial = remaining + committed, kept inside i64
    lambda d: {t: (r, min(c, I64_MAX - r)) for t, (r, c) in d.items()}
)
# After the restore: reserve `amount` on tenant `pick`, then settle it (commit `actual`,
# release, or leave it open).
activity = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.integers(1, 10**6),
        st.sampled_from(["commit", "release", "open"]),
        st.integers(1, 2 * 10**6),
    ),
    max_size=6,
)


def seed_engine(tenants: dict[str, tuple[int, int]], tmp: str) -> Any:
    engine = calybris.BudgetEngine()
    path = os.path.join(tmp, "snapshot.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "version": TAG + 1,
                "wal_high_watermark": None,
                "active_reservations": 0,
                "tenants": [
                    {
                        "tenant_id": tid,
                        "initial_microcents": r + c,
                        "remaining_microcents": r,
                        "reserved_microcents": 0,
                        "committed_microcents": c,
                    }
                    for tid, (r, c) in tenants.items()
                ],
            },
            f,
        )
    engine.restore(path)
    return engine


@settings(max_examples=150, deadline=None)
@given(tenants=restorable, steps=activity)
def test_digest_proof_and_certificate_match_the_seed_engine(
    tenants: dict[str, tuple[int, int]], steps: list[tuple[int, int, str, int]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        oracle = seed_engine(tenants, tmp)
    ids = sorted(tenants)
    for pick, amount, settle, actual in steps:
        if not ids:
            break
        hold = oracle.try_reserve(ids[pick % len(ids)], amount)
        if hold["status"] != "reserved":
            continue
        if settle == "commit":
            oracle.commit(hold["reservation_id"], actual)
        elif settle == "release":
            oracle.release(hold["reservation_id"])

    raw = oracle.snapshot()
    state = [TenantLedger(**t) for t in raw["tenants"]]

    try:
        theirs_proof = oracle.prove_conservation()
    except ValueError:  # the binding's refusal: unbalanced or unrepresentable totals
        theirs_proof = None
    theirs = oracle.certify()
    event(f"proof {'refused' if theirs_proof is None else 'issued'}")
    event(f"open holds: {min(raw['active_reservations'], 2)}")
    event(f"new spend certified: {theirs['committed_since_last_certificate'] > 0}")

    ours = certify_snapshot(
        BudgetSnapshot(theirs["snapshot_version"], state, raw["active_reservations"]),
        # calybris 1.3 sets its baseline to the restored committed total
        baseline_committed_microcents=sum(c for _, c in tenants.values()),
    ).to_dict()
    assert ours.pop("certificate_id") is None and ours.pop("journal_root_hex") is None
    assert ours == theirs
    rows = [
        (t.tenant_id, t.initial_microcents, t.remaining_microcents, t.reserved_microcents,
         t.committed_microcents)
        for t in state
    ]  # fmt: skip
    assert (
        ours["ledger_digest_hex"]
        == reference_digest(theirs["snapshot_version"], rows, raw["active_reservations"]).hex()
    )

    retag = BudgetSnapshot(
        theirs_proof["snapshot_version"] if theirs_proof else 0, state, raw["active_reservations"]
    )
    if theirs_proof is None:
        with pytest.raises(errors.ConservationError):
            prove_conservation(retag)
    else:
        assert prove_conservation(retag).to_dict() == theirs_proof
