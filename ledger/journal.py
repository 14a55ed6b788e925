"""The journal's canonical encoding and its replay, with no database in sight.

Every state change appends one entry; each entry's hash covers the previous
entry's hash (the tenant's chain head) and the entry's canonical bytes, so
editing, deleting, reordering or inserting an entry breaks the chain from
that point. ``docs/journal.md`` specifies the byte layouts: entries written
since revision 0009 use format 2 (tag ``sqlledger/journal/v2``, injective:
every nullable field carries a presence byte), older entries format 1 (tag
``sqlledger/journal/v1``, which encodes NULL like 0 or ''). The journal's
``entry_format`` column says which (NULL for format 1). The SQL function
``journal_hash`` (format 2) and ``journal_hash_v1`` (format 1) and
:func:`entry_hash` here must produce the same bytes.

:class:`Replayer` rebuilds one tenant's balances and open holds from its
entries and reports every way in which the stored history disagrees with
itself or with the live tables.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

JOURNAL_TAG = b"sqlledger/journal/v1\x00"
JOURNAL_TAG_V2 = b"sqlledger/journal/v2\x00"
#: The entry format every writer uses since revision 0009 (``journal.entry_format``).
ENTRY_FORMAT = 2
#: The formats :func:`entry_hash` knows; NULL in the column (None here) is format 1.
ENTRY_FORMATS = (None, 1, 2)
ROOT_TAG = b"sqlledger/journal-root/v1\x00"
GENESIS = bytes(32)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


def microseconds(at: datetime) -> int:
    """Exact microseconds since the Unix epoch (no float on the way)."""
    return (at - EPOCH) // timedelta(microseconds=1)


def entry_hash(
    prev: bytes,
    tenant_id: str,
    seq: int,
    op: str,
    reservation_id: int | None,
    amount: int | None,
    hold: int | None,
    initial: int,
    remaining: int,
    reserved: int,
    committed: int,
    cap: int,
    at: datetime,
    idempotency_key: str | None,
    period_index: int | None = None,
    reason: str | None = None,
    *,
    entry_format: int | None = None,
) -> bytes:
    """SHA-256 of an entry's canonical encoding in ``entry_format``.

    ``entry_format`` is the journal column of the same name: None (or 1) is
    the v1 encoding (SQL ``journal_hash_v1``; ``journal_hash`` before revision
    0009), in which ``period_index`` and ``reason`` (revision 0006) are a
    trailer appended only when either is present; 2 is the injective v2
    encoding of SQL ``journal_hash``, which every writer uses since revision
    0009 (docs/journal.md has both layouts).
    """
    return entry_hash_us(
        prev,
        tenant_id,
        seq,
        op,
        reservation_id,
        amount,
        hold,
        initial,
        remaining,
        reserved,
        committed,
        cap,
        microseconds(at),
        idempotency_key,
        period_index,
        reason,
        entry_format=entry_format,
    )


_SEQ_OP = struct.Struct(">qh")  # seq, op length
_FIXED = struct.Struct(">9qI")  # id, amount, hold, 5 balances, timestamp, key length
_PERIOD = struct.Struct(">qI")  # period index, reason length


def entry_hash_us(
    prev: bytes,
    tenant_id: str,
    seq: int,
    op: str,
    reservation_id: int | None,
    amount: int | None,
    hold: int | None,
    initial: int,
    remaining: int,
    reserved: int,
    committed: int,
    cap: int,
    at_us: int,
    idempotency_key: str | None,
    period_index: int | None = None,
    reason: str | None = None,
    *,
    entry_format: int | None = None,
) -> bytes:
    """:func:`entry_hash` with the timestamp already in epoch microseconds."""
    if entry_format == ENTRY_FORMAT:
        return entry_hash_v2_us(
            prev,
            tenant_id,
            seq,
            op,
            reservation_id,
            amount,
            hold,
            initial,
            remaining,
            reserved,
            committed,
            cap,
            at_us,
            idempotency_key,
            period_index,
            reason,
        )
    if entry_format is not None and entry_format != 1:
        raise ValueError(f"unknown journal entry format {entry_format!r}")
    return _entry_hash_v1_us(
        prev,
        tenant_id,
        seq,
        op,
        reservation_id,
        amount,
        hold,
        initial,
        remaining,
        reserved,
        committed,
        cap,
        at_us,
        idempotency_key,
        period_index,
        reason,
    )


def _entry_hash_v1_us(
    prev: bytes,
    tenant_id: str,
    seq: int,
    op: str,
    reservation_id: int | None,
    amount: int | None,
    hold: int | None,
    initial: int,
    remaining: int,
    reserved: int,
    committed: int,
    cap: int,
    at_us: int,
    idempotency_key: str | None,
    period_index: int | None,
    reason: str | None,
) -> bytes:
    """Format 1: absent numbers are 0, an absent key or reason is empty (not injective).

    The same bytes, packed in three ``struct`` calls and hashed in one: a
    batch used to hash thousands of entries sharing one timestamp
    (bench.batch_profile); old entries are still verified with it.
    """
    tid = tenant_id.encode("utf-8")
    name = op.encode("utf-8")
    key = (idempotency_key or "").encode("utf-8")
    message = b"".join(
        (
            JOURNAL_TAG,
            prev,
            _U32.pack(len(tid)),
            tid,
            _SEQ_OP.pack(seq, len(name)),
            name,
            _FIXED.pack(
                reservation_id or 0,
                amount or 0,
                hold or 0,
                initial,
                remaining,
                reserved,
                committed,
                cap,
                at_us,
                len(key),
            ),
            key,
        )
    )
    if period_index is not None or reason is not None:
        note = (reason or "").encode("utf-8")
        message += _PERIOD.pack(-1 if period_index is None else period_index, len(note)) + note
    return hashlib.sha256(message).digest()


_ABSENT = b"\x00"
_PRESENT = b"\x01"
_SOME_I64 = struct.Struct(">Bq")  # presence byte 1, then the value
_BALANCES = struct.Struct(">6q")  # 5 balances, timestamp


def _some_i64(value: int | None) -> bytes:
    return _ABSENT if value is None else _SOME_I64.pack(1, value)


def _some_text(value: str | None) -> bytes:
    if value is None:
        return _ABSENT
    data = value.encode("utf-8")
    return _PRESENT + _U32.pack(len(data)) + data


def entry_hash_v2_us(
    prev: bytes,
    tenant_id: str,
    seq: int,
    op: str,
    reservation_id: int | None,
    amount: int | None,
    hold: int | None,
    initial: int,
    remaining: int,
    reserved: int,
    committed: int,
    cap: int,
    at_us: int,
    idempotency_key: str | None,
    period_index: int | None,
    reason: str | None,
) -> bytes:
    """Format 2 (SQL ``journal_hash``): every nullable field is a presence byte, then its value.

    0x00 alone for NULL; 0x01 and the value (an i64, or a u32 length and
    UTF-8) otherwise. Every field is self-delimiting, so two different entries
    never encode alike: NULL, 0, -1 and '' are four different things.
    """
    tid = tenant_id.encode("utf-8")
    name = op.encode("utf-8")
    return hashlib.sha256(
        b"".join(
            (
                JOURNAL_TAG_V2,
                prev,
                _U32.pack(len(tid)),
                tid,
                _SEQ_OP.pack(seq, len(name)),
                name,
                _some_i64(reservation_id),
                _some_i64(amount),
                _some_i64(hold),
                _BALANCES.pack(initial, remaining, reserved, committed, cap, at_us),
                _some_text(idempotency_key),
                _some_i64(period_index),
                _some_text(reason),
            )
        )
    ).digest()


class RootHasher:
    """Folds (tenant id, seq, head) triples, fed in UTF-8 byte order, into a journal root."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(ROOT_TAG)

    def update(self, tenant_id: str, seq: int, head: bytes) -> None:
        tid = tenant_id.encode("utf-8")
        self._h.update(_U32.pack(len(tid)) + tid + _I64.pack(seq) + head)

    def digest(self) -> bytes:
        return self._h.digest()


def journal_root(heads: Iterable[tuple[str, int, bytes]]) -> bytes:
    """Fold every tenant's (id, seq, head), in UTF-8 byte order, into one hash."""
    hasher = RootHasher()
    for tenant_id, seq, head in sorted(heads, key=lambda x: x[0].encode("utf-8")):
        hasher.update(tenant_id, seq, head)
    return hasher.digest()


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One way in which the journal and the live tables disagree.

    ``kind`` is one of: ``hash_mismatch`` (an entry's bytes were changed),
    ``sequence_gap`` (entries missing), ``balance_mismatch`` (an entry's
    recorded balances do not follow from the previous ones), ``invalid_entry``
    (an operation that cannot apply, such as settling an unknown hold),
    ``live_mismatch`` (the tenant row differs from the replayed state),
    ``head_mismatch`` (the tenant's stored chain head or sequence is not the
    replayed one), ``hold_mismatch`` (open holds differ),
    ``certificate_mismatch`` (the chain no longer passes through a certified
    head), ``root_mismatch`` (a certificate's journal root does not match its
    checkpoints).
    """

    tenant_id: str | None
    seq: int | None
    kind: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "seq": self.seq,
            "kind": self.kind,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class JournalReport:
    """Result of :meth:`Ledger.verify_journal`."""

    tenants_checked: int
    entries_checked: int
    certificates_checked: int
    discrepancies: tuple[Discrepancy, ...]
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tenants_checked": self.tenants_checked,
            "entries_checked": self.entries_checked,
            "certificates_checked": self.certificates_checked,
            "discrepancies": [d.to_dict() for d in self.discrepancies],
            "truncated": self.truncated,
        }


@dataclass
class TenantState:
    """A tenant as replayed from its journal.

    ``period`` is the budget period the tenant is in (None without an
    allowance), ``hold_periods`` the period each hold was opened in (known for
    holds opened during the replay), ``refundable`` what each commit seen
    during the replay can still refund. ``from_genesis`` says the replay knows
    every commit that can still be refunded (it saw the tenant's whole history,
    or a restore or removal since, which end every earlier commit's
    refundability), so a refund of a commit it never saw is an error rather
    than a commit before the checkpoint. ``ended`` holds the holds whose
    period a schedule change or a clear closed: they settle as holds from an
    ended period whatever index the tenant's next period has.
    """

    exists: bool = False
    seq: int = 0
    head: bytes = GENESIS
    initial: int = 0
    remaining: int = 0
    reserved: int = 0
    committed: int = 0
    cap: int = 0
    holds: dict[int, int] = field(default_factory=dict)
    period: int | None = None
    hold_periods: dict[int, int | None] = field(default_factory=dict)
    refundable: dict[int, int] = field(default_factory=dict)
    from_genesis: bool = True
    ended: set[int] = field(default_factory=set)

    def balances(self) -> tuple[int, int, int, int, int]:
        return (self.initial, self.remaining, self.reserved, self.committed, self.cap)


class Replayer:
    """Replays one tenant's entries in order, collecting discrepancies."""

    def __init__(self, tenant_id: str, start: TenantState, report: list[Discrepancy]) -> None:
        self.tenant_id = tenant_id
        self.state = start
        self.report = report

    def flag(self, seq: int | None, kind: str, detail: str) -> None:
        self.report.append(Discrepancy(self.tenant_id, seq, kind, detail))

    def apply(self, e: Any) -> None:
        """Apply one journal row (attribute access: seq, op, ... entry_hash)."""
        s = self.state
        if e.seq != s.seq + 1:
            self.flag(e.seq, "sequence_gap", f"expected entry {s.seq + 1}, found {e.seq}")
        self._check_hash(e)
        self._transition(e)
        recorded = (
            e.initial_microcents,
            e.remaining_microcents,
            e.reserved_microcents,
            e.committed_microcents,
            e.max_reserved_microcents,
        )
        if s.exists and s.balances() != recorded:
            self.flag(
                e.seq,
                "balance_mismatch",
                f"{e.op}: replay gives {s.balances()}, entry records {recorded}",
            )
        # Continue from what the entry says, so one bad entry is reported once.
        s.initial, s.remaining, s.reserved, s.committed, s.cap = recorded
        s.seq = e.seq
        s.head = bytes(e.entry_hash)

    def _check_hash(self, e: Any) -> None:
        """The entry must hash to its stored value from the head, in the format it names.

        An entry whose hash matches the *other* format instead is accepted too:
        a downgrade below revision 0009 drops the ``entry_format`` labels of
        format-2 entries, and an earlier release's batches (which hash in
        Python) label format-1 hashes 2 while a rolling upgrade is under way.
        That costs no tamper-evidence: a stored format-2 hash can be the
        encoding of one row only (format 2 is injective, and no format-1
        encoding, whose tag differs, can hit it), and a format-1 hash covers
        the same rows either way. docs/journal.md says more.
        """
        entry_format = getattr(e, "entry_format", None)
        if entry_format not in ENTRY_FORMATS:
            self.flag(
                e.seq,
                "hash_mismatch",
                f"{e.op} entry names entry format {entry_format!r}, which no writer uses",
            )
            return
        stored = bytes(e.entry_hash)
        named = 2 if entry_format == ENTRY_FORMAT else 1
        for candidate in (named, 3 - named):
            if stored == self._hash(e, candidate):
                return
        self.flag(
            e.seq,
            "hash_mismatch",
            f"{e.op} entry does not hash to its stored value (edited or out of chain)",
        )

    def _hash(self, e: Any, entry_format: int) -> bytes:
        return entry_hash(
            self.state.head,
            self.tenant_id,
            e.seq,
            e.op,
            e.reservation_id,
            e.amount_microcents,
            e.hold_microcents,
            e.initial_microcents,
            e.remaining_microcents,
            e.reserved_microcents,
            e.committed_microcents,
            e.max_reserved_microcents,
            e.created_at,
            e.idempotency_key,
            getattr(e, "period_index", None),
            getattr(e, "reason", None),
            entry_format=entry_format,
        )

    def _transition(self, e: Any) -> None:
        """Apply one entry's change to the replayed state, flagging what cannot happen."""
        lifecycle = _LIFECYCLE.get(e.op)
        if lifecycle is not None:
            lifecycle(self, e)
            return
        change = _CHANGES.get(e.op)
        if change is None:
            self.flag(e.seq, "invalid_entry", f"unknown operation {e.op!r}")
        elif not self.state.exists:
            self.flag(e.seq, "invalid_entry", f"{e.op} for a tenant that does not exist")
        else:
            change(self, e)

    # Entries that create, reset or remove the tenant itself.

    def _opened(self, e: Any) -> None:  # open, restore: the entry states the balances
        s = self.state
        s.exists = True
        s.holds.clear()
        s.hold_periods.clear()
        s.ended.clear()
        s.refundable.clear()  # a restore replaces the balances earlier commits were in
        s.from_genesis = True
        s.period = getattr(e, "period_index", None)
        s.initial, s.remaining, s.reserved, s.committed, s.cap = (
            e.initial_microcents,
            e.remaining_microcents,
            e.reserved_microcents,
            e.committed_microcents,
            e.max_reserved_microcents,
        )

    def _created(self, e: Any) -> None:
        s = self.state
        if s.exists:
            self.flag(e.seq, "invalid_entry", "create for a tenant that exists")
        s.exists = True
        s.holds.clear()
        s.initial = s.remaining = e.amount_microcents or 0
        s.reserved = s.committed = 0
        s.cap = e.max_reserved_microcents

    def _removed(self, e: Any) -> None:
        s = self.state
        s.exists = False
        s.holds.clear()
        s.hold_periods.clear()
        s.ended.clear()
        s.refundable.clear()
        s.from_genesis = True
        s.period = None
        s.initial = s.remaining = s.reserved = s.committed = 0

    # Entries that change an existing tenant.

    def _hold_opened(self, e: Any) -> None:  # open_hold: a hold that predates the journal
        self.state.holds[e.reservation_id] = e.amount_microcents or 0

    def _topped_up(self, e: Any) -> None:
        amount = e.amount_microcents or 0
        self.state.initial += amount
        self.state.remaining += amount

    def _capped(self, e: Any) -> None:
        self.state.cap = e.amount_microcents or 0

    def _reserved(self, e: Any) -> None:
        s, rid, amount = self.state, e.reservation_id, e.amount_microcents or 0
        if rid in s.holds:
            self.flag(e.seq, "invalid_entry", f"hold {rid} reserved twice")
        period = getattr(e, "period_index", None)
        if period != s.period:
            self.flag(
                e.seq, "invalid_entry", f"hold {rid} opened in period {period}, not {s.period}"
            )
        s.holds[rid] = amount
        s.hold_periods[rid] = s.period
        s.remaining -= amount
        s.reserved += amount

    def _closed_period(self, e: Any, rid: int) -> bool:
        """Does this settlement close a hold opened in an earlier period?

        Settlement entries carry the hold's period. A hold settles against its
        own period: what it leaves unspent after that period ended is
        forfeited (docs/periods.md).
        """
        s = self.state
        period = getattr(e, "period_index", None)
        known = s.hold_periods.pop(rid, period)
        if known != period:
            self.flag(
                e.seq, "invalid_entry", f"hold {rid} settled as period {period}, opened in {known}"
            )
        if rid in s.ended:
            s.ended.discard(rid)
            return True
        return period is not None and period != s.period

    def _committed(self, e: Any) -> None:
        s, rid, amount = self.state, e.reservation_id, e.amount_microcents or 0
        hold = s.holds.pop(rid, None)
        if hold is None or hold != e.hold_microcents:
            self.flag(e.seq, "invalid_entry", f"commit of unknown or altered hold {rid}")
            hold = e.hold_microcents or 0
        forfeit = max(hold - amount, 0) if self._closed_period(e, rid) else 0
        s.remaining -= amount - hold + forfeit
        s.initial -= forfeit
        s.reserved -= hold
        s.committed += amount
        s.refundable[rid] = amount

    def _returned(self, e: Any) -> None:  # release, expire: the hold's amount goes back
        s, rid, amount = self.state, e.reservation_id, e.amount_microcents or 0
        hold = s.holds.pop(rid, None)
        if hold is None or hold != amount:
            self.flag(e.seq, "invalid_entry", f"{e.op} of unknown or altered hold {rid}")
            hold = amount
        if self._closed_period(e, rid):
            s.initial -= hold
        else:
            s.remaining += hold
        s.reserved -= hold

    def _renewed(self, e: Any) -> None:
        """renew: the tenant enters ``period_index``; amount is the allowance, hold the carry.

        ``remaining`` becomes carry + allowance and ``initial`` moves by the
        same difference, so conservation holds across the boundary.
        """
        s = self.state
        period = getattr(e, "period_index", None)
        if period is not None and s.period is not None and period <= s.period:
            self.flag(e.seq, "invalid_entry", f"renewal to period {period} from period {s.period}")
        carry, allowance = e.hold_microcents or 0, e.amount_microcents or 0
        if carry < 0 or allowance < 0:
            self.flag(e.seq, "invalid_entry", "renewal with a negative carry or allowance")
        now_remaining = carry + allowance
        s.initial += now_remaining - s.remaining
        s.remaining = now_remaining
        if period is None:  # a schedule change or a clear ends the periods of open holds
            s.ended.update(r for r, p in s.hold_periods.items() if p is not None)
        s.period = period

    def _refunded(self, e: Any) -> None:
        """refund: part of commit ``reservation_id`` goes back from committed to remaining."""
        s, rid, amount = self.state, e.reservation_id, e.amount_microcents or 0
        left = s.refundable.get(rid)
        if amount <= 0 or (left is None and s.from_genesis) or (left is not None and amount > left):
            self.flag(e.seq, "invalid_entry", f"refund of {amount} exceeds what commit {rid} left")
        if left is not None:
            s.refundable[rid] = left - amount
        s.committed -= amount
        s.remaining += amount

    def _adjusted(self, e: Any) -> None:
        """adjust: a signed change of the budget (initial and remaining), with a reason."""
        amount = e.amount_microcents or 0
        if not getattr(e, "reason", None):
            self.flag(e.seq, "invalid_entry", "adjustment without a reason")
        self.state.initial += amount
        self.state.remaining += amount


_LIFECYCLE: dict[str, Callable[[Replayer, Any], None]] = {
    "open": Replayer._opened,
    "restore": Replayer._opened,
    "create": Replayer._created,
    "remove": Replayer._removed,
}
_CHANGES: dict[str, Callable[[Replayer, Any], None]] = {
    "open_hold": Replayer._hold_opened,
    "top_up": Replayer._topped_up,
    "cap": Replayer._capped,
    "reserve": Replayer._reserved,
    "commit": Replayer._committed,
    "release": Replayer._returned,
    "expire": Replayer._returned,
    "renew": Replayer._renewed,
    "refund": Replayer._refunded,
    "adjust": Replayer._adjusted,
}
