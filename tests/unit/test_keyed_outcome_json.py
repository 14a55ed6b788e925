"""The outcome JSON a keyed function records on Citus is derived from the outcome mappers.

No database here: tests/citus/test_keyed.py checks on a cluster that every final
status is stored exactly as ``outcome.to_dict()``.
"""

from __future__ import annotations

from typing import Any

import pytest

from ledger.citus import keyed
from ledger.outcomes import Outcome, ReserveOutcome, Status


def test_every_keyed_operation_derives_sql_for_each_final_status() -> None:
    for name, operation in keyed.KEYED.items():
        sql = keyed.outcome_sql(operation, "r", {"amount": "a_amount", "actual": "a_actual"})
        for status in operation.final:
            assert f"r.status = '{status}'" in sql, (name, status)
        assert sql.rstrip().endswith("ELSE NULL END")  # anything else falls back
        missing = keyed.missing_sql(operation, {"amount": "a_amount", "actual": "a_actual"})
        assert ("missing_tenant" in missing) == operation.missing_is_final, name


def test_the_sql_mirrors_to_dict_field_by_field() -> None:
    insufficient = keyed.outcome_sql(keyed.KEYED["try_reserve"], "r", {"amount": "a_amount"})
    # Row values may be NULL in SQL, so they go through jsonb_strip_nulls as to_dict
    # leaves None out; the status and reservation_id (to_dict keeps it as null) do not.
    assert (
        "WHEN r.status = 'insufficient' THEN jsonb_strip_nulls(jsonb_build_object("
        "'remaining_microcents', r.\"remaining\", 'required_microcents', a_amount)) || "
        "jsonb_build_object('status', 'insufficient', 'reservation_id', NULL)"
    ) in insufficient
    adjust = keyed.outcome_sql(keyed.KEYED["adjust"], "r", {"amount": "a_amount"})
    assert "'required_microcents', (-a_amount)" in adjust
    assert 'WHEN r."lapsed_holds" THEN NULL' in keyed.outcome_sql(
        keyed.KEYED["try_reserve"], "r", {"amount": "a_amount"}
    )


def test_a_mapper_that_branches_on_a_value_cannot_be_derived() -> None:
    """Distribute fails loudly rather than record a different outcome than Python maps."""

    def truthy(row: Any, params: Any) -> Outcome:
        return ReserveOutcome(Status.RESERVED if row.reservation_id else Status.INSUFFICIENT)

    def compares(row: Any, params: Any) -> Outcome:
        return ReserveOutcome(Status.RESERVED if row.remaining > 0 else Status.INSUFFICIENT)

    def equals(row: Any, params: Any) -> Outcome:
        return ReserveOutcome(Status.RESERVED if row.remaining == 0 else Status.INSUFFICIENT)

    for mapper in (truthy, compares, equals):
        operation = keyed.KeyedOperation("try_reserve", mapper, ("reserved",), True)
        with pytest.raises(TypeError):
            keyed.outcome_sql(operation, "r", {})
