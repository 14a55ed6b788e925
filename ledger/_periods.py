"""Recurring allowances: set, clear, renew, and spend per period (docs/periods.md).

The renewal arithmetic lives in one place, the PL/pgSQL function
``renew_tenant`` of revision 0006, because it must run exactly once per tenant
and period however many servers race for it: it locks the tenant row and
appends one ``renew`` entry per period that has begun. Three callers use it:

- lazily, every write (reserve, commit, release, expiry, top-up, cap, the
  batches) whose statement finds the tenant due answers 'renew' instead of
  applying; the operation renews and runs the statement again
  (:func:`ledger._operations.cas`);
- the sweeper, :func:`renew_periods`, for tenants nobody writes to;
- :func:`set_allowance` / :func:`clear_allowance`, which first settle any
  period already due on the old terms.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import _validate, errors
from ._operations import first_row, idempotent, ledger_wide
from ._queries import Queries
from ._requests import Fetch, Op, Steps
from .outcomes import AllowanceOutcome, Outcome, PeriodSpend, Renewals, SkippedTenant, Status

I64_MAX = _validate.I64_MAX
#: Longest period a schedule may have (100 years), so interval arithmetic stays far
#: inside PostgreSQL's ranges for any period index a tenant can reach.
MAX_MONTHS = 1200
MAX_DAYS = 36_600


def _unit(name: str, value: object, limit: int) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise errors.InputError(f"{name} must be an int from 0 to {limit}, got {value!r}")
    return value


def time_zone(value: object) -> str:
    """An IANA zone name Python knows (``set_allowance`` in SQL asks the server too)."""
    if not isinstance(value, str) or not value or len(value) > 100:
        raise errors.InputError(
            f"time_zone must be an IANA zone name such as 'Europe/Berlin', got {value!r}"
        )
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise errors.InputError(
            f"unknown time zone {value!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from exc
    return value


def _schedule(months: object, days: object) -> tuple[int, int]:
    m = _unit("months", months, MAX_MONTHS)
    d = _unit("days", days, MAX_DAYS)
    if (m > 0) == (d > 0):
        raise errors.InputError(
            "give exactly one period length: months=N (calendar months) or days=N, not both "
            f"and not neither (got months={m}, days={d})"
        )
    return m, d


def _anchor(value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise errors.InputError(
            f"anchor must be a timezone-aware datetime (a boundary of the schedule), got {value!r}"
        )
    return value


def set_allowance(
    q: Queries,
    tenant_id: str,
    allowance_microcents: int,
    months: int,
    days: int,
    anchor: datetime,
    zone: str,
    min_rollover_microcents: int,
    max_rollover_microcents: int,
    idempotency_key: str | None,
) -> Op[AllowanceOutcome]:
    tenant_id = _validate.tenant_id(tenant_id)
    allowance = _validate.amount("allowance_microcents", allowance_microcents)
    if allowance < 0:
        raise errors.AmountValueError(f"allowance_microcents must be >= 0, got {allowance}")
    m, d = _schedule(months, days)
    at = _anchor(anchor)
    zone = time_zone(zone)
    low = _validate.amount("min_rollover_microcents", min_rollover_microcents)
    high = _validate.amount("max_rollover_microcents", max_rollover_microcents)
    if not 0 <= low <= high:
        raise errors.AmountValueError(
            "rollover bounds need 0 <= min_rollover_microcents <= max_rollover_microcents, "
            f"got min={low}, max={high}; min = max = 0 resets remaining to the allowance"
        )
    if high > I64_MAX - allowance:
        raise errors.AmountValueError(
            f"max_rollover_microcents + allowance_microcents = {high + allowance} does not fit "
            f"in a signed 64-bit amount ({I64_MAX})"
        )
    key = _validate.idempotency_key(idempotency_key)
    params = {
        "tenant_id": tenant_id,
        "allowance": allowance,
        "months": m,
        "days": d,
        "anchor": at,
        "time_zone": zone,
        "min_rollover": low,
        "max_rollover": high,
        "ikey": key,
    }

    def steps() -> Steps[AllowanceOutcome]:
        row = yield from first_row(q.set_allowance, params)
        if row.status == "unknown_time_zone":
            raise errors.InputError(
                f"the database server does not know the time zone {zone!r}; "
                "update its time zone data or pick another IANA name"
            )
        return _allowance_outcome(row)

    request = {
        "op": "set_allowance",
        "allowance": allowance,
        "months": m,
        "days": d,
        "anchor": at.astimezone(UTC).isoformat(),  # the instant, whatever its offset
        "time_zone": zone,
        "min_rollover": low,
        "max_rollover": high,
    }
    return idempotent(q, tenant_id, key, request, AllowanceOutcome, steps)


def clear_allowance(
    q: Queries, tenant_id: str, idempotency_key: str | None
) -> Op[AllowanceOutcome]:
    tenant_id = _validate.tenant_id(tenant_id)
    key = _validate.idempotency_key(idempotency_key)
    params = {"tenant_id": tenant_id, "ikey": key}

    def steps() -> Steps[AllowanceOutcome]:
        return _allowance_outcome((yield from first_row(q.clear_allowance, params)))

    request = {"op": "clear_allowance"}
    return idempotent(q, tenant_id, key, request, AllowanceOutcome, steps)


def _allowance_outcome(row: Any) -> AllowanceOutcome:
    status = Status(row.status)
    if status is Status.MISSING_TENANT:
        return AllowanceOutcome(status)
    return AllowanceOutcome(
        status, period_index=row.period_index, remaining_microcents=row.remaining
    )


def renew_periods(q: Queries, limit: int) -> Op[Renewals]:
    """Renew up to ``limit`` due tenants, passing over (and naming) any it cannot renew."""
    count = _validate.positive_count("limit", limit)

    def steps() -> Steps[Renewals]:
        yield from ledger_wide(q, "renew_periods")
        rows = yield Fetch(q.renew_due, {"limit": count})
        skipped = tuple(SkippedTenant(r.tenant_id, r.error) for r in rows if r.error is not None)
        done = [int(r.periods) for r in rows if r.error is None and r.periods]
        return Renewals(len(done), sum(done), skipped)

    return Op(steps, "READ COMMITTED")


def period_spend(q: Queries, tenant_id: str, period_index: int | None) -> Op[PeriodSpend]:
    tenant_id = _validate.tenant_id(tenant_id)
    if period_index is not None and type(period_index) is not int:
        raise errors.InputError(f"period_index must be an int or None, got {period_index!r}")
    if period_index is not None and not -(2**31) < period_index < 2**31:
        raise errors.InputError(f"period_index {period_index} is out of range")
    params = {"tenant_id": tenant_id, "period": period_index}

    def steps() -> Steps[PeriodSpend]:
        row = yield from first_row(q.period_spend, params)
        if row is None:
            raise errors.TenantNotFound(Outcome(Status.MISSING_TENANT), tenant_id=tenant_id)
        if not row.has_allowance:
            raise errors.NoAllowance(tenant_id)
        if not row.representable:
            raise errors.InputError(
                f"period_index {row.period} of tenant {tenant_id!r} begins or ends outside "
                "the years 1 to 9999: ask for a period nearer the tenant's current one "
                f"({row.current})"
            )
        renewed = row.renewed_to is not None and row.period <= row.renewed_to
        credited = row.credited if row.credited is not None else row.allowance_now
        if renewed and row.credited is None:  # before the tenant had an allowance
            credited = 0
        return PeriodSpend(
            tenant_id=tenant_id,
            period_index=int(row.period),
            current_period_index=int(row.current),
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            allowance_microcents=int(credited),
            spent_microcents=int(row.spent),
            held_microcents=int(row.held),
            remaining_microcents=None if row.remaining is None else int(row.remaining),
            renewed=renewed,
        )

    return Op(steps, "REPEATABLE READ")
