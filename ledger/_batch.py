"""Batches: many items, one transaction, a constant number of round trips.

A batch locks every hold and tenant it will touch, in one fixed order, then
sends the very statements the single operations use, one per item, through
libpq's pipeline mode: all executions go out before a single Sync, so a batch
of a thousand items costs the same few round trips as a batch of one. Items
are applied in order inside the lock, so the result is exactly what applying
them one by one would give, including a large item that does not fit followed
by a small one that does.

Two cases take the item-by-item path instead (same transaction, same
results, more round trips): items with idempotency keys, and tenants with
lapsed holds (which the single operations expire lazily). That path runs the
single operations' own steps, so there is one implementation of each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from . import _operations as ops
from . import _validate, errors
from ._executor import Fetch, FetchEach, Nested, Op, Steps
from ._queries import Queries
from .outcomes import (
    Outcome,
    ReserveOutcome,
    SettlementOutcome,
    Status,
    commit_outcome,
    release_outcome,
    reserve_outcome,
)

MAX_ITEMS = 10_000
_I64_MAX = _validate.I64_MAX

OutcomeT = TypeVar("OutcomeT", bound=Outcome)


@dataclass(frozen=True, slots=True)
class ReserveItem:
    tenant_id: str
    cost_microcents: int
    ttl: timedelta | int | None = None
    expires_at: datetime | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class CommitItem:
    reservation_id: int
    actual_microcents: int
    tenant_id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class ReleaseItem:
    reservation_id: int
    tenant_id: str | None = None
    idempotency_key: str | None = None


class _Fallback(Exception):
    """The pipelined attempt met a case only the item-by-item path handles."""


def _items(items: Iterable[Any], kind: type, label: str) -> list[Any]:
    out = []
    for index, item in enumerate(items):
        if isinstance(item, kind):
            out.append(item)
        elif isinstance(item, tuple):
            try:
                out.append(kind(*item))
            except TypeError as exc:
                raise errors.InputError(f"{label}[{index}]: {exc}") from exc
        elif kind is ReleaseItem and type(item) is int:
            out.append(ReleaseItem(item))
        else:
            raise errors.InputError(
                f"{label}[{index}] must be a {kind.__name__} or a tuple, got {type(item).__name__}"
            )
        if len(out) > MAX_ITEMS:
            raise errors.InputError(f"a batch holds at most {MAX_ITEMS} items; split it")
    return out


def _checked(index: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a validator, naming the offending item in its message."""
    try:
        return fn(*args)
    except (errors.AmountTypeError, errors.InputError) as exc:
        raise type(exc)(f"items[{index}]: {exc}") from exc


def try_reserve_many(
    q: Queries, items: Iterable[Any], all_or_nothing: bool
) -> Op[list[ReserveOutcome]]:
    batch = _items(items, ReserveItem, "items")
    prepared = []
    for i, it in enumerate(batch):
        tenant = _checked(i, _validate.tenant_id, it.tenant_id)
        cost = _checked(i, _validate.amount, "cost_microcents", it.cost_microcents)
        ttl_us, deadline = _checked(i, _validate.expiry, it.ttl, it.expires_at)
        key = _checked(i, _validate.idempotency_key, it.idempotency_key)
        prepared.append((tenant, cost, ttl_us, deadline, key))

    def singles() -> Iterator[Op[ReserveOutcome]]:
        for it, (tenant, cost, _, _, key) in zip(batch, prepared, strict=True):
            yield ops.try_reserve(q, tenant, cost, it.ttl, it.expires_at, key)

    def pipelined() -> Steps[list[ReserveOutcome]]:
        outcomes: list[ReserveOutcome | None] = [None] * len(prepared)
        params: list[dict[str, Any]] = []
        where: list[int] = []
        for i, (tenant, cost, ttl_us, deadline, _) in enumerate(prepared):
            if cost <= 0:
                outcomes[i] = ReserveOutcome(
                    Status.INSUFFICIENT, remaining_microcents=0, required_microcents=cost
                )
                continue
            params.append(
                {
                    "tenant_id": tenant,
                    "amount": cost,
                    "ttl_us": ttl_us,
                    "expires_at": deadline,
                    "ikey": None,
                }
            )
            where.append(i)
        results = yield FetchEach(q.try_reserve, params)
        for i, rows in zip(where, results, strict=True):
            row = rows[0] if rows else None
            if row is not None and (row.status == "retry" or row.lapsed_holds):
                raise _Fallback
            outcomes[i] = reserve_outcome(row, prepared[i][1])
        return [o for o in outcomes if o is not None]

    def lock() -> Steps[bool]:
        tenants = sorted({p[0] for p in prepared})
        if not tenants:
            return False
        rows = yield Fetch(q.batch_lock_tenants, {"ids": tenants})
        return bool(rows[0].lapsed)

    keyed = any(p[4] is not None for p in prepared)
    return _batch(lock, pipelined, _one_by_one(singles), keyed, all_or_nothing)


def commit_many(
    q: Queries, items: Iterable[Any], all_or_nothing: bool
) -> Op[list[SettlementOutcome]]:
    prepared = _settlements(_items(items, CommitItem, "items"))

    def singles() -> Iterator[Op[SettlementOutcome]]:
        for rid, actual, hint, key in prepared:
            yield ops.commit(q, rid, actual, hint, key)

    def params(p: Settlement) -> dict[str, Any] | None:
        rid, actual, _, _ = p
        if actual < 0 or rid > _I64_MAX:
            return None
        return {"reservation_id": rid, "actual": actual, "tenant_id": None, "ikey": None}

    def early(p: Settlement) -> SettlementOutcome:
        return SettlementOutcome(Status.INVALID_AMOUNT if p[1] < 0 else Status.MISSING_RESERVATION)

    def pipelined() -> Steps[list[SettlementOutcome]]:
        return (
            yield from _settle(
                q, prepared, params, early, q.commit, lambda row, p: commit_outcome(row, p[1])
            )
        )

    keyed = any(p[3] is not None for p in prepared)
    lock = _hold_locker(q, [p[0] for p in prepared])
    return _batch(lock, pipelined, _one_by_one(singles), keyed, all_or_nothing)


def release_many(
    q: Queries, items: Iterable[Any], all_or_nothing: bool
) -> Op[list[SettlementOutcome]]:
    prepared = _settlements(_items(items, ReleaseItem, "items"))

    def singles() -> Iterator[Op[SettlementOutcome]]:
        for rid, _, hint, key in prepared:
            yield ops.release(q, rid, hint, key)

    def params(p: Settlement) -> dict[str, Any] | None:
        if p[0] > _I64_MAX:
            return None
        return {"reservation_id": p[0], "tenant_id": None, "ikey": None}

    def pipelined() -> Steps[list[SettlementOutcome]]:
        return (
            yield from _settle(
                q,
                prepared,
                params,
                lambda p: SettlementOutcome(Status.MISSING_RESERVATION),
                q.release,
                lambda row, p: release_outcome(row),
            )
        )

    keyed = any(p[3] is not None for p in prepared)
    lock = _hold_locker(q, [p[0] for p in prepared])
    return _batch(lock, pipelined, _one_by_one(singles), keyed, all_or_nothing)


Settlement = tuple[int, int, str | None, str | None]  # (rid, actual or 0, tenant, key)


def _settlements(batch: list[Any]) -> list[Settlement]:
    """Validate commit or release items the way the single operations do."""
    prepared: list[Settlement] = []
    for i, it in enumerate(batch):
        rid = _checked(i, _validate.reservation_id, it.reservation_id)
        actual = 0
        if isinstance(it, CommitItem):
            actual = _checked(i, _validate.amount, "actual_microcents", it.actual_microcents)
        hint = None if it.tenant_id is None else _checked(i, _validate.tenant_id, it.tenant_id)
        key = _checked(i, _validate.idempotency_key, it.idempotency_key)
        if key is not None and hint is None:
            raise errors.InputError(f"item {i}: an idempotency key needs tenant_id")
        prepared.append((rid, actual, hint, key))
    return prepared


def _hold_locker(q: Queries, rids: list[int]) -> Callable[[], Steps[bool]]:
    ids = sorted({r for r in rids if r <= _I64_MAX})

    def lock() -> Steps[bool]:
        if not ids:
            return False
        rows = yield Fetch(q.batch_lock_holds, {"rids": ids})
        return bool(rows[0].lapsed)

    return lock


def _settle(
    q: Queries,
    prepared: Sequence[Settlement],
    params: Callable[[Settlement], dict[str, Any] | None],
    early: Callable[[Settlement], SettlementOutcome],
    statement: str,
    outcome: Callable[[Any, Settlement], SettlementOutcome],
) -> Steps[list[SettlementOutcome]]:
    results: list[SettlementOutcome | None] = [None] * len(prepared)
    batch_params: list[dict[str, Any]] = []
    where: list[int] = []
    for i, p in enumerate(prepared):
        bound = params(p)
        if bound is None:
            results[i] = early(p)
        else:
            batch_params.append(bound)
            where.append(i)
    missing: list[int] = []
    for i, rows in zip(where, (yield FetchEach(statement, batch_params)), strict=True):
        if not rows:
            missing.append(i)
            continue
        row = rows[0]
        if row.status in ("retry", "lapsed"):
            raise _Fallback
        results[i] = outcome(row, prepared[i])
    if missing:
        rids = sorted({prepared[i][0] for i in missing})
        expired = {
            r.reservation_id: r.returned
            for r in (yield Fetch(q.expired_holds, {"rids": rids}))
        }
        for i in missing:
            rid = prepared[i][0]
            results[i] = (
                SettlementOutcome(Status.EXPIRED, returned_microcents=expired[rid])
                if rid in expired
                else SettlementOutcome(Status.MISSING_RESERVATION)
            )
    return [r for r in results if r is not None]


def _one_by_one(
    singles: Callable[[], Iterator[Op[OutcomeT]]],
) -> Callable[[], Steps[list[OutcomeT]]]:
    """Apply the items with the single operations' own steps, in order."""

    def steps() -> Steps[list[OutcomeT]]:
        outcomes = []
        for single in singles():
            outcomes.append((yield from single.steps()))
        return outcomes

    return steps


def _batch(
    lock: Callable[[], Steps[bool]],
    pipelined: Callable[[], Steps[list[OutcomeT]]],
    one_by_one: Callable[[], Steps[list[OutcomeT]]],
    keyed: bool,
    all_or_nothing: bool,
) -> Op[list[OutcomeT]]:
    def work() -> Steps[list[OutcomeT]]:
        lapsed = yield from lock()
        if keyed or lapsed:
            outcomes = yield from one_by_one()
        else:
            try:
                outcomes = yield Nested(pipelined)
            except _Fallback:  # the savepoint undid the pipelined attempt
                outcomes = yield from one_by_one()
        if all_or_nothing and not all(o.ok for o in outcomes):
            raise errors.BatchRefused(list(outcomes))
        return outcomes

    def undone_on_refusal() -> Steps[list[OutcomeT]]:
        # In the caller's transaction, a refusal undoes the batch's part only.
        outcomes: list[OutcomeT] = yield Nested(work, when_owned=False)
        return outcomes

    return Op(undone_on_refusal if all_or_nothing else work, "READ COMMITTED")
