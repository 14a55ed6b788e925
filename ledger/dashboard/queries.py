"""What the pages show, read from the audit views (``queries.sql``) into plain records.

Each ``fetch_*`` coroutine runs one or two named statements on a connection
that :mod:`ledger.dashboard.access` opened (the auditor role, read-only,
inside the page's snapshot) and returns frozen dataclasses. Amounts stay
exact Python ints: SQL ``numeric`` sums are converted without a float.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib import resources
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import namedtuple_row

from .._queries import parse
from .formatting import whole


@functools.cache
def _templates() -> dict[str, str]:
    text = resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    return parse(text)


class Statements:
    """The statements of ``queries.sql`` with one schema name spliced in."""

    def __init__(self, schema: str) -> None:
        quoted = '"' + schema.replace('"', '""') + '"'
        self._sql = {name: sql.replace("{schema}", quoted) for name, sql in _templates().items()}

    def __getitem__(self, name: str) -> str:
        return self._sql[name]

    def names(self) -> list[str]:
        return sorted(self._sql)


async def _rows(
    conn: AsyncConnection[Any], sql: str, params: dict[str, Any] | None = None
) -> list[Any]:
    async with conn.cursor(row_factory=namedtuple_row) as cur:
        await cur.execute(sql, params or {})
        return await cur.fetchall()


async def _row(conn: AsyncConnection[Any], sql: str, params: dict[str, Any] | None = None) -> Any:
    rows = await _rows(conn, sql, params)
    return rows[0] if rows else None


def _int(value: int | Decimal | None) -> int:
    return 0 if value is None else whole(value)


# ------------------------------------------------------------------ overview


@dataclass(frozen=True, slots=True)
class Totals:
    tenants: int
    initial: int
    remaining: int
    reserved: int
    committed: int
    journal_entries: int

    @property
    def balanced(self) -> bool:
        """The ledger-wide sums balance too (exact: Python ints do not overflow)."""
        return self.remaining + self.reserved + self.committed == self.initial


@dataclass(frozen=True, slots=True)
class Violation:
    tenant_id: str
    initial: int
    remaining: int
    reserved: int
    committed: int
    delta: int


@dataclass(frozen=True, slots=True)
class Mismatch:
    tenant_id: str
    reserved: int
    open_holds: int
    difference: int


@dataclass(frozen=True, slots=True)
class HeadProblem:
    """A tenant whose row and journal disagree, and how."""

    tenant_id: str
    head_seq: int
    entries: int
    last_seq: int
    head_found: bool
    balances_differ: bool

    @property
    def reasons(self) -> list[str]:
        found = []
        if self.head_seq > 0 and not self.head_found:
            found.append(f"no journal entry at the row's head (seq {self.head_seq:,})")
        if self.balances_differ:
            found.append("the row's balances differ from its head entry")
        if self.entries != self.head_seq:
            found.append(f"{self.entries:,} entries for a head at seq {self.head_seq:,}")
        if self.last_seq > self.head_seq:
            found.append(f"entries past the head (up to seq {self.last_seq:,})")
        return found


@dataclass(frozen=True, slots=True)
class JournalChecks:
    entries: int
    differing: int
    first: tuple[HeadProblem, ...]

    @property
    def ok(self) -> bool:
        return self.differing == 0


@dataclass(frozen=True, slots=True)
class Certificate:
    certificate_id: int
    created_at: datetime
    snapshot_version: int
    tenant_count: int
    active_reservations: int
    conservation_balanced: bool
    aggregate_totals_representable: bool
    total_initial: int
    total_committed: int
    committed_since_last: int
    journal_root_hex: str
    total: int


@dataclass(frozen=True, slots=True)
class Holds:
    open_holds: int
    lapsed_holds: int
    held: int
    lapsed_held: int
    oldest_age_seconds: int


@dataclass(frozen=True, slots=True)
class Hold:
    tenant_id: str
    reservation_id: int
    amount: int
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Spender:
    tenant_id: str
    committed: int
    initial: int


@dataclass(frozen=True, slots=True)
class RefusalCount:
    op: str
    status: str
    n: int


@dataclass(frozen=True, slots=True)
class Slice:
    starts_at: datetime
    ends_at: datetime
    n: int


@dataclass(frozen=True, slots=True)
class Refusals:
    hours: int
    by_status: tuple[RefusalCount, ...]
    over_time: tuple[Slice, ...]

    @property
    def total(self) -> int:
        return sum(r.n for r in self.by_status)


async def fetch_totals(conn: AsyncConnection[Any], q: Statements) -> Totals:
    r = await _row(conn, q["totals"])
    return Totals(
        tenants=int(r.tenants),
        initial=_int(r.initial),
        remaining=_int(r.remaining),
        reserved=_int(r.reserved),
        committed=_int(r.committed),
        journal_entries=_int(r.journal_entries),
    )


async def fetch_violations(
    conn: AsyncConnection[Any], q: Statements, limit: int
) -> tuple[int, list[Violation]]:
    rows = await _rows(conn, q["violations"], {"limit": limit})
    found = [
        Violation(
            r.tenant_id,
            _int(r.initial_microcents),
            _int(r.remaining_microcents),
            _int(r.reserved_microcents),
            _int(r.committed_microcents),
            _int(r.delta_microcents),
        )
        for r in rows
    ]
    return (int(rows[0].total) if rows else 0), found


async def fetch_mismatches(
    conn: AsyncConnection[Any], q: Statements, limit: int
) -> tuple[int, list[Mismatch]]:
    rows = await _rows(conn, q["reserved_mismatches"], {"limit": limit})
    found = [
        Mismatch(
            r.tenant_id,
            _int(r.reserved_microcents),
            _int(r.open_holds_microcents),
            _int(r.difference_microcents),
        )
        for r in rows
    ]
    return (int(rows[0].total) if rows else 0), found


async def fetch_journal_checks(
    conn: AsyncConnection[Any], q: Statements, limit: int
) -> JournalChecks:
    r = await _row(conn, q["journal_checks"], {"limit": limit})
    return JournalChecks(
        entries=_int(r.entries),
        differing=int(r.differing),
        first=tuple(
            HeadProblem(str(t), int(h), int(n), int(last), bool(found), bool(differ))
            for t, h, n, last, found, differ in r.first
        ),
    )


async def fetch_latest_certificate(conn: AsyncConnection[Any], q: Statements) -> Certificate | None:
    r = await _row(conn, q["latest_certificate"])
    if r is None:
        return None
    return Certificate(
        certificate_id=int(r.certificate_id),
        created_at=r.created_at,
        snapshot_version=int(r.snapshot_version),
        tenant_count=int(r.tenant_count),
        active_reservations=int(r.active_reservations),
        conservation_balanced=bool(r.conservation_balanced),
        aggregate_totals_representable=bool(r.aggregate_totals_representable),
        total_initial=_int(r.total_initial_microcents),
        total_committed=_int(r.total_committed_microcents),
        committed_since_last=_int(r.committed_since_last_certificate),
        journal_root_hex=str(r.journal_root_hex or ""),
        total=int(r.total),
    )


async def fetch_holds(conn: AsyncConnection[Any], q: Statements) -> Holds:
    r = await _row(conn, q["holds"])
    return Holds(
        open_holds=int(r.open_holds),
        lapsed_holds=int(r.lapsed_holds),
        held=_int(r.held),
        lapsed_held=_int(r.lapsed_held),
        oldest_age_seconds=int(r.oldest_age),
    )


async def fetch_lapsed_holds(conn: AsyncConnection[Any], q: Statements, limit: int) -> list[Hold]:
    rows = await _rows(conn, q["lapsed_holds"], {"limit": limit})
    return [
        Hold(
            r.tenant_id,
            int(r.reservation_id),
            _int(r.amount_microcents),
            r.created_at,
            r.expires_at,
        )
        for r in rows
    ]


async def fetch_top_spenders(
    conn: AsyncConnection[Any], q: Statements, limit: int
) -> list[Spender]:
    rows = await _rows(conn, q["top_spenders"], {"limit": limit})
    return [
        Spender(r.tenant_id, _int(r.committed_microcents), _int(r.initial_microcents)) for r in rows
    ]


async def fetch_refusals(
    conn: AsyncConnection[Any], q: Statements, hours: int, buckets: int
) -> Refusals:
    by_status = await _rows(conn, q["refusals_by_status"], {"hours": hours})
    slices = await _rows(conn, q["refusals_over_time"], {"hours": hours, "buckets": buckets})
    return Refusals(
        hours=hours,
        by_status=tuple(RefusalCount(str(r.op), str(r.status), int(r.n)) for r in by_status),
        over_time=tuple(Slice(r.starts_at, r.ends_at, int(r.n)) for r in slices),
    )


# ------------------------------------------------------------------- tenants


@dataclass(frozen=True, slots=True)
class TenantRow:
    tenant_id: str
    initial: int
    remaining: int
    reserved: int
    committed: int
    max_reserved: int
    open_holds: int
    balanced: bool
    journal_entries: int
    created_at: datetime | None = None


def _tenant(r: Any) -> TenantRow:
    return TenantRow(
        tenant_id=r.tenant_id,
        initial=_int(r.initial_microcents),
        remaining=_int(r.remaining_microcents),
        reserved=_int(r.reserved_microcents),
        committed=_int(r.committed_microcents),
        max_reserved=_int(r.max_reserved_microcents),
        open_holds=int(r.open_holds),
        balanced=bool(r.balanced),
        journal_entries=int(r.journal_entries),
        created_at=getattr(r, "created_at", None),
    )


async def fetch_tenant_count(conn: AsyncConnection[Any], q: Statements, prefix: str) -> int:
    r = await _row(conn, q["tenant_count"], {"prefix": prefix})
    return int(r.n)


async def fetch_tenant_page(
    conn: AsyncConnection[Any], q: Statements, prefix: str, limit: int, offset: int
) -> list[TenantRow]:
    rows = await _rows(conn, q["tenant_page"], {"prefix": prefix, "limit": limit, "offset": offset})
    return [_tenant(r) for r in rows]


async def fetch_tenant(
    conn: AsyncConnection[Any], q: Statements, tenant_id: str
) -> TenantRow | None:
    r = await _row(conn, q["tenant"], {"tenant_id": tenant_id})
    return None if r is None else _tenant(r)


@dataclass(frozen=True, slots=True)
class TenantHold:
    reservation_id: int
    amount: int
    created_at: datetime
    expires_at: datetime | None
    lapsed: bool
    age_seconds: int


async def fetch_tenant_holds(
    conn: AsyncConnection[Any], q: Statements, tenant_id: str, limit: int
) -> tuple[int, list[TenantHold]]:
    rows = await _rows(conn, q["tenant_holds"], {"tenant_id": tenant_id, "limit": limit})
    found = [
        TenantHold(
            int(r.reservation_id),
            _int(r.amount_microcents),
            r.created_at,
            r.expires_at,
            bool(r.lapsed),
            int(r.age),
        )
        for r in rows
    ]
    return (int(rows[0].total) if rows else 0), found


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    op: str
    reservation_id: int | None
    amount: int | None
    hold: int | None
    initial: int
    remaining: int
    reserved: int
    committed: int
    max_reserved: int
    remaining_change: int
    created_at: datetime


def _maybe(value: int | Decimal | None) -> int | None:
    return None if value is None else whole(value)


async def fetch_tenant_journal(
    conn: AsyncConnection[Any], q: Statements, tenant_id: str, limit: int, offset: int
) -> list[Entry]:
    rows = await _rows(
        conn, q["tenant_journal"], {"tenant_id": tenant_id, "limit": limit, "offset": offset}
    )
    return [
        Entry(
            seq=int(r.seq),
            op=str(r.op),
            reservation_id=_maybe(r.reservation_id),
            amount=_maybe(r.amount_microcents),
            hold=_maybe(r.hold_microcents),
            initial=_int(r.initial_microcents),
            remaining=_int(r.remaining_microcents),
            reserved=_int(r.reserved_microcents),
            committed=_int(r.committed_microcents),
            max_reserved=_int(r.max_reserved_microcents),
            remaining_change=_int(r.remaining_change_microcents),
            created_at=r.created_at,
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class PeriodSpend:
    """Spend in the window (starts_at, ends_at]: commits minus refunds."""

    starts_at: datetime
    ends_at: datetime
    committed: int
    refunded: int
    commits: int
    refunds: int

    @property
    def spent(self) -> int:
        return self.committed - self.refunded


async def fetch_tenant_spend(
    conn: AsyncConnection[Any],
    q: Statements,
    tenant_id: str,
    *,
    unit: str,
    step: str,
    periods: int,
) -> list[PeriodSpend]:
    rows = await _rows(
        conn,
        q["tenant_spend"],
        {"tenant_id": tenant_id, "unit": unit, "step": step, "periods": periods},
    )
    return [
        PeriodSpend(
            r.starts_at,
            r.ends_at,
            _int(r.committed),
            _int(r.refunded),
            int(r.commits),
            int(r.refunds),
        )
        for r in rows
    ]
