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
lapsed holds (which the single operations expire lazily). Framework-owned
connections (Django) also go item by item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import _validate, errors
from ._db import Connectable, ForeignConnection, caller_connection, execute, execute_pipelined
from .outcomes import Outcome, ReserveOutcome, SettlementOutcome, Status

if TYPE_CHECKING:
    from .core import Ledger

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
    book: Ledger, items: Iterable[Any], all_or_nothing: bool, connection: Connectable | None
) -> list[ReserveOutcome]:
    batch = _items(items, ReserveItem, "items")
    prepared = []
    for i, it in enumerate(batch):
        tenant = _checked(i, _validate.tenant_id, it.tenant_id)
        cost = _checked(i, _validate.amount, "cost_microcents", it.cost_microcents)
        ttl_us, deadline = _checked(i, _validate.expiry, it.ttl, it.expires_at)
        key = _checked(i, _validate.idempotency_key, it.idempotency_key)
        prepared.append((it, tenant, cost, ttl_us, deadline, key))
    sql = book._sql

    def one_by_one(conn: Any) -> list[ReserveOutcome]:
        return [
            book.try_reserve(
                tenant,
                cost,
                ttl=it.ttl,
                expires_at=it.expires_at,
                idempotency_key=key,
                connection=conn,
            )
            for it, tenant, cost, _, _, key in prepared
        ]

    def pipelined(conn: Any) -> list[ReserveOutcome]:
        outcomes: list[ReserveOutcome | None] = [None] * len(prepared)
        params: list[Mapping[str, Any]] = []
        where: list[int] = []
        for i, (_, tenant, cost, ttl_us, deadline, _) in enumerate(prepared):
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
        if params:
            from .core import reserve_outcome

            for i, rows in zip(
                where, execute_pipelined(conn, sql.try_reserve, params), strict=True
            ):
                row = rows[0] if rows else None
                if row is not None and (row.status == "retry" or row.lapsed_holds):
                    raise _Fallback
                outcomes[i] = reserve_outcome(row, prepared[i][2])
        return [o for o in outcomes if o is not None]

    def lock(conn: Any) -> bool:
        tenants = sorted({p[1] for p in prepared})
        if not tenants:
            return False
        return bool(execute(conn, sql.batch_lock_tenants, {"ids": tenants})[0].lapsed)

    keyed = any(p[5] is not None for p in prepared)
    return _run(book, connection, lock, pipelined, one_by_one, keyed, all_or_nothing)


def commit_many(
    book: Ledger, items: Iterable[Any], all_or_nothing: bool, connection: Connectable | None
) -> list[SettlementOutcome]:
    prepared = _settlements(_items(items, CommitItem, "items"))

    def one_by_one(conn: Any) -> list[SettlementOutcome]:
        return [
            book.commit(rid, actual, tenant_id=hint, idempotency_key=key, connection=conn)
            for rid, actual, hint, key in prepared
        ]

    def pipelined(conn: Any) -> list[SettlementOutcome]:
        from .core import commit_outcome

        def params(p: tuple[int, int, str | None, str | None]) -> dict[str, Any] | None:
            rid, actual, _, _ = p
            if actual < 0 or rid > _I64_MAX:
                return None
            return {"reservation_id": rid, "actual": actual, "tenant_id": None, "ikey": None}

        def early(p: tuple[int, int, str | None, str | None]) -> SettlementOutcome:
            return SettlementOutcome(
                Status.INVALID_AMOUNT if p[1] < 0 else Status.MISSING_RESERVATION
            )

        return _settle(
            book,
            conn,
            prepared,
            params,
            early,
            book._sql.commit,
            lambda row, p: commit_outcome(row, p[1]),
        )

    keyed = any(p[3] is not None for p in prepared)
    lock = _hold_locker(book, [p[0] for p in prepared])
    return _run(book, connection, lock, pipelined, one_by_one, keyed, all_or_nothing)


def release_many(
    book: Ledger, items: Iterable[Any], all_or_nothing: bool, connection: Connectable | None
) -> list[SettlementOutcome]:
    prepared = _settlements(_items(items, ReleaseItem, "items"))

    def one_by_one(conn: Any) -> list[SettlementOutcome]:
        return [
            book.release(rid, tenant_id=hint, idempotency_key=key, connection=conn)
            for rid, _, hint, key in prepared
        ]

    def pipelined(conn: Any) -> list[SettlementOutcome]:
        from .core import release_outcome

        def params(p: tuple[int, int, str | None, str | None]) -> dict[str, Any] | None:
            if p[0] > _I64_MAX:
                return None
            return {"reservation_id": p[0], "tenant_id": None, "ikey": None}

        return _settle(
            book,
            conn,
            prepared,
            params,
            lambda p: SettlementOutcome(Status.MISSING_RESERVATION),
            book._sql.release,
            lambda row, p: release_outcome(row),
        )

    keyed = any(p[3] is not None for p in prepared)
    lock = _hold_locker(book, [p[0] for p in prepared])
    return _run(book, connection, lock, pipelined, one_by_one, keyed, all_or_nothing)


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


def _hold_locker(book: Ledger, rids: list[int]) -> Callable[[Any], bool]:
    ids = sorted({r for r in rids if r <= _I64_MAX})

    def lock(conn: Any) -> bool:
        if not ids:
            return False
        return bool(execute(conn, book._sql.batch_lock_holds, {"rids": ids})[0].lapsed)

    return lock


def _settle(
    book: Ledger,
    conn: Any,
    prepared: Sequence[tuple[int, int, str | None, str | None]],
    params: Callable[[Any], dict[str, Any] | None],
    early: Callable[[Any], SettlementOutcome],
    statement: Any,
    outcome: Callable[[Any, Any], SettlementOutcome],
) -> list[SettlementOutcome]:
    results: list[SettlementOutcome | None] = [None] * len(prepared)
    batch_params: list[Mapping[str, Any]] = []
    where: list[int] = []
    for i, p in enumerate(prepared):
        q = params(p)
        if q is None:
            results[i] = early(p)
        else:
            batch_params.append(q)
            where.append(i)
    missing: list[int] = []
    if batch_params:
        for i, rows in zip(where, execute_pipelined(conn, statement, batch_params), strict=True):
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
            for r in execute(conn, book._sql.expired_holds, {"rids": rids})
        }
        for i in missing:
            rid = prepared[i][0]
            results[i] = (
                SettlementOutcome(Status.EXPIRED, returned_microcents=expired[rid])
                if rid in expired
                else SettlementOutcome(Status.MISSING_RESERVATION)
            )
    return [r for r in results if r is not None]


def _run(
    book: Ledger,
    connection: Connectable | None,
    lock: Callable[[Any], bool],
    pipelined: Callable[[Any], list[OutcomeT]],
    one_by_one: Callable[[Any], list[OutcomeT]],
    keyed: bool,
    all_or_nothing: bool,
) -> list[OutcomeT]:
    def work(conn: Any) -> list[OutcomeT]:
        lapsed = lock(conn)
        if keyed or lapsed or isinstance(conn, ForeignConnection):
            outcomes = one_by_one(conn)
        else:
            savepoint = conn.begin_nested()
            try:
                outcomes = pipelined(conn)
                savepoint.commit()
            except _Fallback:
                savepoint.rollback()
                outcomes = one_by_one(conn)
        if all_or_nothing and not all(o.ok for o in outcomes):
            raise errors.BatchRefused(list(outcomes))
        return outcomes

    if all_or_nothing and connection is not None and not isinstance(connection, ForeignConnection):
        # In the caller's transaction: on refusal undo our part only, via a savepoint.
        conn = caller_connection(connection)
        assert not isinstance(conn, ForeignConnection)
        with conn.begin_nested():
            return book._db.run(conn, work)
    return book._db.run(connection, work, "READ COMMITTED")
