"""As-of queries: balances at a time T and spend between T1 and T2, from the journal.

What "at T" means (docs/asof.md): an entry's ``created_at`` is its
transaction's ``now()``, the time the transaction *began*. A tenant's entries
are written one at a time under its row lock, so their ``seq`` order is the
order in which they happened, but two transactions can begin in one order
and take the lock in the other: stamps are not monotonic in ``seq``. The
state at T is therefore the state after the **longest prefix of the chain
whose entries are all stamped at or before T**, i.e. the entries before the
first one stamped after T. This is

* a state that really existed (a prefix of the chain, never a mix);
* monotonic: a later T never shows an earlier state;
* stable: appending entries stamped after T never changes it, so an answer
  for a T in the past is final once the transactions that began by T have
  ended (the ledger's own are single statements);
* additive for spend: spend in (T1, T2] is the commit and refund entries
  between the two cuts, so spend(a, b) + spend(b, c) == spend(a, c).

"The last entry stamped at or before T" (taking the state after it) would
pull in earlier-seq entries stamped after T and change when a late entry
with an early stamp arrived; it is not used.

Each entry records the tenant's full balances after it, so the answer is the
recorded balances of the entry at the cut; ``verify_journal`` proves those
follow from replaying the entries. The scan for the cut starts at the newest
``asof_checkpoints`` row whose ``effective_at`` (the latest stamp of every
entry up to its seq) is at or before T: every entry up to it belongs to the
prefix, so the row shortens the scan and cannot move the cut. Rows also
carry running commit/refund totals, so spend over a long window is the
difference of two totals rather than a read of the window. Whether rows
exist changes the cost, never the answer (tests/integration/periods/test_asof.py).

Certificate checkpoints are not used as starting points: a certificate's
``created_at`` bounds the stamps of the entries its checkpoint covers only
when its snapshot committed before the certificate row's transaction began,
which is true on the ledger's own connections but not when ``certify`` runs
inside a caller's transaction (``now()`` is then the caller's start, the
snapshot later). ``asof_checkpoints`` records the bound exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import _validate, errors
from ._operations import first_row, ledger_wide
from ._queries import Queries
from ._requests import Fetch, Op, OpenStream, ReadStream, Steps

_BATCH = 2_000


@dataclass(frozen=True, slots=True)
class BalanceAt:
    """One tenant's balances at ``at``: the state after journal entry ``seq``.

    ``entry_created_at`` is that entry's stamp (at or before ``at``).
    """

    tenant_id: str
    at: datetime
    seq: int
    entry_created_at: datetime
    initial_microcents: int
    remaining_microcents: int
    reserved_microcents: int
    committed_microcents: int
    max_reserved_microcents: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "at": self.at.isoformat(),
            "seq": self.seq,
            "entry_created_at": self.entry_created_at.isoformat(),
            "initial_microcents": self.initial_microcents,
            "remaining_microcents": self.remaining_microcents,
            "reserved_microcents": self.reserved_microcents,
            "committed_microcents": self.committed_microcents,
            "max_reserved_microcents": self.max_reserved_microcents,
        }


@dataclass(frozen=True, slots=True)
class TenantSpend:
    """One tenant's spend in (start, end]: journal entries ``from_seq + 1 .. to_seq``.

    ``committed_microcents`` sums the commit entries, ``refunded_microcents``
    the refund entries; ``spent_microcents`` is the difference.
    """

    tenant_id: str
    committed_microcents: int
    refunded_microcents: int
    commits: int
    refunds: int
    from_seq: int
    to_seq: int

    @property
    def spent_microcents(self) -> int:
        return self.committed_microcents - self.refunded_microcents

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "spent_microcents": self.spent_microcents,
            "committed_microcents": self.committed_microcents,
            "refunded_microcents": self.refunded_microcents,
            "commits": self.commits,
            "refunds": self.refunds,
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
        }


@dataclass(frozen=True, slots=True)
class SpendReport:
    """Spend between ``start`` (exclusive) and ``end`` (inclusive), per tenant.

    ``tenants`` lists the tenants with a commit or refund in the window, in
    tenant id (byte) order; :meth:`get` answers for any tenant (zeros when
    nothing happened).
    """

    start: datetime
    end: datetime
    tenants: tuple[TenantSpend, ...]

    @property
    def spent_microcents(self) -> int:
        return sum(t.spent_microcents for t in self.tenants)

    def get(self, tenant_id: str) -> TenantSpend:
        for t in self.tenants:
            if t.tenant_id == tenant_id:
                return t
        return TenantSpend(tenant_id, 0, 0, 0, 0, 0, 0)

    def __iter__(self) -> Iterator[TenantSpend]:
        return iter(self.tenants)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "spent_microcents": self.spent_microcents,
            "tenants": [t.to_dict() for t in self.tenants],
        }


@dataclass(frozen=True, slots=True)
class AsOfCheckpoint:
    """What :meth:`Ledger.asof_checkpoint` recorded: rows added, entries they newly cover."""

    tenants: int
    entries: int

    def to_dict(self) -> dict[str, Any]:
        return {"tenants": self.tenants, "entries": self.entries}


def instant(name: str, value: object) -> datetime:
    """An aware datetime, or an InputError that says how to make one."""
    if not isinstance(value, datetime):
        raise errors.InputError(
            f"{name} must be a timezone-aware datetime, got {type(value).__name__}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise errors.InputError(
            f"{name} must be timezone-aware (a naive datetime is ambiguous): "
            "use for example datetime(2026, 11, 1, tzinfo=UTC)"
        )
    return value


def _balance(row: Any, at: datetime) -> BalanceAt:
    return BalanceAt(
        tenant_id=row.tenant_id,
        at=at,
        seq=int(row.seq),
        entry_created_at=row.created_at,
        initial_microcents=int(row.initial_microcents),
        remaining_microcents=int(row.remaining_microcents),
        reserved_microcents=int(row.reserved_microcents),
        committed_microcents=int(row.committed_microcents),
        max_reserved_microcents=int(row.max_reserved_microcents),
    )


def _spend(row: Any) -> TenantSpend:
    return TenantSpend(
        tenant_id=row.tenant_id,
        committed_microcents=int(row.committed),
        refunded_microcents=int(row.refunded),
        commits=int(row.commits),
        refunds=int(row.refunds),
        from_seq=int(row.lo),
        to_seq=int(row.hi),
    )


def _stream(sql: str, params: dict[str, Any]) -> Steps[list[Any]]:
    """Every row of a scan, read in slices through a server-side cursor."""
    handle = yield OpenStream(sql, params)
    rows: list[Any] = []
    while True:
        chunk = yield ReadStream(handle, _BATCH)
        if not chunk:
            return rows
        rows.extend(chunk)


def balance_at(q: Queries, tenant_id: str, at: object) -> Op[BalanceAt | None]:
    """One tenant at ``at``: one statement, None if it did not exist then (or never)."""
    tenant_id = _validate.tenant_id(tenant_id)
    when = instant("at", at)

    def steps() -> Steps[BalanceAt | None]:
        row = yield from first_row(q.asof_balance, {"tenant_id": tenant_id, "at": when})
        if row is None or row.op is None or row.op == "remove":
            return None
        return _balance(row, when)

    return Op(steps)


def balances_at(q: Queries, at: object) -> Op[list[BalanceAt]]:
    """Every tenant that existed at ``at``, streamed from one REPEATABLE READ snapshot."""
    when = instant("at", at)

    def steps() -> Steps[list[BalanceAt]]:
        rows = yield from _stream(q.asof_balances, {"at": when})
        return [_balance(r, when) for r in rows]

    return Op(steps, "REPEATABLE READ")


def _window(start: object, end: object) -> tuple[datetime, datetime]:
    lo, hi = instant("start", start), instant("end", end)
    if lo > hi:
        raise errors.InputError(
            f"start ({lo.isoformat()}) is after end ({hi.isoformat()}); swap them"
        )
    return lo, hi


def spend_between(q: Queries, start: object, end: object, tenant_id: str | None) -> Op[SpendReport]:
    """Commits minus refunds in (start, end], for one tenant or every tenant."""
    lo, hi = _window(start, end)
    if tenant_id is not None:
        tenant_id = _validate.tenant_id(tenant_id)
        one = {"tenant_id": tenant_id, "start": lo, "end": hi}

        def single() -> Steps[SpendReport]:
            row = yield from first_row(q.asof_spend, one)
            found = () if row is None or not (row.commits or row.refunds) else (_spend(row),)
            return SpendReport(lo, hi, found)

        return Op(single)

    def every() -> Steps[SpendReport]:
        rows = yield from _stream(q.asof_spends, {"start": lo, "end": hi})
        return SpendReport(lo, hi, tuple(_spend(r) for r in rows))

    return Op(every, "REPEATABLE READ")


def asof_checkpoint(q: Queries) -> Op[AsOfCheckpoint]:
    """Record, per tenant with new entries, its head and the latest stamp up to it."""

    def steps() -> Steps[AsOfCheckpoint]:
        yield from ledger_wide(q, "asof_checkpoint")
        rows = yield Fetch(q.asof_checkpoint, {})
        return AsOfCheckpoint(tenants=int(rows[0].tenants), entries=int(rows[0].entries))

    return Op(steps, "READ COMMITTED")
