"""Corrections: refunds of a commit and signed adjustments of a budget.

Both are ordinary ledger operations: validated before anything is sent,
one round trip, journaled (with the caller's reason), idempotent under a key,
and conservation-preserving. docs/corrections.md explains the rules;
ledger/sql/corrections.sql and the ``refund_commit`` function of migration
0006 are the SQL.
"""

from __future__ import annotations

from . import _validate, errors
from ._operations import cas, first_row, idempotent
from ._queries import Queries
from ._requests import Op, Steps
from .outcomes import AdjustOutcome, RefundOutcome, Status, adjust_outcome, refund_outcome

#: A reason is free text for people, stored in every journal entry it explains.
REASON_MAX_BYTES = 1000


def reason(value: object) -> str:
    """A correction's reason: a non-blank str of at most 1000 UTF-8 bytes without NUL.

    Required because a correction without one cannot be audited later; the
    limit keeps journal rows small (write a ticket id, not a report).
    """
    if not isinstance(value, str):
        raise errors.InputError(
            f"reason must be a str explaining the correction, got {type(value).__name__}"
        )
    if not value.strip():
        raise errors.InputError(
            "reason must not be empty: say why (for example a ticket id), it is journaled"
        )
    if "\x00" in value:
        raise errors.InputError("reason must not contain a NUL character (PostgreSQL text cannot)")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise errors.InputError(
            f"reason is not valid UTF-8 (lone surrogate at {exc.start})"
        ) from exc
    if size > REASON_MAX_BYTES:
        raise errors.InputError(
            f"reason is {size} UTF-8 bytes; the limit is {REASON_MAX_BYTES} "
            "(store a reference, such as a ticket id, rather than the whole story)"
        )
    return value


def refund(
    q: Queries,
    tenant_id: str,
    reservation_id: int,
    amount_microcents: int,
    reason_text: str,
    idempotency_key: str | None,
) -> Op[RefundOutcome]:
    """Give back ``amount`` of the tenant's commit of hold ``reservation_id``.

    committed -= amount and remaining += amount (initial is unchanged), never
    more in total than the commit's amount: the ``refund_commit`` function
    decides that under the tenant row's lock, so concurrent refunds queue. A
    commit that settled through a tree is refunded at every level it settled
    at, under all their locks (``nested_refund``, revision 0012; docs/nested.md).
    """
    tenant_id = _validate.tenant_id(tenant_id)
    rid = _validate.reservation_id(reservation_id)
    amount = _validate.amount("amount_microcents", amount_microcents)
    if amount <= 0:
        raise errors.AmountValueError(
            f"amount_microcents must be > 0 for a refund, got {amount}; "
            "to take budget away use adjust() with a negative amount"
        )
    why = reason(reason_text)
    key = _validate.idempotency_key(idempotency_key)
    params = {
        "tenant_id": tenant_id,
        "reservation_id": rid,
        "amount": amount,
        "reason": why,
        "ikey": key,
    }

    def steps() -> Steps[RefundOutcome]:
        if rid > _validate.I64_MAX:  # no hold id that large was ever drawn
            return RefundOutcome(Status.UNKNOWN_COMMIT, reservation_id=rid)
        statement = q.nested_refund if q.trees() else q.refund
        row = yield from first_row(statement, params)
        return refund_outcome(row, rid, amount)

    request = {"op": "refund", "reservation_id": rid, "amount": amount, "reason": why}
    return idempotent(q, tenant_id, key, request, RefundOutcome, steps)


def adjust(
    q: Queries,
    tenant_id: str,
    amount_microcents: int,
    reason_text: str,
    idempotency_key: str | None,
) -> Op[AdjustOutcome]:
    """Change the tenant's budget by a signed amount: initial and remaining move together.

    A negative amount is refused ('insufficient') when remaining would fall
    below zero; reserved and committed are never touched.
    """
    tenant_id = _validate.tenant_id(tenant_id)
    amount = _validate.amount("amount_microcents", amount_microcents)
    if amount == 0:
        raise errors.AmountValueError(
            "amount_microcents must not be 0 for an adjustment: a no-op correction "
            "would only add noise to the journal"
        )
    why = reason(reason_text)
    key = _validate.idempotency_key(idempotency_key)
    params = {"tenant_id": tenant_id, "amount": amount, "reason": why, "ikey": key}

    def steps() -> Steps[AdjustOutcome]:
        row = yield from cas(q.adjust, params, q.renew_tenant)
        return adjust_outcome(row, amount)

    request = {"op": "adjust", "amount": amount, "reason": why}
    return idempotent(q, tenant_id, key, request, AdjustOutcome, steps, ("adjust", params))
