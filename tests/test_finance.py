"""Digest byte-compatibility, proofs and pure certificates (no database)."""

from __future__ import annotations

import pytest

from ledger import (
    BudgetSnapshot,
    TenantLedger,
    certify_snapshot,
    errors,
    ledger_digest,
    prove_conservation,
)
from ledger.outcomes import Balance

from .helpers import I64_MAX

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
