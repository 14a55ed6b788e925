"""Snapshot values (ledger/snapshot.py), without a database.

JSON round trips (fixed and random), refusal of malformed documents with
``MalformedSnapshot``, the conservation status, and the restore validation,
which must accept exactly what the seed's engine (PyPI ``calybris``) accepts
and refuse with the same error first.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import pytest
from calybris import _core as calybris
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ledger import BudgetSnapshot, TenantLedger, conservation_status_for_snapshot, errors
from ledger.outcomes import Balance
from ledger.snapshot import validate_for_restore
from tests.helpers import I64_MAX, I64_MIN

GOOD = {
    "version": 3,
    "active_reservations": 0,
    "tenants": [
        {
            "tenant_id": "desk-é",
            "initial_microcents": 10,
            "remaining_microcents": 7,
            "reserved_microcents": 0,
            "committed_microcents": 3,
        }
    ],
}


def test_json_round_trip() -> None:
    s = BudgetSnapshot.from_dict(GOOD)
    assert BudgetSnapshot.from_json(s.to_json()) == s
    assert s.tenants[0] == TenantLedger("desk-é", 10, 7, 0, 3)


def mutate(path: list[Any], value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(GOOD))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        "snapshot",
        mutate(["version"], -1),
        mutate(["version"], 2**64),
        mutate(["version"], 1.0),
        mutate(["version"], True),
        mutate(["version"], "3"),
        mutate(["version"], KeyError),
        mutate(["active_reservations"], -1),
        mutate(["tenants"], {}),
        mutate(["tenants"], [1]),
        mutate(["extra"], 1),
        mutate(["tenants", 0, "tenant_id"], ""),
        mutate(["tenants", 0, "tenant_id"], "a\x00b"),
        mutate(["tenants", 0, "tenant_id"], "x" * 256),
        mutate(["tenants", 0, "tenant_id"], 5),
        mutate(["tenants", 0, "initial_microcents"], 2**63),
        mutate(["tenants", 0, "initial_microcents"], I64_MIN - 1),
        mutate(["tenants", 0, "initial_microcents"], 10.0),
        mutate(["tenants", 0, "initial_microcents"], None),
        mutate(["tenants", 0, "committed_microcents"], KeyError),
        mutate(["tenants", 0, "surprise"], 0),
    ],
)
def test_malformed_documents_raise_typed_error(doc: Any) -> None:
    with pytest.raises(errors.MalformedSnapshot):
        BudgetSnapshot.from_dict(doc)


@pytest.mark.parametrize("text", ["", "{", "[1,", "nan", '{"version": NaN}', "[" * 100000])
def test_bad_json_raises_typed_error(text: str) -> None:
    with pytest.raises(errors.MalformedSnapshot):
        BudgetSnapshot.from_json(text)


def test_extreme_but_valid_values_load() -> None:
    doc = mutate(["tenants", 0, "initial_microcents"], I64_MAX)
    assert BudgetSnapshot.from_dict(doc).tenants[0].initial_microcents == I64_MAX


def t(tid: str, i: int, r: int, res: int, c: int) -> TenantLedger:
    return TenantLedger(tid, i, r, res, c)


@pytest.mark.parametrize(
    ("tenants", "active", "error", "fields"),
    [
        ([t("a", 1, 1, 0, 0)], 2, errors.ActiveReservations, {"count": 2}),
        ([t("a", 1, 1, 0, 0), t("a", 1, 1, 0, 0)], 0, errors.DuplicateTenant, {"tenant_id": "a"}),
        ([t("a", 1, 0, 1, 0)], 0, errors.GhostReservation, {"reserved_microcents": 1}),
        ([t("a", 1, 2, -1, 0)], 0, errors.GhostReservation, {"reserved_microcents": -1}),
        ([t("a", -1, -1, 0, 0)], 0, errors.NegativeLedgerField, {"field": "remaining_microcents"}),
        ([t("a", -1, 0, 0, -1)], 0, errors.NegativeLedgerField, {"field": "initial_microcents"}),
        ([t("a", 0, 1, 0, -1)], 0, errors.NegativeLedgerField, {"field": "committed_microcents"}),
        ([t("a", 2, 1, 0, 0)], 0, errors.ConservationViolation, {}),
        ([t("a", 0, I64_MAX, 0, 1)], 0, errors.ConservationViolation, {}),
    ],
)
def test_restore_validation_follows_seed_order(
    tenants: list[TenantLedger], active: int, error: type[Exception], fields: dict[str, Any]
) -> None:
    with pytest.raises(error) as info:
        validate_for_restore(BudgetSnapshot(1, tuple(tenants), active))
    for name, value in fields.items():
        assert getattr(info.value, name) == value


def test_conservation_status_reports_first_offender_and_negative_remaining() -> None:
    s = BudgetSnapshot(1, (t("a", 5, 5, 0, 0), t("b", 5, 4, 0, 0), t("c", 1, 0, 0, 0)), 0)
    status = conservation_status_for_snapshot(s)
    assert (status.status, status.tenant_id, status.delta_microcents) == (
        Balance.VIOLATION,
        "b",
        -1,
    )
    neg = conservation_status_for_snapshot(BudgetSnapshot(1, (t("a", 0, -5, 5, 0),), 0))
    assert (neg.tenant_id, neg.delta_microcents) == ("a", -5)
    overflow = conservation_status_for_snapshot(
        BudgetSnapshot(1, (t("a", I64_MIN, I64_MAX, 1, 0),), 0)
    )
    assert overflow.status is Balance.AGGREGATE_OVERFLOW


# ------------------------------------------------------------ random documents

tenant_ids = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)
i64 = st.integers(min_value=I64_MIN, max_value=I64_MAX)
tenant_ledgers = st.builds(
    TenantLedger, tenant_ids.filter(lambda t: len(t.encode()) <= 255), i64, i64, i64, i64
)
snapshots = st.builds(
    BudgetSnapshot,
    st.integers(0, 2**64 - 1),
    st.lists(tenant_ledgers, max_size=5).map(tuple),
    st.integers(0, 2**64 - 1),
)


@given(snapshots, st.sampled_from([None, 2]))
def test_any_representable_snapshot_survives_json(
    snapshot: BudgetSnapshot, indent: int | None
) -> None:
    text = snapshot.to_json(indent=indent)
    assert BudgetSnapshot.from_json(text) == snapshot
    assert BudgetSnapshot.from_json(text.encode("utf-8")) == snapshot
    assert BudgetSnapshot.from_dict(json.loads(text)) == snapshot
    assert json.loads(text)["tenants"] == [t.to_dict() for t in snapshot.tenants]


# The seed's engine reports restore failures as text; classify them like our exceptions.
SEED_RESTORE_ERRORS = [
    (r"cannot restore snapshot with \d+ active reservations", errors.ActiveReservations),
    (r"duplicate tenant_id", errors.DuplicateTenant),
    (r"with no active reservations", errors.GhostReservation),
    (r"has negative", errors.NegativeLedgerField),
    (r"failed conservation", errors.ConservationViolation),
]

small = st.integers(-3, 12)
near_edges = st.sampled_from([I64_MIN, -1, 0, 1, I64_MAX - 1, I64_MAX])
mostly_zero = st.one_of(st.just(0), st.just(0), st.just(0), small)


def candidate(tid: str, remaining: int, reserved: int, committed: int, skew: int) -> TenantLedger:
    """A tenant that balances unless ``skew`` (or an i64 overflow) says otherwise."""
    initial = remaining + reserved + committed + skew
    return TenantLedger(tid, min(max(initial, I64_MIN), I64_MAX), remaining, reserved, committed)


restore_candidates = st.builds(
    BudgetSnapshot,
    st.just(5),
    st.lists(
        st.builds(
            candidate,
            st.sampled_from(["a", "b", "é", "B", "a"]),
            st.one_of(st.integers(0, 12), near_edges),
            mostly_zero,
            st.one_of(st.integers(0, 12), near_edges),
            st.one_of(st.just(0), st.just(0), st.integers(-2, 2)),
        ),
        max_size=4,
    ).map(tuple),
    st.one_of(st.just(0), st.just(0), st.integers(1, 3)),
)


@settings(max_examples=300, deadline=None)
@given(restore_candidates)
def test_restore_validation_agrees_with_the_seed_engine(snapshot: BudgetSnapshot) -> None:
    """Accepts exactly what the seed's restore accepts, refusing with the same error first."""
    doc = {**snapshot.to_dict(), "version": 2**63 + 5, "wal_high_watermark": None}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "snapshot.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        try:
            calybris.BudgetEngine().restore(path)
            expected: type[Exception] | None = None
        except Exception as exc:  # the binding's PersistenceError, a message to classify
            found = [cls for pattern, cls in SEED_RESTORE_ERRORS if re.search(pattern, str(exc))]
            assert found, str(exc)
            expected = found[0]
    event(f"seed engine: {expected.__name__ if expected else 'restored'}")
    if expected is None:
        validate_for_restore(snapshot)
    else:
        with pytest.raises(expected):
            validate_for_restore(snapshot)
