"""Batches: many items, one transaction, a constant handful of set-based statements.

(Over 600 lines on purpose: the three batch kinds share one plan, lock,
decide in order, apply once, and the decisions mirror spend.sql's probes
rule by rule; split apart, a reviewer could no longer check them side by
side.)

A batch locks every hold and tenant it touches, in one fixed order, and reads
their balances and chain heads (``batch_*_begin`` in ledger/sql/batches.sql).
Nobody else can change them until the batch commits, so the items are then
decided here, in order, by the rules the single statements' probes apply
(spend.sql), on an in-memory copy of the locked rows: exactly sequential
application, including a large item that does not fit followed by a small one
that does. The journal chain is extended entry by entry with
:func:`ledger.journal.entry_hash` in entry format 2, byte for byte the SQL
``journal_hash``.
One ``batch_apply`` statement then writes the final balances, the holds and
every journal entry with ``unnest``: the server does a few set-based writes
for a batch of a thousand, not a thousand operations. The database still
checks every CHECK constraint, and a guard in ``batch_apply`` rolls the batch
back if what it wrote differs from what was decided.

Two cases take the item-by-item path instead, inside the same lock (same
results, more round trips): items with idempotency keys, and lapsed holds
(which the single operations expire lazily). That path runs the single
operations' own steps.

On a schema distributed on Citus every batch takes the item-by-item path, in
one transaction: Citus refuses the up-front locking reads across shards
(``FOR UPDATE`` needs a tenant filter), while each single operation is a call
routed to its tenant's worker. The batch first locks its holds (by id) and
then its tenants (by id), one routed statement each, the order used on one
server, so concurrent batches cannot deadlock. The results are sequential
application by construction; the transaction commits with two-phase commit
when its tenants live on more than one worker (docs/scale-out.md). The
statements object decides which (``q.reserve_batch``, ``q.settle_batch``:
the steps here on one server, :mod:`ledger.citus.steps` on Citus).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import MISSING, dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from . import _operations as ops
from . import _validate, errors
from ._queries import Queries, Settlement
from ._requests import Fetch, Nested, Op, Steps
from .journal import ENTRY_FORMAT, entry_hash_us, microseconds
from .outcomes import (
    Outcome,
    ReserveOutcome,
    SettlementOutcome,
    Status,
    commit_outcome,
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


def _items(items: Iterable[Any], kind: type, label: str) -> list[tuple[Any, ...]]:
    """Each item's fields as a tuple, in the item class's order, defaults filled in.

    Tuples are not turned into item objects first: building a frozen dataclass
    per item was a measurable part of a batch's client time (bench.batch_profile).
    """
    names = kind.__dataclass_fields__  # type: ignore[attr-defined]
    width = len(names)
    defaults = tuple(f.default for f in names.values())
    required = sum(1 for d in defaults if d is MISSING)
    out: list[tuple[Any, ...]] = []
    for index, item in enumerate(items):
        if type(item) is tuple and required <= len(item) <= width:
            out.append(item + defaults[len(item) :])
        elif isinstance(item, kind):
            out.append(tuple(getattr(item, name) for name in names))
        elif isinstance(item, tuple):
            try:
                made = kind(*item)  # raises the TypeError that names the problem
            except TypeError as exc:
                raise errors.InputError(f"{label}[{index}]: {exc}") from exc
            out.append(tuple(getattr(made, name) for name in names))
        elif kind is ReleaseItem and type(item) is int:
            out.append((item, None, None))
        else:
            raise errors.InputError(
                f"{label}[{index}] must be a {kind.__name__} or a tuple, got {type(item).__name__}"
            )
        if len(out) > MAX_ITEMS:
            raise errors.InputError(f"a batch holds at most {MAX_ITEMS} items; split it")
    return out


def _named(index: int, exc: errors.AmountTypeError | errors.InputError) -> Exception:
    """A validator's error, naming the offending item in its message."""
    return type(exc)(f"items[{index}]: {exc}")


def try_reserve_many(
    q: Queries, items: Iterable[Any], all_or_nothing: bool
) -> Op[list[ReserveOutcome]]:
    batch = _items(items, ReserveItem, "items")
    prepared = []
    for i, (tenant, cost, ttl, expires_at, key) in enumerate(batch):
        try:
            _validate.tenant_id(tenant)
            _validate.amount("cost_microcents", cost)
            ttl_us, deadline = (
                (None, None)
                if ttl is None and expires_at is None
                else _validate.expiry(ttl, expires_at)
            )
            _validate.idempotency_key(key)
        except (errors.AmountTypeError, errors.InputError) as exc:
            raise _named(i, exc) from exc
        prepared.append((tenant, cost, ttl_us, deadline, key))
    keyed = any(p[4] is not None for p in prepared)

    def singles() -> Iterator[Op[ReserveOutcome]]:
        for tenant, cost, ttl, expires_at, key in batch:
            yield ops.try_reserve(q, tenant, cost, ttl, expires_at, key)

    tenants = sorted({p[0] for p in prepared})

    def one_server() -> Steps[list[ReserveOutcome]]:
        rows = (yield Fetch(q.batch_reserve_begin, {"ids": tenants})) if tenants else []
        if _renew_due(rows):
            yield Fetch(q.renew_tenants, {"ids": _renew_due(rows)})
            rows = yield Fetch(q.batch_reserve_begin, {"ids": tenants})
        # Nested tenants reserve at their ancestors too: item by item (issue 24).
        if keyed or (rows and rows[0].lapsed) or any(getattr(r, "nested", False) for r in rows):
            return (yield from one_by_one(singles)())
        plan = _Plan(rows[0].at if rows else None, rows)
        decided = [
            _decide_reserve(plan, tenant, cost, ttl_us, deadline)
            for tenant, cost, ttl_us, deadline, _ in prepared
        ]
        refused = any(isinstance(d, ReserveOutcome) and not d.ok for d in decided)
        if plan.opened and not (all_or_nothing and refused):
            ids = (yield Fetch(q.batch_draw_ids, {"count": len(plan.opened)}))[0].ids
            plan.seal(ids)
        outcomes = [
            d
            if isinstance(d, ReserveOutcome)
            else ReserveOutcome(
                Status.RESERVED,
                reservation_id=plan.opened[d.hold][1],
                remaining_microcents=d.remaining,
            )
            for d in decided
        ]
        return (yield from _finish(q, plan, outcomes, all_or_nothing))

    return _op(lambda: q.reserve_batch(tenants, singles, one_server), all_or_nothing)


def commit_many(
    q: Queries, items: Iterable[Any], all_or_nothing: bool
) -> Op[list[SettlementOutcome]]:
    prepared = _settlements(_items(items, CommitItem, "items"), commits=True)

    def single(p: Settlement) -> Op[SettlementOutcome]:
        return ops.commit(q, p[0], p[1], p[2], p[3])

    def decide(plan: _Plan, p: Settlement) -> SettlementOutcome | None:
        rid, actual, hint, _ = p
        if actual < 0:
            return SettlementOutcome(Status.INVALID_AMOUNT)
        if rid > _I64_MAX:
            return SettlementOutcome(Status.MISSING_RESERVATION)
        return _decide_commit(plan, rid, actual, hint)

    return _settle_op(q, prepared, decide, single, all_or_nothing)


def release_many(
    q: Queries, items: Iterable[Any], all_or_nothing: bool
) -> Op[list[SettlementOutcome]]:
    prepared = _settlements(_items(items, ReleaseItem, "items"), commits=False)

    def single(p: Settlement) -> Op[SettlementOutcome]:
        return ops.release(q, p[0], p[2], p[3])

    def decide(plan: _Plan, p: Settlement) -> SettlementOutcome | None:
        if p[0] > _I64_MAX:
            return SettlementOutcome(Status.MISSING_RESERVATION)
        return _decide_release(plan, p[0], p[2])

    return _settle_op(q, prepared, decide, single, all_or_nothing)


def _renew_due(rows: list[Any]) -> list[str]:
    """The locked tenants whose budget period has ended (docs/periods.md), by id."""
    return sorted({r.tenant_id for r in rows if r.tenant_id is not None and r.due})


def _settlements(batch: list[tuple[Any, ...]], commits: bool) -> list[Settlement]:
    """Validate commit or release items the way the single operations do.

    ``batch`` holds (reservation_id, actual, tenant_id, key) for commits and
    (reservation_id, tenant_id, key) for releases (the item classes' fields).
    """
    prepared: list[Settlement] = []
    for i, item in enumerate(batch):
        if commits:
            rid, actual, hint, key = item
        else:
            (rid, hint, key), actual = item, 0
        try:
            _validate.reservation_id(rid)
            if commits:
                _validate.amount("actual_microcents", actual)
            if hint is not None:
                _validate.tenant_id(hint)
            _validate.idempotency_key(key)
        except (errors.AmountTypeError, errors.InputError) as exc:
            raise _named(i, exc) from exc
        if key is not None and hint is None:
            raise errors.InputError(f"item {i}: an idempotency key needs tenant_id")
        prepared.append((rid, actual, hint, key))
    return prepared


def _settle_op(
    q: Queries,
    prepared: list[Settlement],
    decide: Callable[[_Plan, Settlement], SettlementOutcome | None],
    single: Callable[[Settlement], Op[SettlementOutcome]],
    all_or_nothing: bool,
) -> Op[list[SettlementOutcome]]:
    """Commit or release batches: lock holds then tenants, decide in order, apply once."""
    keyed = any(p[3] is not None for p in prepared)
    rids = sorted({p[0] for p in prepared if p[0] <= _I64_MAX})
    begin = {"rids": int8_array(rids)}

    def singles() -> Iterator[Op[SettlementOutcome]]:
        return (single(p) for p in prepared)

    def one_server() -> Steps[list[SettlementOutcome]]:
        rows = (yield Fetch(q.batch_settle_begin, begin)) if rids else []
        if _renew_due(rows):
            yield Fetch(q.renew_tenants, {"ids": _renew_due(rows)})
            rows = yield Fetch(q.batch_settle_begin, begin)
        if keyed or any(r.lapsed or getattr(r, "nested", False) for r in rows):
            return (yield from one_by_one(singles)())
        plan = _Plan(rows[0].at if rows else None, rows)
        plan.holds = {
            r.reservation_id: (r.tenant_id, r.amount_microcents, r.hold_period) for r in rows
        }
        decided = [decide(plan, p) for p in prepared]
        # A hold that was not there: expired (the journal says so) or never was.
        gone = sorted({p[0] for p, o in zip(prepared, decided, strict=True) if o is None})
        expired: dict[int, int] = {}
        if gone:
            found = yield Fetch(q.expired_holds, {"rids": int8_array(gone)})
            expired = {r.reservation_id: r.returned for r in found}
        outcomes = [
            o
            if o is not None
            else SettlementOutcome(Status.EXPIRED, returned_microcents=expired[p[0]])
            if p[0] in expired
            else SettlementOutcome(Status.MISSING_RESERVATION)
            for p, o in zip(prepared, decided, strict=True)
        ]
        return (yield from _finish(q, plan, outcomes, all_or_nothing))

    return _op(lambda: q.settle_batch(prepared, single, one_server), all_or_nothing)


# ------------------------------------------------------------- the decisions
# Each mirrors the probe of the single statement in ledger/sql/spend.sql, in
# the same order, on the batch's locked copy of the tenant rows.

_Row = namedtuple("_Row", "status remaining reserved cap reservation_id returned tenant_id")


def _row(status: str, t: _Tenant, reservation_id: int | None = None) -> Any:
    return _Row(status, t.remaining, t.reserved, t.cap, reservation_id, None, t.tenant_id)


@dataclass(frozen=True, slots=True)
class _Granted:
    """A granted reserve: its hold is ``plan.opened[hold]``, whose id is drawn later."""

    hold: int
    remaining: int


def _decide_reserve(
    plan: _Plan, tenant_id: str, cost: int, ttl_us: int | None, deadline: datetime | None
) -> ReserveOutcome | _Granted:
    if cost <= 0:
        return ReserveOutcome(Status.INSUFFICIENT, remaining_microcents=0, required_microcents=cost)
    t = plan.tenants.get(tenant_id)
    if t is None:
        return reserve_outcome(None, cost)
    refusal = (
        "overflow"
        if t.reserved > _I64_MAX - cost
        else "exposure_limit_exceeded"
        if t.cap > 0 and t.reserved > t.cap - cost
        else "insufficient"
        if t.remaining < cost
        else None
    )
    if refusal is not None:
        plan.refused(t, "reserve", refusal, cost)
        return reserve_outcome(_row(refusal, t), cost)
    t.remaining -= cost
    t.reserved += cost
    plan.open(t, cost, ttl_us, deadline)
    plan.entry(t, "reserve", None, cost, None, t.period)  # its id comes with seal()
    return _Granted(len(plan.opened) - 1, t.remaining)


def _held(plan: _Plan, rid: int, hint: str | None) -> tuple[str, int, int | None] | None:
    """Hold ``rid`` as the batch locked it, or None if it is not there *under* ``hint``.

    An item's ``tenant_id`` is a check, as in the single ``commit``/``release``
    (``commit_for_tenant`` looks the hold up by tenant and id): another
    tenant's hold is reported as gone, never settled.
    """
    held = plan.holds.get(rid)
    if held is None or (hint is not None and held[0] != hint):
        return None
    return held


def _decide_commit(
    plan: _Plan, rid: int, actual: int, hint: str | None
) -> SettlementOutcome | None:
    """The commit of a live hold; None when the hold is not (or no longer) there."""
    held = _held(plan, rid, hint)
    if held is None:
        return None
    t = plan.tenants[held[0]]
    amount, period = held[1], held[2]
    if t.committed > _I64_MAX - actual:
        plan.refused(t, "commit", "overflow", actual)
        return commit_outcome(_row("overflow", t), actual)
    if actual > amount and t.remaining < actual - amount:
        plan.refused(t, "commit", "overrun", actual)
        return commit_outcome(_row("overrun", t), actual)
    forfeit = _forfeited(period, t, amount - actual)
    t.initial -= forfeit
    t.remaining -= actual - amount + forfeit
    t.reserved -= amount
    t.committed += actual
    plan.close(t, rid)
    plan.entry(t, "commit", rid, actual, amount, period)
    # commit_outcome of a "committed" row, built directly (thousands per batch)
    return SettlementOutcome(
        Status.COMMITTED, remaining_microcents=t.remaining, actual_microcents=actual
    )


def _decide_release(plan: _Plan, rid: int, hint: str | None) -> SettlementOutcome | None:
    held = _held(plan, rid, hint)
    if held is None:
        return None
    t = plan.tenants[held[0]]
    amount, period = held[1], held[2]
    forfeit = _forfeited(period, t, amount)
    t.initial -= forfeit
    t.remaining += amount - forfeit
    t.reserved -= amount
    plan.close(t, rid)
    plan.entry(t, "release", rid, amount, None, period)
    return SettlementOutcome(
        Status.RELEASED, remaining_microcents=t.remaining, returned_microcents=amount
    )


def _forfeited(hold_period: int | None, t: _Tenant, unspent: int) -> int:
    """What settling a hold from a closed period gives up (SQL ``forfeited``)."""
    if hold_period is not None and hold_period != t.period:
        return max(unspent, 0)
    return 0


# ------------------------------------------------------------------ the plan


@dataclass(slots=True)
class _Tenant:
    """The batch's working copy of one locked tenant row."""

    tenant_id: str
    initial: int
    remaining: int
    reserved: int
    committed: int
    cap: int
    seq: int
    head: bytes
    locked_seq: int
    period: int | None


@dataclass
class _Plan:
    """Everything a decided batch will write, built item by item."""

    at: datetime | None
    rows: list[Any]
    tenants: dict[str, _Tenant] = field(init=False)
    holds: dict[int, tuple[str, int, int | None]] = field(default_factory=dict)
    opened: list[list[Any]] = field(default_factory=list)
    closed: list[tuple[str, int]] = field(default_factory=list)
    entries: list[list[Any]] = field(default_factory=list)
    refusals: list[tuple[str, str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tenants = {
            r.tenant_id: _Tenant(
                r.tenant_id,
                r.initial_microcents,
                r.remaining_microcents,
                r.reserved_microcents,
                r.committed_microcents,
                r.max_reserved_microcents,
                r.journal_seq,
                bytes(r.journal_head),
                r.journal_seq,
                r.period_index,
            )
            for r in self.rows
            if r.tenant_id is not None
        }

    def open(self, t: _Tenant, amount: int, ttl_us: int | None, deadline: datetime | None) -> None:
        """A new hold; its reservation id is drawn once the batch is decided (seal)."""
        self.opened.append([t.tenant_id, None, amount, ttl_us, deadline, t.period])

    def close(self, t: _Tenant, rid: int) -> None:
        del self.holds[rid]
        self.closed.append((t.tenant_id, rid))

    def refused(self, t: _Tenant, op: str, status: str, amount: int) -> None:
        """Log a refusal (the refusals table, as the single statements do)."""
        self.refusals.append((t.tenant_id, op, status, amount))

    def entry(
        self,
        t: _Tenant,
        op: str,
        rid: int | None,
        amount: int | None,
        hold: int | None,
        period: int | None,
    ) -> None:
        """Record one journal entry for ``t``, after its balances changed."""
        t.seq += 1
        self.entries.append(
            [
                t.tenant_id,
                t.seq,
                op,
                rid,
                amount,
                hold,
                t.initial,
                t.remaining,
                t.reserved,
                t.committed,
                t.cap,
                None,
                period,
            ]
        )

    def seal(self, reservation_ids: list[int]) -> None:
        """Give new holds their ids, in item order, and hash every entry into its chain."""
        assert self.at is not None and len(reservation_ids) == len(self.opened)
        for hold, rid in zip(self.opened, reservation_ids, strict=True):
            hold[1] = rid
        new_ids = iter(reservation_ids)
        heads = {t.tenant_id: t.head for t in self.tenants.values()}
        at_us = microseconds(self.at)  # one timestamp for the whole batch
        for e in self.entries:
            if e[2] == "reserve":
                e[3] = next(new_ids)
            tenant, seq, op, rid, amount, hold, initial, remaining, reserved, committed, cap = e[
                :11
            ]
            period = e[12]
            e[11] = heads[tenant] = entry_hash_us(
                heads[tenant],
                tenant,
                seq,
                op,
                rid,
                amount,
                hold,
                initial,
                remaining,
                reserved,
                committed,
                cap,
                at_us,
                None,
                period,
                None,
                entry_format=ENTRY_FORMAT,  # batch_apply labels its entries with it
            )
        for t in self.tenants.values():
            t.head = heads[t.tenant_id]

    def params(self) -> dict[str, Any]:
        changed = [t for t in self.tenants.values() if t.seq != t.locked_seq]
        entries = list(zip(*self.entries, strict=True)) or [()] * 13
        opened = list(zip(*self.opened, strict=True)) or [()] * 6
        closed = list(zip(*self.closed, strict=True)) or [()] * 2
        refused = list(zip(*self.refusals, strict=True)) or [()] * 4
        columns: dict[str, Sequence[Any]] = {
            "t_id": [t.tenant_id for t in changed],
            "t_prev_seq": [t.locked_seq for t in changed],
            "t_seq": [t.seq for t in changed],
            "t_head": [t.head for t in changed],
            "t_initial": [t.initial for t in changed],
            "t_remaining": [t.remaining for t in changed],
            "t_reserved": [t.reserved for t in changed],
            "t_committed": [t.committed for t in changed],
            **{f"o_{k}": v for k, v in zip(_OPENED, opened, strict=True)},
            **{f"c_{k}": v for k, v in zip(("tenant", "id"), closed, strict=True)},
            **{f"j_{k}": v for k, v in zip(_ENTRY, entries, strict=True)},
            **{f"r_{k}": v for k, v in zip(_REFUSED, refused, strict=True)},
        }
        return {
            "at": self.at,
            **{k: int8_array(v) if k in _INT8 else list(v) for k, v in columns.items()},
        }


def int8_array(values: Iterable[int | None]) -> str:
    """A ``bigint[]`` literal, for ``CAST(%(x)s AS bigint[])``.

    Batches send a few dozen arrays of up to 10,000 integers. psycopg dumps a
    list element by element in Python (about 0.35 ms per 1,000 in binary);
    ``str.join`` over ``map(str, ...)`` builds the literal in about a fifth of
    that, and the server's ``array_in`` parses it in C (bench.batch_profile).
    Only ints and None reach here (validated items, drawn ids, balances).
    """
    listed = values if isinstance(values, (list, tuple)) else list(values)
    if None in listed:
        return "{" + ",".join("NULL" if v is None else str(v) for v in listed) + "}"
    return "{" + ",".join(map(str, listed)) + "}"


_OPENED = ("tenant", "id", "amount", "ttl_us", "expires_at", "period")
# The bigint columns of batch_apply, sent as int8_array literals.
_INT8 = frozenset(
    {
        "t_prev_seq",
        "t_seq",
        "t_initial",
        "t_remaining",
        "t_reserved",
        "t_committed",
        "o_id",
        "o_amount",
        "o_ttl_us",
        "o_period",
        "c_id",
        "j_seq",
        "j_id",
        "j_amount",
        "j_hold",
        "j_initial",
        "j_remaining",
        "j_reserved",
        "j_committed",
        "j_cap",
        "j_period",
        "r_amount",
    }
)
_REFUSED = ("tenant", "op", "status", "amount")
_ENTRY = (
    "tenant",
    "seq",
    "op",
    "id",
    "amount",
    "hold",
    "initial",
    "remaining",
    "reserved",
    "committed",
    "cap",
    "hash",
    "period",
)


def _finish(
    q: Queries, plan: _Plan, outcomes: list[OutcomeT], all_or_nothing: bool
) -> Steps[list[OutcomeT]]:
    """Refuse the whole batch, or write it in one statement."""
    if all_or_nothing and not all(o.ok for o in outcomes):
        raise errors.BatchRefused(list(outcomes))
    if plan.entries and not plan.opened:
        plan.seal([])
    if plan.entries or plan.refusals:
        yield Fetch(q.batch_apply, plan.params())
    return outcomes


def one_by_one(
    singles: Callable[[], Iterator[Op[OutcomeT]]],
) -> Callable[[], Steps[list[OutcomeT]]]:
    """Apply the items with the single operations' own steps, in order."""

    def steps() -> Steps[list[OutcomeT]]:
        outcomes = []
        for single in singles():
            outcome = yield from single.steps()
            while single.then is not None:  # a keyed call on Citus that fell back
                follow = single.then(outcome)
                if follow is None:
                    break
                single = follow
                outcome = yield from single.steps()
            outcomes.append(outcome)
        return outcomes

    return steps


def _op(steps: Callable[[], Steps[list[OutcomeT]]], all_or_nothing: bool) -> Op[list[OutcomeT]]:
    def checked() -> Steps[list[OutcomeT]]:
        outcomes = yield from steps()
        if all_or_nothing and not all(o.ok for o in outcomes):
            raise errors.BatchRefused(list(outcomes))
        return outcomes

    def undone_on_refusal() -> Steps[list[OutcomeT]]:
        # In the caller's transaction, a refusal undoes the batch's part only.
        outcomes: list[OutcomeT] = yield Nested(checked, when_owned=False)
        return outcomes

    return Op(undone_on_refusal if all_or_nothing else checked, "READ COMMITTED")
