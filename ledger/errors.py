"""Every exception the ledger raises.

Each class's docstring is its default message, so ``raise TenantNotFound()``
still says something useful. Input errors also subclass the matching builtin
(``TypeError``/``ValueError``) so generic handlers keep working, and database
errors keep the driver's exception as ``__cause__`` for debugging, while the
message tells the caller what to do next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .outcomes import ConservationStatus, Outcome


class LedgerError(Exception):
    """The ledger refused or failed an operation."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


# --------------------------------------------------------------------- input


class InputError(LedgerError, ValueError):
    """An argument is out of range or malformed; nothing was changed."""


class AmountTypeError(LedgerError, TypeError):
    """An amount or id must be a plain int (not bool, float, Decimal or str)."""


class AmountValueError(InputError):
    """An amount does not fit the ledger's signed 64-bit microcent range."""


class InvalidTenantId(InputError):
    """A tenant id must be a non-empty str of at most 255 UTF-8 bytes with no NUL."""


class InvalidSchemaName(InputError):
    """The schema name must be a plain lowercase SQL identifier."""


class SchemaOccupied(InputError):
    """The schema holds tables the ledger did not create (no ledger revision recorded).

    Migrating there would mix the ledger's tables with someone else's: pick
    another schema (the default, ``ledger``, is the usual choice).
    """


class MalformedSnapshot(InputError):
    """A snapshot document is not shaped like a ledger snapshot."""


# ------------------------------------------------------------------- restore


class RestoreError(InputError):
    """The snapshot cannot be restored; the ledger was left unchanged."""


class ActiveReservations(RestoreError):
    """Snapshots taken with open holds cannot be restored: settle or release them first."""

    def __init__(self, count: int) -> None:
        self.count = count
        super().__init__(
            f"cannot restore snapshot with {count} active reservations; "
            "settle or release every hold, then take a new snapshot"
        )


class GhostReservation(RestoreError):
    """A tenant shows a reserved amount although the snapshot has no open holds."""

    def __init__(self, tenant_id: str, reserved_microcents: int) -> None:
        self.tenant_id = tenant_id
        self.reserved_microcents = reserved_microcents
        super().__init__(
            f"tenant {tenant_id} has reserved_microcents={reserved_microcents} "
            "with no active reservations"
        )


class NegativeLedgerField(RestoreError):
    """A ledger amount in the snapshot is negative."""

    def __init__(self, tenant_id: str, field: str, value: int) -> None:
        self.tenant_id = tenant_id
        self.field = field
        self.value = value
        super().__init__(f"tenant {tenant_id} has negative {field}: {value}")


class ConservationError(RestoreError):
    """The books do not balance: remaining + reserved + committed != initial.

    Raised when restoring a snapshot that does not balance (the seed's
    ``RestoreError::ConservationViolation``) and when a conservation proof is
    asked for a state that does not balance or whose totals overflow; nothing
    was restored, proved or stored. ``status`` names the first offending tenant.
    """

    def __init__(self, status: ConservationStatus, message: str | None = None) -> None:
        self.status = status
        super().__init__(message or f"does not balance: {status}")


#: The seed's name for the restore variant; the same class.
ConservationViolation = ConservationError


class DuplicateTenant(RestoreError):
    """The same tenant id appears twice in the snapshot."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        super().__init__(f"duplicate tenant_id in snapshot: {tenant_id}")


# ------------------------------------------------------------------ outcomes


class TreeError(InputError):
    """A change to the tenant tree was refused; nothing changed (docs/nested.md)."""


class UnknownParent(TreeError, LookupError):
    """The parent named for a tenant does not exist; create it first."""


class TreeCycle(TreeError):
    """The move would put a tenant inside its own subtree."""


class TreeTooDeep(TreeError):
    """The move or the new tenant would make a tree deeper than ledger.MAX_TREE_DEPTH levels."""


class NestedNotSupported(LedgerError):
    """Nested budgets are not available on this schema (a Citus-distributed ledger)."""


class RefusedError(LedgerError):
    """The ledger refused the operation; ``.outcome`` holds the details."""

    def __init__(self, outcome: Outcome, message: str | None = None) -> None:
        self.outcome = outcome
        super().__init__(message or f"{type(self).__doc__}: {outcome!r}")


class InsufficientFundsError(RefusedError):
    """Not enough remaining budget"""


class TenantNotFound(RefusedError, LookupError):
    """The tenant does not exist; create it with ensure_tenant() first."""

    def __init__(self, outcome: Outcome, *, tenant_id: str | None = None) -> None:
        self.tenant_id = tenant_id
        named = "" if tenant_id is None else f" {tenant_id!r}"
        super().__init__(
            outcome, f"tenant{named} does not exist; create it with ensure_tenant() first"
        )


class MissingReservationError(RefusedError):
    """No such open reservation (already settled, released, or never made)"""


class ExposureLimitExceededError(RefusedError):
    """The tenant's cap on open holds would be exceeded"""


class LedgerOverflowError(RefusedError):
    """The result would not fit in a signed 64-bit amount"""


class InvalidAmountError(RefusedError):
    """The amount is not valid for this operation"""


class OverrunError(RefusedError):
    """The actual cost exceeds the hold and the difference is not affordable; the hold is kept"""


class HoldExpiredError(RefusedError):
    """The hold passed its deadline and was expired; its amount went back to the tenant"""


class NoAllowance(InputError, LookupError):
    """The tenant has no recurring allowance, so it has no budget periods."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        super().__init__(
            f"tenant {tenant_id!r} has no recurring allowance; give it one with "
            "set_allowance() (or `ledger allowance set`) first"
        )


class UnknownCommitError(RefusedError, LookupError):
    """No commit of this tenant has that reservation id; nothing was refunded"""


class RefundExceedsCommitError(RefusedError):
    """The refund exceeds what the commit has left after earlier refunds; nothing was refunded"""


class IdempotencyConflict(LedgerError):
    """The idempotency key was already used for a different request."""

    def __init__(self, tenant_id: str, key: str) -> None:
        self.tenant_id = tenant_id
        self.key = key
        super().__init__(
            f"idempotency key {key!r} of tenant {tenant_id!r} was already used for a different "
            "request; use a new key for a new request"
        )


class BatchRefused(LedgerError):
    """An all-or-nothing batch had a refused item, so none of it was applied."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes
        refused = [i for i, o in enumerate(outcomes) if not o.ok]
        super().__init__(
            f"all-or-nothing batch rolled back: items {refused[:10]} were refused "
            f"({len(refused)} of {len(outcomes)}); see .outcomes"
        )


# ------------------------------------------------------------------ database


class DatabaseError(LedgerError):
    """PostgreSQL reported an error; the operation was not applied."""

    def __init__(self, message: str | None = None, *, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate
        super().__init__(message)


class RetryableError(DatabaseError):
    """A transient conflict rolled the operation back; it is safe to retry the transaction."""


class SerializationConflict(RetryableError):
    """A concurrent transaction changed the same row; retry the whole transaction."""


class DeadlockDetected(RetryableError):
    """PostgreSQL broke a deadlock by aborting this transaction; retry it.

    Touch tenants in a consistent order inside one transaction to avoid this.
    """


class LockTimeout(RetryableError):
    """A row lock was not granted within lock_timeout; retry later or raise the timeout."""


class StatementTimeout(RetryableError):
    """The statement ran past statement_timeout and was cancelled; nothing was applied."""


class ConstraintViolation(DatabaseError):
    """A database constraint refused the write."""

    def __init__(
        self, constraint: str | None, message: str | None = None, *, sqlstate: str = "23514"
    ) -> None:
        self.constraint = constraint
        super().__init__(
            message or f"database constraint {constraint!r} refused the write; nothing was applied",
            sqlstate=sqlstate,
        )


class PermissionDenied(DatabaseError):
    """The database role may not do this (missing grant, or a row-level security policy).

    See docs/journal.md for the grants the application role needs.
    """


class TenantScopedRole(PermissionDenied):
    """A role confined to one tenant may not run ledger-wide operations; nothing was done."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(
            f"{operation} acts on the whole ledger, but this role is confined to one tenant by "
            "row-level security (ledger roles isolate); run it as the application role "
            "(ledger_app) or the owner",
            sqlstate="42501",
        )


class ReadOnlyDatabase(DatabaseError):
    """This server only reads (a hot standby, or a read-only session); nothing was written.

    Send writes to the primary: name every server in the URL with
    ``target_session_attrs=read-write`` (docs/deployment.md).
    """


class SchemaNotMigrated(DatabaseError):
    """The ledger tables are missing: run ledger.migrate(url) (or `ledger migrate`) first."""


class ConnectionLost(DatabaseError):
    """The connection to PostgreSQL failed.

    If it failed after the statement was sent, the outcome is unknown: read the
    tenant's balances before retrying.
    """


class CouldNotConnect(ConnectionLost):
    """No connection to PostgreSQL could be made, so nothing was sent and nothing changed.

    Check the URL (host, port, database name, role and password) and that the
    server runs and accepts connections from here. A subclass of
    :class:`ConnectionLost`, so code that retries a lost connection retries
    this too.
    """


# --------------------------------------------------------------- environment


class MissingExtra(LedgerError, ImportError):
    """An optional dependency is not installed: pip install 'sql-ledger[cli]'.

    The base install is the library alone; the command line and the embedded
    PostgreSQL server come with an extra. Subclasses ``ImportError`` so code
    that already handles a missing module keeps working.
    """

    def __init__(self, module: str, *, feature: str, extra: str = "cli") -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{feature} needs the {module!r} package, which is not installed; "
            f"install it with: pip install 'sql-ledger[{extra}]'"
        )
        self.name = module


class CitusNotAvailable(DatabaseError):
    """This server is not a Citus coordinator, so there is nothing to distribute.

    On plain PostgreSQL the ledger needs no distribution step. On Citus, connect
    to the coordinator, in the database where ``CREATE EXTENSION citus`` ran.
    """


class DistributionConflict(DatabaseError):
    """A ledger table is already distributed in a way the ledger cannot use."""
