"""Snapshots: immutable, versioned point-in-time views of every tenant.

These are plain values with no database in sight, so auditors can load one
from JSON, check it, digest it and certify it offline. The checks mirror the
seed's ``conservation_status_for_snapshot`` and
``validate_snapshot_for_restore`` line for line, including the i64 overflow
rules, because a snapshot is also the input to ``restore_from_snapshot``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _validate, errors
from .outcomes import BALANCED, Balance, ConservationStatus

_I64_MIN = _validate.I64_MIN
_I64_MAX = _validate.I64_MAX

_TENANT_FIELDS = (
    "tenant_id",
    "initial_microcents",
    "remaining_microcents",
    "reserved_microcents",
    "committed_microcents",
)
_SNAPSHOT_FIELDS = ("version", "active_reservations", "tenants")


def _i64(value: int) -> bool:
    return _I64_MIN <= value <= _I64_MAX


@dataclass(frozen=True, slots=True)
class TenantLedger:
    """One tenant's balances; ``committed_microcents`` is lifetime spend, not open holds."""

    tenant_id: str
    initial_microcents: int
    remaining_microcents: int
    reserved_microcents: int
    committed_microcents: int
    #: The tenant's parent (nested budgets), None for a root. Not in the digest.
    parent_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _TENANT_FIELDS}
        if self.parent_id is not None:
            out["parent_id"] = self.parent_id
        return out


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """All tenants sorted by the UTF-8 bytes of their ids, plus the open-hold count."""

    version: int
    tenants: tuple[TenantLedger, ...]
    active_reservations: int

    def __post_init__(self) -> None:
        # Accept any iterable but store a tuple so the snapshot stays hashable/immutable.
        if not isinstance(self.tenants, tuple):
            object.__setattr__(self, "tenants", tuple(self.tenants))

    # -- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "active_reservations": self.active_reservations,
            "tenants": [t.to_dict() for t in self.tenants],
        }

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: object) -> BudgetSnapshot:
        """Build a snapshot from untrusted data, refusing anything off-shape.

        Only structure and ranges are checked here; the seed's restore rules
        (duplicates, ghosts, conservation) are :func:`validate_for_restore`'s job,
        so a damaged snapshot can still be loaded and inspected.
        """
        if not isinstance(data, Mapping):
            raise errors.MalformedSnapshot(
                f"a snapshot must be a JSON object, got {type(data).__name__}"
            )
        _exact_keys("snapshot", data, _SNAPSHOT_FIELDS)
        version = _whole("version", data["version"], 0, _validate.U64_MAX)
        active = _whole("active_reservations", data["active_reservations"], 0, _validate.U64_MAX)
        raw_tenants = data["tenants"]
        if not isinstance(raw_tenants, list):
            raise errors.MalformedSnapshot("snapshot 'tenants' must be a list")
        tenants = []
        for index, raw in enumerate(raw_tenants):
            where = f"tenants[{index}]"
            if not isinstance(raw, Mapping):
                raise errors.MalformedSnapshot(f"{where} must be an object")
            # parent_id (nested budgets) is present only for a tenant with a parent,
            # so a flat snapshot's JSON is exactly what it always was.
            _exact_keys(where, raw, _TENANT_FIELDS + (("parent_id",) if "parent_id" in raw else ()))
            try:
                tenant_id = _validate.tenant_id(raw["tenant_id"])
                parent = raw.get("parent_id")
                parent_id = None if parent is None else _validate.tenant_id(parent)
            except errors.InvalidTenantId as exc:
                raise errors.MalformedSnapshot(f"{where}: {exc}") from exc
            amounts = [
                _whole(f"{where}.{name}", raw[name], _I64_MIN, _I64_MAX)
                for name in _TENANT_FIELDS[1:]
            ]
            tenants.append(
                TenantLedger(tenant_id, amounts[0], amounts[1], amounts[2], amounts[3], parent_id)
            )
        return cls(version=version, tenants=tuple(tenants), active_reservations=active)

    @classmethod
    def from_json(cls, text: str | bytes) -> BudgetSnapshot:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise errors.MalformedSnapshot(f"snapshot is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _exact_keys(where: str, data: Mapping[Any, Any], expected: Iterable[str]) -> None:
    expected_set = set(expected)
    keys = set(data.keys())
    missing = expected_set - keys
    extra = keys - expected_set
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {sorted(missing)}")
        if extra:
            parts.append(f"unexpected {sorted(map(str, extra))}")
        raise errors.MalformedSnapshot(f"{where}: " + ", ".join(parts))


def _whole(name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:
        raise errors.MalformedSnapshot(
            f"{name} must be an integer, got {type(value).__name__} {value!r}"
        )
    if not low <= value <= high:
        raise errors.MalformedSnapshot(f"{name}={value} is outside {low}..{high}")
    return value


def conservation_status_for_snapshot(snapshot: BudgetSnapshot) -> ConservationStatus:
    """Check the invariant on a frozen snapshot, with the seed's i64 overflow semantics.

    The first tenant (in snapshot order) that fails decides the result; a
    per-tenant sum that overflows i64 reports ``aggregate_overflow``.
    """
    for ledger in snapshot.tenants:
        total = ledger.remaining_microcents + ledger.reserved_microcents
        if not _i64(total):
            return ConservationStatus(Balance.AGGREGATE_OVERFLOW)
        total += ledger.committed_microcents
        if not _i64(total):
            return ConservationStatus(Balance.AGGREGATE_OVERFLOW)
        if total != ledger.initial_microcents:
            delta = total - ledger.initial_microcents
            if not _i64(delta):
                return ConservationStatus(Balance.AGGREGATE_OVERFLOW)
            return ConservationStatus(Balance.VIOLATION, ledger.tenant_id, delta)
        if ledger.remaining_microcents < 0:
            return ConservationStatus(
                Balance.VIOLATION, ledger.tenant_id, ledger.remaining_microcents
            )
    return BALANCED


def validate_for_restore(snapshot: BudgetSnapshot) -> None:
    """Raise the seed's ``RestoreError`` variants, checked in the seed's order."""
    if snapshot.active_reservations > 0:
        raise errors.ActiveReservations(snapshot.active_reservations)
    seen: set[str] = set()
    for ledger in snapshot.tenants:
        if ledger.tenant_id in seen:
            raise errors.DuplicateTenant(ledger.tenant_id)
        seen.add(ledger.tenant_id)
        if ledger.reserved_microcents != 0:
            raise errors.GhostReservation(ledger.tenant_id, ledger.reserved_microcents)
        for field in ("remaining_microcents", "initial_microcents", "committed_microcents"):
            value = getattr(ledger, field)
            if value < 0:
                raise errors.NegativeLedgerField(ledger.tenant_id, field, value)
    status = conservation_status_for_snapshot(snapshot)
    if not status.is_balanced:
        raise errors.ConservationError(status, f"snapshot failed conservation: {status}")


def sort_key(tenant_id: str) -> bytes:
    """The seed sorts tenants by the UTF-8 bytes of their ids, not by any collation."""
    return tenant_id.encode("utf-8")
