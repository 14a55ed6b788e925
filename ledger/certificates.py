"""Digests, conservation proofs and financial certificates.

``ledger_digest`` is byte-compatible with calybris-core's
``finance::ledger_digest`` so a digest computed here can be checked by any
calybris deployment, and vice versa. The byte layout is specified in
``docs/digest.md``.

Everything here is pure except :func:`certify_ledger`, which asks the ledger
to take a snapshot and to rotate its certificate baseline in PostgreSQL.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from . import errors
from ._validate import I64_MAX, I64_MIN
from .outcomes import Balance
from .snapshot import BudgetSnapshot, conservation_status_for_snapshot, sort_key


class _Snapshots(Protocol):
    """Anything with a ``snapshot()``: a :class:`~ledger.Ledger` (no import, so no cycle)."""

    def snapshot(self) -> BudgetSnapshot: ...


class _Certifies(Protocol):
    """Anything that certifies itself: a :class:`~ledger.Ledger` or a bound ledger."""

    def certify(self, *, connection: Any = None) -> FinancialCertificate: ...


DIGEST_TAG = b"calyldg1\x00"

_HEADER = struct.Struct("<QQQ")
_ID_LEN = struct.Struct("<I")
_AMOUNTS = struct.Struct("<qqqq")


def ledger_digest(snapshot: BudgetSnapshot) -> bytes:
    """SHA-256 over the tagged, canonical little-endian encoding of a snapshot."""
    h = hashlib.sha256(DIGEST_TAG)
    try:
        h.update(
            _HEADER.pack(snapshot.version, len(snapshot.tenants), snapshot.active_reservations)
        )
        for t in sorted(snapshot.tenants, key=lambda t: sort_key(t.tenant_id)):
            raw = t.tenant_id.encode("utf-8")
            h.update(_ID_LEN.pack(len(raw)))
            h.update(raw)
            h.update(
                _AMOUNTS.pack(
                    t.initial_microcents,
                    t.remaining_microcents,
                    t.reserved_microcents,
                    t.committed_microcents,
                )
            )
    except (struct.error, UnicodeEncodeError, AttributeError) as exc:
        raise errors.MalformedSnapshot(f"snapshot cannot be digested: {exc}") from exc
    return h.digest()


@dataclass(frozen=True, slots=True)
class ConservationProof:
    """Evidence that a specific snapshot (named by its digest) balanced."""

    ledger_digest_hex: str
    snapshot_version: int
    tenant_count: int
    active_reservations: int
    total_initial_microcents: int
    total_committed_microcents: int
    aggregate_totals_representable: bool

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class FinancialCertificate:
    """A snapshot's digest, totals and conservation result, plus spend since the last one.

    When the aggregate totals do not fit in i64 the totals are reported as 0,
    ``conservation_balanced`` is false and the baseline is not rotated, as in
    calybris-core.
    """

    snapshot_version: int
    ledger_digest_hex: str
    tenant_count: int
    active_reservations: int
    conservation_balanced: bool
    total_initial_microcents: int
    total_committed_microcents: int
    aggregate_totals_representable: bool
    committed_since_last_certificate: int
    #: Set for certificates stored by :meth:`Ledger.certify`: its row id and the
    #: fold of every tenant's journal chain head at the certified snapshot.
    certificate_id: int | None = None
    journal_root_hex: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def aggregate_totals(snapshot: BudgetSnapshot) -> tuple[int, int] | None:
    """Sum of initial and of committed across tenants, or None if either overflows i64."""
    total_initial = 0
    total_committed = 0
    for t in snapshot.tenants:
        total_initial += t.initial_microcents
        total_committed += t.committed_microcents
        if not (I64_MIN <= total_initial <= I64_MAX and I64_MIN <= total_committed <= I64_MAX):
            return None
    return total_initial, total_committed


def prove_conservation(source: BudgetSnapshot | _Snapshots) -> ConservationProof:
    """Issue a proof for a snapshot (or a fresh snapshot of a ledger).

    Raises :class:`~ledger.errors.ConservationError` if it does not balance or
    its totals cannot be represented: a proof of something false is worse
    than no proof.
    """
    snapshot = source if isinstance(source, BudgetSnapshot) else source.snapshot()
    status = conservation_status_for_snapshot(snapshot)
    totals = aggregate_totals(snapshot)
    if totals is None:
        status = type(status)(Balance.AGGREGATE_OVERFLOW)
    if not status.is_balanced or totals is None:
        raise errors.ConservationError(status, f"no conservation proof: {status}")
    return ConservationProof(
        ledger_digest_hex=ledger_digest(snapshot).hex(),
        snapshot_version=snapshot.version,
        tenant_count=len(snapshot.tenants),
        active_reservations=snapshot.active_reservations,
        total_initial_microcents=totals[0],
        total_committed_microcents=totals[1],
        aggregate_totals_representable=True,
    )


def certify_snapshot(
    snapshot: BudgetSnapshot, *, baseline_committed_microcents: int = 0
) -> FinancialCertificate:
    """Certificate for a snapshot, measuring new spend against a given baseline.

    Pure: it neither reads nor moves any stored baseline. Use
    :func:`certify_ledger` to certify live state and rotate the baseline.
    """
    status = conservation_status_for_snapshot(snapshot)
    totals = aggregate_totals(snapshot)
    if totals is None:
        total_initial = total_committed = since = 0
        balanced = False
    else:
        total_initial, total_committed = totals
        balanced = status.is_balanced
        since = max(total_committed - baseline_committed_microcents, 0)
    return FinancialCertificate(
        snapshot_version=snapshot.version,
        ledger_digest_hex=ledger_digest(snapshot).hex(),
        tenant_count=len(snapshot.tenants),
        active_reservations=snapshot.active_reservations,
        conservation_balanced=balanced,
        total_initial_microcents=total_initial,
        total_committed_microcents=total_committed,
        aggregate_totals_representable=totals is not None,
        committed_since_last_certificate=since,
    )


def certify_ledger(ledger: _Certifies, *, connection: Any = None) -> FinancialCertificate:
    """Snapshot the ledger, rotate its baseline monotonically, and store the certificate.

    Two processes certifying at once never count the same spend twice: the
    baseline only moves forward, under a row lock, so the
    ``committed_since_last_certificate`` values of all stored certificates add
    up to the latest certified total.
    """
    return ledger.certify(connection=connection)
