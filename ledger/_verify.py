"""Journal replay verification: stream everything, in tenant order, in one snapshot.

All inputs (journal entries, live tenants, open holds, parked tenants,
certificate checkpoints) are read through server-side cursors ordered by
``tenant_id``, inside the caller's REPEATABLE READ transaction, and merged
one tenant at a time. Memory therefore holds one tenant's open holds and
checkpoints, never the whole journal.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from . import errors
from ._operations import ledger_wide
from ._queries import Queries
from ._requests import Fetch, Op, OpenStream, ReadStream, Steps
from .journal import (
    GENESIS,
    Discrepancy,
    JournalReport,
    Replayer,
    RootHasher,
    TenantState,
)

MAX_DISCREPANCIES = 10_000
_BATCH = 2_000


class _Stream:
    """A scan sorted by tenant, read in slices, handing out one tenant's rows at a time.

    Reading is a generator of requests (:class:`ReadStream`), so the replay
    below runs on every back-end, and memory holds one slice per stream.
    """

    def __init__(self, handle: int) -> None:
        self._handle = handle
        self._buffer: deque[Any] = deque()
        self._done = False
        self.head: Any = None

    def advance(self) -> Steps[None]:
        if not self._buffer and not self._done:
            rows = yield ReadStream(self._handle, _BATCH)
            self._buffer.extend(rows)
            self._done = not rows
        self.head = self._buffer.popleft() if self._buffer else None

    def peek_tenant(self) -> str | None:
        return None if self.head is None else self.head.tenant_id

    def take(self, tenant_id: str) -> Steps[list[Any]]:
        rows = []
        while self.head is not None and self.head.tenant_id == tenant_id:
            rows.append(self.head)
            yield from self.advance()
        return rows


def _open(sql: str, params: dict[str, Any]) -> Steps[_Stream]:
    stream = _Stream((yield OpenStream(sql, params)))
    yield from stream.advance()
    return stream


def verify_journal(
    q: Queries,
    since_certificate: int | None,
    progress: Callable[[int], None] | None = None,
) -> Op[JournalReport]:
    """Replay every tenant's journal in one REPEATABLE READ snapshot (see Ledger.verify_journal)."""
    return Op(lambda: _replay(q, since_certificate, progress), "REPEATABLE READ")


def _replay(
    q: Queries,
    since_certificate: int | None,
    progress: Callable[[int], None] | None,
) -> Steps[JournalReport]:
    yield from ledger_wide(q, "verify_journal")
    start_checkpoint = -1
    if since_certificate is not None:
        rows = yield Fetch(q.certificate_checkpoint, {"certificate_id": since_certificate})
        found = rows[0] if rows else None
        if found is None or found.checkpoint_id is None:
            raise errors.InputError(
                f"there is no certificate {since_certificate} with a checkpoint"
            )
        start_checkpoint = int(found.checkpoint_id)
    params = {"start_checkpoint": start_checkpoint}

    journal_sql = q.verify_journal if since_certificate is None else q.verify_journal_since
    journal = yield from _open(journal_sql, params)
    tenants = yield from _open(q.verify_tenants, {})
    holds = yield from _open(q.verify_holds, {})
    parked = yield from _open(q.verify_detached, {})
    checkpoints = yield from _open(q.verify_checkpoints, {})
    starts = yield from _open(q.verify_start, params)
    streams = (journal, tenants, holds, parked, checkpoints, starts)

    report: list[Discrepancy] = []
    tenants_checked = entries_checked = 0
    while True:
        pending = [t for t in (s.peek_tenant() for s in streams) if t is not None]
        if not pending:
            break
        tenant_id = min(pending)
        tenants_checked += 1
        if progress is not None and tenants_checked % 1000 == 0:
            progress(tenants_checked)

        state = _start_state(_first((yield from starts.take(tenant_id))))
        replayer = Replayer(tenant_id, state, report)
        pins = _Pins(state.seq, (yield from checkpoints.take(tenant_id)))
        while journal.peek_tenant() == tenant_id:
            entry = journal.head
            yield from journal.advance()
            entries_checked += 1
            replayer.apply(entry)
            pins.check(replayer)
        pins.check_missing(replayer)

        _compare_live(
            replayer,
            _first((yield from tenants.take(tenant_id))),
            (yield from holds.take(tenant_id)),
            _first((yield from parked.take(tenant_id))),
        )
        if len(report) > MAX_DISCREPANCIES:
            break

    certificates_checked = yield from _check_roots(q, report)
    truncated = len(report) > MAX_DISCREPANCIES
    return JournalReport(
        tenants_checked=tenants_checked,
        entries_checked=entries_checked,
        certificates_checked=certificates_checked,
        discrepancies=tuple(report[:MAX_DISCREPANCIES]),
        truncated=truncated,
    )


class _Pins:
    """The chain heads that certificates pinned for one tenant, checked as replay passes them."""

    def __init__(self, start_seq: int, checkpoints: list[Any]) -> None:
        self._by_seq: dict[int, list[tuple[int, bytes]]] = {}
        for c in checkpoints:
            if c.journal_seq > start_seq:
                self._by_seq.setdefault(c.journal_seq, []).append(
                    (c.certificate_id, bytes(c.journal_head))
                )

    def check(self, replayer: Replayer) -> None:
        """After an entry: the chain must pass through every head pinned at this seq."""
        state = replayer.state
        for version, head in self._by_seq.pop(state.seq, ()):
            if head != state.head:
                replayer.flag(
                    state.seq,
                    "certificate_mismatch",
                    "the chain no longer passes through the head certified "
                    f"by certificate {version}",
                )

    def check_missing(self, replayer: Replayer) -> None:
        """After the tenant's last entry: pins the replay never reached are missing entries."""
        for seq, pins in self._by_seq.items():
            for version, _ in pins:
                replayer.flag(
                    seq,
                    "certificate_mismatch",
                    f"certificate {version} certified entry {seq}, which is missing",
                )


def _first(rows: list[Any]) -> Any:
    return rows[0] if rows else None


def _start_state(start: Any) -> TenantState:
    if start is None:
        return TenantState()
    return TenantState(
        exists=True,
        seq=start.journal_seq,
        head=bytes(start.journal_head),
        initial=start.initial_microcents,
        remaining=start.remaining_microcents,
        reserved=start.reserved_microcents,
        committed=start.committed_microcents,
        cap=start.max_reserved_microcents,
        holds=dict(zip(start.hold_ids, start.hold_amounts, strict=True)),
        period=start.period_index,
        from_genesis=False,
    )


def _compare_live(replayer: Replayer, live: Any, live_holds: list[Any], parked: Any) -> None:
    state = replayer.state
    if state.exists:
        if live is None:
            replayer.flag(None, "live_mismatch", "the journal says the tenant exists; it does not")
            return
        actual = (
            live.initial_microcents,
            live.remaining_microcents,
            live.reserved_microcents,
            live.committed_microcents,
            live.max_reserved_microcents,
        )
        if actual != state.balances():
            replayer.flag(
                None,
                "live_mismatch",
                f"tenant row {actual} differs from the replayed {state.balances()}",
            )
        if (live.journal_seq, bytes(live.journal_head)) != (state.seq, state.head):
            replayer.flag(
                live.journal_seq,
                "head_mismatch",
                f"tenant row says entry {live.journal_seq} with head "
                f"{bytes(live.journal_head).hex()[:16]}..., replay ends at entry "
                f"{state.seq} with head {state.head.hex()[:16]}...",
            )
        found = {h.reservation_id: h.amount_microcents for h in live_holds}
        if found != state.holds:
            replayer.flag(
                None,
                "hold_mismatch",
                f"open holds {sorted(found.items())} differ from the replayed "
                f"{sorted(state.holds.items())}",
            )
        return
    if live is not None:
        replayer.flag(
            live.journal_seq,
            "live_mismatch",
            "the tenant row exists but its journal does not create it",
        )
    if live_holds:
        replayer.flag(None, "hold_mismatch", "open holds for a tenant the journal says is gone")
    if state.seq > 0:
        if parked is None or (parked.journal_seq, bytes(parked.journal_head)) != (
            state.seq,
            state.head,
        ):
            replayer.flag(
                state.seq,
                "head_mismatch",
                "a removed tenant's parked chain head does not match its journal",
            )
    elif parked is not None and (parked.journal_seq, bytes(parked.journal_head)) != (0, GENESIS):
        replayer.flag(None, "head_mismatch", "a parked chain head with no journal behind it")


def _check_roots(q: Queries, report: list[Discrepancy]) -> Steps[int]:
    """Recompute each certificate's journal root from its checkpoint rows."""
    checked = 0
    current: Any = None
    hasher = RootHasher()

    def finish() -> None:
        if current is None:
            return
        if hasher.digest() != bytes(current.journal_root):
            report.append(
                Discrepancy(
                    None,
                    None,
                    "root_mismatch",
                    f"certificate {current.certificate_id}: its checkpoints "
                    "no longer fold into its journal root",
                )
            )

    roots = yield from _open(q.verify_roots, {})
    while roots.head is not None:
        row = roots.head
        yield from roots.advance()
        if current is None or row.certificate_id != current.certificate_id:
            finish()
            current = row
            hasher = RootHasher()
            checked += 1
        if row.tenant_id is not None:  # rows arrive in tenant byte order
            hasher.update(row.tenant_id, row.journal_seq, bytes(row.journal_head))
    finish()
    return checked
