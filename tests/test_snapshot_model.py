"""Snapshot values: JSON round trips and refusal of malformed documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ledger import BudgetSnapshot, TenantLedger, conservation_status_for_snapshot, errors
from ledger.outcomes import Balance
from ledger.snapshot import validate_for_restore

from .helpers import I64_MAX, I64_MIN

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
