"""Outcome values returned by ledger operations.

A refused reserve is a normal business result, not an exception, exactly as in
the calybris seed where outcomes are enum variants: callers branch on
``outcome.status``. Callers who prefer exceptions call
``outcome.raise_for_status()``, which returns the outcome unchanged on success
and otherwise raises the matching :class:`~ledger.errors.RefusedError`.

Fields carry the seed's names; a field the seed's variant does not have is
``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, Self, TypeVar

from . import errors


class Status(StrEnum):
    """Every operation status. A ``StrEnum``, so ``outcome.status == "reserved"`` works."""

    RESERVED = "reserved"
    INSUFFICIENT = "insufficient"
    MISSING_TENANT = "missing_tenant"
    MISSING_RESERVATION = "missing_reservation"
    EXPOSURE_LIMIT_EXCEEDED = "exposure_limit_exceeded"
    OVERFLOW = "overflow"
    TOPPED_UP = "topped_up"
    INVALID_AMOUNT = "invalid_amount"
    COMMITTED = "committed"
    RELEASED = "released"
    OVERRUN = "overrun"
    EXPIRED = "expired"
    # periods (docs/periods.md)
    ALLOWANCE_SET = "allowance_set"
    ALLOWANCE_CLEARED = "allowance_cleared"
    # corrections (refund, adjust)
    REFUNDED = "refunded"
    ADJUSTED = "adjusted"
    UNKNOWN_COMMIT = "unknown_commit"
    REFUND_EXCEEDS_COMMIT = "refund_exceeds_commit"


_SUCCESS = frozenset(
    {Status.RESERVED, Status.TOPPED_UP, Status.COMMITTED, Status.RELEASED}
    | {Status.ALLOWANCE_SET, Status.ALLOWANCE_CLEARED}  # periods
    | {Status.REFUNDED, Status.ADJUSTED}  # corrections
)

_REFUSAL_ERRORS: dict[Status, type[errors.RefusedError]] = {
    Status.INSUFFICIENT: errors.InsufficientFundsError,
    Status.MISSING_TENANT: errors.TenantNotFound,
    Status.MISSING_RESERVATION: errors.MissingReservationError,
    Status.EXPOSURE_LIMIT_EXCEEDED: errors.ExposureLimitExceededError,
    Status.OVERFLOW: errors.LedgerOverflowError,
    Status.INVALID_AMOUNT: errors.InvalidAmountError,
    Status.OVERRUN: errors.OverrunError,
    Status.EXPIRED: errors.HoldExpiredError,
    Status.UNKNOWN_COMMIT: errors.UnknownCommitError,
    Status.REFUND_EXCEEDS_COMMIT: errors.RefundExceedsCommitError,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """Common behaviour of every operation outcome."""

    status: Status

    @property
    def ok(self) -> bool:
        """True when the operation took effect."""
        return self.status in _SUCCESS

    def raise_for_status(self) -> Self:
        """Return ``self`` if the operation took effect, else raise its typed error."""
        if self.ok:
            return self
        raise _REFUSAL_ERRORS[self.status](self)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with ``status`` as a str and unset fields left out.

        The seed's shape: ``limited_by`` (nested budgets) is left out, so a flat
        ledger's outcomes compare equal to the seed's (idempotency keys record it
        when it names another level: ledger._operations.idempotent).
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "limited_by":
                continue
            out[f.name] = str(value) if f.name == "status" else value
        return out


@dataclass(frozen=True, slots=True)
class ReserveOutcome(Outcome):
    """Result of :meth:`Ledger.try_reserve`; ``reservation_id`` is set only when reserved."""

    reservation_id: int | None = None
    remaining_microcents: int | None = None
    required_microcents: int | None = None
    current_reserved_microcents: int | None = None
    max_reserved_microcents: int | None = None
    #: On a refusal, the tenant whose level refused: the nearest one on the path
    #: to the root that did not fit (the tenant itself when it has no parent).
    #: Not compared and not in :meth:`to_dict` (the seed's shape).
    limited_by: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = Outcome.to_dict(self)
        out.setdefault("reservation_id", None)
        return out


@dataclass(frozen=True, slots=True)
class SettlementOutcome(Outcome):
    """Result of :meth:`Ledger.commit` and :meth:`Ledger.release`."""

    remaining_microcents: int | None = None
    actual_microcents: int | None = None
    returned_microcents: int | None = None
    #: On an ``overrun``/``overflow``, the nearest level that could not take it.
    limited_by: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TopUpOutcome(Outcome):
    """Result of :meth:`Ledger.top_up_tenant`."""

    added_microcents: int | None = None
    new_initial_microcents: int | None = None
    remaining_microcents: int | None = None


# ------------------------------------------------------------------ periods


@dataclass(frozen=True, slots=True)
class AllowanceOutcome(Outcome):
    """Result of :meth:`Ledger.set_allowance` and :meth:`Ledger.clear_allowance`.

    ``period_index`` is the period the tenant is in afterwards (None once
    cleared); ``remaining_microcents`` is unchanged by either call
    (docs/periods.md says why).
    """

    period_index: int | None = None
    remaining_microcents: int | None = None


class SkippedTenant(NamedTuple):
    """A tenant a sweeper could not process: passed over, never a reason to stop.

    ``error`` is the database's SQLSTATE and message (for example a tenant whose
    stored state an operator edited by hand). The tenant stays as it was; the
    sweep went on with the others.
    """

    tenant_id: str
    error: str


class Renewals(NamedTuple):
    """Result of :meth:`Ledger.renew_periods`: tenants renewed and renew entries written.

    ``skipped`` names the due tenants the sweep could not renew, with why.
    """

    tenants: int
    periods: int
    skipped: tuple[SkippedTenant, ...] = ()


class ExpiredHolds(int):
    """What :meth:`Ledger.expire_holds` returns: the number of holds expired (an int).

    ``skipped`` names the tenants whose lapsed holds could not be expired (their
    period could not be renewed), with why; the sweep expired the others'.
    """

    skipped: tuple[SkippedTenant, ...]

    def __new__(cls, count: int, skipped: tuple[SkippedTenant, ...] = ()) -> ExpiredHolds:
        made = super().__new__(cls, count)
        made.skipped = skipped
        return made


@dataclass(frozen=True, slots=True)
class PeriodSpend:
    """One budget period of one tenant (:meth:`Ledger.period_spend`).

    ``starts_at``/``ends_at`` bound the period on the tenant's current
    schedule; ``allowance_microcents`` is what its start credited (the renew
    entry's amount; the allowance it will credit if it has not been renewed
    yet); ``spent_microcents`` what holds opened in it have committed (a hold
    settles against its own period, even after it ended); ``held_microcents``
    what holds opened in it still hold; ``remaining_microcents`` the tenant's
    remaining budget if this is the period it is in, else None.
    """

    tenant_id: str
    period_index: int
    current_period_index: int
    starts_at: datetime
    ends_at: datetime
    allowance_microcents: int
    spent_microcents: int
    held_microcents: int
    remaining_microcents: int | None
    renewed: bool

    @property
    def is_current(self) -> bool:
        return self.period_index == self.current_period_index

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "period_index": self.period_index,
            "current_period_index": self.current_period_index,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "allowance_microcents": self.allowance_microcents,
            "spent_microcents": self.spent_microcents,
            "held_microcents": self.held_microcents,
            "remaining_microcents": self.remaining_microcents,
            "renewed": self.renewed,
        }


@dataclass(frozen=True, slots=True)
class RefundOutcome(Outcome):
    """Result of :meth:`Ledger.refund`.

    ``left_microcents`` is what the commit can still refund: after this
    refund when ``refunded``, or (when ``refund_exceeds_commit``) the most a
    refund could give back now. ``remaining_microcents`` and
    ``committed_microcents`` are the tenant's balances after the refund (or
    unchanged, when refused).
    """

    reservation_id: int | None = None
    refunded_microcents: int | None = None
    left_microcents: int | None = None
    remaining_microcents: int | None = None
    committed_microcents: int | None = None


@dataclass(frozen=True, slots=True)
class AdjustOutcome(Outcome):
    """Result of :meth:`Ledger.adjust`; ``adjusted_microcents`` is signed.

    When ``insufficient``, ``remaining_microcents`` is the tenant's remaining
    budget and ``required_microcents`` what a negative adjustment needs.
    """

    adjusted_microcents: int | None = None
    new_initial_microcents: int | None = None
    remaining_microcents: int | None = None
    required_microcents: int | None = None


class Balance(StrEnum):
    """Conservation check results, as in the seed's ``ConservationStatus``."""

    BALANCED = "balanced"
    VIOLATION = "violation"
    AGGREGATE_OVERFLOW = "aggregate_overflow"


@dataclass(frozen=True, slots=True)
class ConservationStatus:
    """Whether ``remaining + reserved + committed == initial`` held for every tenant.

    For a violation, ``tenant_id`` and ``delta_microcents`` name the first
    offending tenant in UTF-8 byte order, as the seed reports it.
    """

    status: Balance
    tenant_id: str | None = None
    delta_microcents: int | None = None

    @property
    def is_balanced(self) -> bool:
        return self.status is Balance.BALANCED

    def __str__(self) -> str:
        if self.status is Balance.BALANCED:
            return "conservation balanced"
        if self.status is Balance.VIOLATION:
            return (
                f"conservation violated for tenant {self.tenant_id}: "
                f"delta={self.delta_microcents} microcents"
            )
        return "aggregate ledger totals exceed i64::MAX — certificate totals cannot be represented"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": str(self.status)}
        if self.tenant_id is not None:
            out["tenant_id"] = self.tenant_id
            out["delta_microcents"] = self.delta_microcents
        return out


BALANCED = ConservationStatus(Balance.BALANCED)


OutcomeT = TypeVar("OutcomeT", bound=Outcome)


# ------------------------------------------------- rows of the SQL -> outcomes
# Each write statement answers with one row whose ``status`` column is a
# Status value (see ledger/sql/spend.sql); these turn that row into the
# seed's outcome. ``row`` is any object with attribute access.


def _limited_by(row: Any) -> Any:
    """The refusing level: a nested statement names it, a flat one refused at its own tenant.

    No truth test on the row's values: keyed calls on Citus run these mappers
    on symbolic rows (ledger/citus/keyed.py).
    """
    return row.limited_by if hasattr(row, "limited_by") else row.tenant_id


def reserve_outcome(row: Any, cost: int) -> ReserveOutcome:
    """Outcome of a ``try_reserve`` row (None: the tenant does not exist)."""
    if row is None:
        return ReserveOutcome(Status.MISSING_TENANT)
    status = Status(row.status)
    if status is Status.RESERVED:
        return ReserveOutcome(
            status, reservation_id=row.reservation_id, remaining_microcents=row.remaining
        )
    limited_by = _limited_by(row)
    if status is Status.OVERFLOW:
        return ReserveOutcome(
            status, current_reserved_microcents=row.reserved, limited_by=limited_by
        )
    if status is Status.EXPOSURE_LIMIT_EXCEEDED:
        return ReserveOutcome(
            status,
            current_reserved_microcents=row.reserved,
            max_reserved_microcents=row.cap,
            limited_by=limited_by,
        )
    return ReserveOutcome(
        status, remaining_microcents=row.remaining, required_microcents=cost, limited_by=limited_by
    )


def commit_outcome(row: Any, actual: int) -> SettlementOutcome:
    """Outcome of a ``commit`` row that is neither missing nor lapsed."""
    status = Status(row.status)
    if status is Status.COMMITTED:
        return SettlementOutcome(
            status, remaining_microcents=row.remaining, actual_microcents=actual
        )
    return SettlementOutcome(
        status,
        remaining_microcents=row.remaining,
        limited_by=_limited_by(row),
    )


def release_outcome(row: Any) -> SettlementOutcome:
    """Outcome of a ``release`` row that is neither missing nor lapsed."""
    return SettlementOutcome(
        Status.RELEASED, remaining_microcents=row.remaining, returned_microcents=row.returned
    )


def top_up_outcome(row: Any, amount: int) -> TopUpOutcome:
    """Outcome of a ``top_up`` row (None: the tenant does not exist)."""
    if row is None:
        return TopUpOutcome(Status.MISSING_TENANT)
    if row.status == "overflow":
        return TopUpOutcome(Status.OVERFLOW)
    return TopUpOutcome(
        Status.TOPPED_UP,
        added_microcents=amount,
        new_initial_microcents=row.new_initial,
        remaining_microcents=row.new_remaining,
    )


def refund_outcome(row: Any, reservation_id: int, amount: int) -> RefundOutcome:
    """Outcome of a ``refund`` row (ledger/sql/corrections.sql)."""
    status = Status(row.status)
    if status is Status.MISSING_TENANT:
        return RefundOutcome(status, reservation_id=reservation_id)
    return RefundOutcome(
        status,
        reservation_id=reservation_id,
        refunded_microcents=amount if status is Status.REFUNDED else None,
        left_microcents=row.left_microcents,
        remaining_microcents=row.remaining,
        committed_microcents=row.committed,
    )


def adjust_outcome(row: Any, amount: int) -> AdjustOutcome:
    """Outcome of an ``adjust`` row (None: the tenant does not exist)."""
    if row is None:
        return AdjustOutcome(Status.MISSING_TENANT)
    status = Status(row.status)
    if status is Status.ADJUSTED:
        return AdjustOutcome(
            status,
            adjusted_microcents=amount,
            new_initial_microcents=row.new_initial,
            remaining_microcents=row.remaining,
        )
    if status is Status.INSUFFICIENT:
        return AdjustOutcome(
            status, remaining_microcents=row.remaining, required_microcents=-amount
        )
    return AdjustOutcome(status)


def outcome_from_dict(outcome_type: type[OutcomeT], data: dict[str, Any]) -> OutcomeT:
    """An outcome recorded by :meth:`Outcome.to_dict` (idempotency keys replay these)."""
    fields_ = dict(data)
    status = Status(fields_.pop("status"))
    return outcome_type(status, **fields_)
