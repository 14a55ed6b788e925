"""The :class:`Ledger`: calybris' ``BudgetEngine`` semantics on PostgreSQL tables.

Method names and outcome fields mirror the seed so a calybris user finds
their way around; the state lives in PostgreSQL, so it survives restarts and
is shared by every process that connects.

Every method takes an optional ``connection=`` (a SQLAlchemy ``Connection``
or ``Session``). Given one, the operation joins the caller's transaction and
is undone by the caller's rollback. Without one, it runs in its own
transaction: a single autocommitted statement for the hot-path operations.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from . import _validate, errors
from ._db import Connectable, Database, EngineLike, as_engine, execute
from ._sql import Statements
from .finance import FinancialCertificate, certify_snapshot
from .outcomes import (
    Balance,
    ConservationStatus,
    ReserveOutcome,
    SettlementOutcome,
    Status,
    TopUpOutcome,
)
from .snapshot import (
    BudgetSnapshot,
    TenantLedger,
    conservation_status_for_snapshot,
    validate_for_restore,
)

__all__ = ["Connectable", "Ledger"]

_I64_MAX = _validate.I64_MAX
_CAS_ATTEMPTS = 100


class Ledger:
    """Per-tenant budgets with two-phase spend, stored in one PostgreSQL schema.

    ``Ledger(engine_or_url, schema="ledger")``. Pass an existing SQLAlchemy
    engine to share its pool; pass a URL and the ledger creates (and
    :meth:`close` disposes of) its own. The schema must have been migrated
    with :func:`ledger.migrate`.
    """

    def __init__(self, engine_or_url: EngineLike, schema: str = "ledger") -> None:
        self.schema = _validate.schema_name(schema)
        self.engine, self._owns_engine = as_engine(engine_or_url)
        self._db = Database(self.engine)
        self._sql = Statements.for_schema(self.schema)

    def close(self) -> None:
        """Dispose of the engine if the ledger created it."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"Ledger({url!r}, schema={self.schema!r})"

    # ------------------------------------------------------------- tenants

    def ensure_tenant(
        self, tenant_id: str, budget_microcents: int, *, connection: Connectable | None = None
    ) -> bool:
        """Create a tenant with a budget; a no-op if it exists. Returns True if created.

        Deviation from the seed: a negative budget raises ``ValueError``
        instead of being silently ignored, because a typo should not look
        like success.
        """
        tenant_id = _validate.tenant_id(tenant_id)
        budget = _validate.amount("budget_microcents", budget_microcents)
        if budget < 0:
            raise errors.AmountValueError(
                f"budget_microcents must be >= 0, got {budget}; to add funds use top_up_tenant()"
            )
        params = {"tenant_id": tenant_id, "budget": budget}
        rows = self._db.run(connection, lambda c: execute(c, self._sql.ensure_tenant, params))
        return bool(rows[0].created)

    def top_up_tenant(
        self, tenant_id: str, amount_microcents: int, *, connection: Connectable | None = None
    ) -> TopUpOutcome:
        """Add funds: ``initial`` and ``remaining`` grow together, lifetime spend is kept."""
        tenant_id = _validate.tenant_id(tenant_id)
        amount = _validate.amount("amount_microcents", amount_microcents)
        if amount <= 0:
            return TopUpOutcome(Status.INVALID_AMOUNT)
        row = self._cas(connection, self._sql.top_up, {"tenant_id": tenant_id, "amount": amount})
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

    def set_max_reserved_microcents(
        self, tenant_id: str, max_microcents: int, *, connection: Connectable | None = None
    ) -> None:
        """Cap the total of a tenant's open holds; ``0`` (or less) removes the cap.

        Deviation from the seed: an unknown tenant raises
        :class:`~ledger.errors.TenantNotFound` instead of storing a cap for a
        tenant that does not exist yet.
        """
        tenant_id = _validate.tenant_id(tenant_id)
        cap = max(_validate.amount("max_microcents", max_microcents), 0)
        params = {"tenant_id": tenant_id, "cap": cap}
        rows = self._db.run(connection, lambda c: execute(c, self._sql.set_cap, params))
        if not rows:
            raise errors.TenantNotFound(tenant_id)

    # --------------------------------------------------------- two-phase spend

    def try_reserve(
        self, tenant_id: str, cost_microcents: int, *, connection: Connectable | None = None
    ) -> ReserveOutcome:
        """Place a hold of ``cost_microcents`` if the balance and the cap allow it.

        Checks run in the seed's order: non-positive cost (insufficient),
        reserved-total overflow, exposure cap, then balance.
        """
        tenant_id = _validate.tenant_id(tenant_id)
        cost = _validate.amount("cost_microcents", cost_microcents)
        if cost <= 0:
            return ReserveOutcome(
                Status.INSUFFICIENT, remaining_microcents=0, required_microcents=cost
            )
        row = self._cas(connection, self._sql.try_reserve, {"tenant_id": tenant_id, "amount": cost})
        if row is None:
            return ReserveOutcome(Status.MISSING_TENANT)
        status = Status(row.status)
        if status is Status.RESERVED:
            return ReserveOutcome(
                status, reservation_id=row.reservation_id, remaining_microcents=row.remaining
            )
        if status is Status.OVERFLOW:
            return ReserveOutcome(status, current_reserved_microcents=row.reserved)
        if status is Status.EXPOSURE_LIMIT_EXCEEDED:
            return ReserveOutcome(
                status, current_reserved_microcents=row.reserved, max_reserved_microcents=row.cap
            )
        return ReserveOutcome(status, remaining_microcents=row.remaining, required_microcents=cost)

    def commit(
        self,
        reservation_id: int,
        actual_microcents: int,
        *,
        tenant_id: str | None = None,
        connection: Connectable | None = None,
    ) -> SettlementOutcome:
        """Settle a hold at its actual cost: refund the surplus, or debit an affordable overrun.

        An unaffordable overrun returns ``overrun`` and keeps the hold with
        nothing refunded; a lifetime-spend overflow returns ``overflow`` and
        also keeps the hold. Passing ``tenant_id`` lets the lookup use the
        tenant key (and, on a sharded deployment, a single shard).
        """
        rid = _validate.reservation_id(reservation_id)
        actual = _validate.amount("actual_microcents", actual_microcents)
        hint = None if tenant_id is None else _validate.tenant_id(tenant_id)
        if actual < 0:
            return SettlementOutcome(Status.INVALID_AMOUNT)
        if rid > _I64_MAX:
            return SettlementOutcome(Status.MISSING_RESERVATION)
        params: dict[str, Any] = {"reservation_id": rid, "actual": actual, "tenant_id": hint}
        stmt = self._sql.commit if hint is None else self._sql.commit_for_tenant
        row = self._cas(connection, stmt, params)
        if row is None:
            return SettlementOutcome(Status.MISSING_RESERVATION)
        status = Status(row.status)
        if status is Status.COMMITTED:
            return SettlementOutcome(
                status, remaining_microcents=row.remaining, actual_microcents=actual
            )
        return SettlementOutcome(status, remaining_microcents=row.remaining)

    def release(
        self,
        reservation_id: int,
        *,
        tenant_id: str | None = None,
        connection: Connectable | None = None,
    ) -> SettlementOutcome:
        """Cancel a hold, returning its full amount to ``remaining``."""
        rid = _validate.reservation_id(reservation_id)
        hint = None if tenant_id is None else _validate.tenant_id(tenant_id)
        if rid > _I64_MAX:
            return SettlementOutcome(Status.MISSING_RESERVATION)
        params: dict[str, Any] = {"reservation_id": rid, "tenant_id": hint}
        stmt = self._sql.release if hint is None else self._sql.release_for_tenant
        rows = self._db.run(connection, lambda c: execute(c, stmt, params))
        if not rows:
            return SettlementOutcome(Status.MISSING_RESERVATION)
        return SettlementOutcome(
            Status.RELEASED,
            remaining_microcents=rows[0].remaining,
            returned_microcents=rows[0].returned,
        )

    def _cas(self, connection: Connectable | None, statement: Any, params: dict[str, Any]) -> Any:
        """Run a compare-and-swap statement; re-run it while its probe answers 'retry'.

        'retry' means the row changed between the refused UPDATE and the
        probe that explains the refusal, so neither answer is current. Each
        retry implies another writer made progress, so the loop terminates.
        """
        for _ in range(_CAS_ATTEMPTS):
            rows = self._db.run(connection, lambda c: execute(c, statement, params))
            if not rows:
                return None
            if rows[0].status != "retry":
                return rows[0]
        raise errors.RetryableError(
            f"the tenant row changed {_CAS_ATTEMPTS} times while this operation was being "
            "decided; retry it"
        )

    # --------------------------------------------------------------- reads

    def tenant(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> TenantLedger | None:
        """One tenant's balances, or None if it does not exist."""
        row = self._tenant_row(tenant_id, connection)
        if row is None:
            return None
        return TenantLedger(
            tenant_id,
            row.initial_microcents,
            row.remaining_microcents,
            row.reserved_microcents,
            row.committed_microcents,
        )

    def _tenant_row(self, tenant_id: str, connection: Connectable | None) -> Any:
        tenant_id = _validate.tenant_id(tenant_id)
        rows = self._db.run(
            connection, lambda c: execute(c, self._sql.tenant, {"tenant_id": tenant_id})
        )
        return rows[0] if rows else None

    def remaining_microcents(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> int | None:
        row = self._tenant_row(tenant_id, connection)
        return None if row is None else int(row.remaining_microcents)

    def reserved_microcents(self, tenant_id: str, *, connection: Connectable | None = None) -> int:
        """Sum of open holds; 0 for an unknown tenant, as in the seed."""
        row = self._tenant_row(tenant_id, connection)
        return 0 if row is None else int(row.reserved_microcents)

    def committed_microcents(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> int | None:
        """Lifetime spend (monotonic), not the amount currently held."""
        row = self._tenant_row(tenant_id, connection)
        return None if row is None else int(row.committed_microcents)

    def initial_microcents(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> int | None:
        """Total ever granted: the creation budget plus every top-up."""
        row = self._tenant_row(tenant_id, connection)
        return None if row is None else int(row.initial_microcents)

    def max_reserved_microcents(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> int | None:
        """The cap on open holds (0 = none), or None for an unknown tenant."""
        row = self._tenant_row(tenant_id, connection)
        return None if row is None else int(row.max_reserved_microcents)

    def _counts(self, connection: Connectable | None) -> Any:
        return self._db.run(connection, lambda c: execute(c, self._sql.counts, {}))[0]

    def tenant_count(self, *, connection: Connectable | None = None) -> int:
        return int(self._counts(connection).tenants)

    def active_reservations(self, *, connection: Connectable | None = None) -> int:
        """Number of open holds across all tenants."""
        return int(self._counts(connection).reservations)

    def total_committed_microcents(self, *, connection: Connectable | None = None) -> int:
        """Lifetime spend summed over tenants, exactly (a Python int, never wrapped)."""
        return int(self._counts(connection).committed)

    def committed_since_last_certificate(self, *, connection: Connectable | None = None) -> int:
        """Spend since the last certificate's baseline (negative after restoring an older state)."""
        counts = self._counts(connection)
        delta = int(counts.committed) - int(counts.baseline)
        return max(min(delta, _I64_MAX), _validate.I64_MIN)

    def snapshot_version(self, *, connection: Connectable | None = None) -> int:
        """Version of the latest snapshot (0 before the first one)."""
        rows = self._db.run(connection, lambda c: execute(c, self._sql.snapshot_version, {}))
        return int(rows[0].version)

    # ------------------------------------------------------------ snapshots

    def snapshot(self, *, connection: Connectable | None = None) -> BudgetSnapshot:
        """A consistent, versioned view of every tenant and the open-hold count.

        Everything is read by a single statement in a REPEATABLE READ
        transaction, so the snapshot balances even while writers are busy.
        """
        rows = self._db.run(
            connection, lambda c: execute(c, self._sql.snapshot, {}), "REPEATABLE READ"
        )
        return _snapshot_from_rows(rows)

    def verify_conservation(self, *, connection: Connectable | None = None) -> ConservationStatus:
        """Check the invariant inside PostgreSQL, returning the first offending tenant.

        Like the seed it advances the snapshot version. The scan runs in the
        database, so its memory use does not grow with the number of tenants.
        """
        rows = self._db.run(
            connection, lambda c: execute(c, self._sql.first_unbalanced, {}), "REPEATABLE READ"
        )
        row = rows[0]
        if row.tenant_id is None:
            return ConservationStatus(Balance.BALANCED)
        probe = BudgetSnapshot(
            version=int(row.version),
            tenants=(
                TenantLedger(
                    row.tenant_id,
                    int(row.initial_microcents),
                    int(row.remaining_microcents),
                    int(row.reserved_microcents),
                    int(row.committed_microcents),
                ),
            ),
            active_reservations=0,
        )
        return conservation_status_for_snapshot(probe)

    def restore_from_snapshot(
        self, snapshot: BudgetSnapshot, *, connection: Connectable | None = None
    ) -> None:
        """Replace every tenant's state with the snapshot's, atomically.

        Validation follows the seed exactly and happens before anything is
        touched. The tenant and hold tables are locked for the duration, so
        it is safe while other processes work: they wait, then see either
        the old state or the restored one, never a mix. Open holds are
        voided; caps are kept.
        """
        if not isinstance(snapshot, BudgetSnapshot):
            raise errors.MalformedSnapshot(
                f"restore_from_snapshot needs a BudgetSnapshot, got {type(snapshot).__name__}; "
                "load JSON with BudgetSnapshot.from_json()"
            )
        checked = BudgetSnapshot.from_dict(snapshot.to_dict())
        validate_for_restore(checked)
        if checked.version > _I64_MAX:
            raise errors.AmountValueError(
                f"snapshot version {checked.version} exceeds the largest version PostgreSQL's "
                f"bigint sequence can hold ({_I64_MAX})"
            )
        tenants = checked.tenants
        ids = [t.tenant_id for t in tenants]
        params = {
            "ids": ids,
            "initials": [t.initial_microcents for t in tenants],
            "remainings": [t.remaining_microcents for t in tenants],
            "committeds": [t.committed_microcents for t in tenants],
            "version": checked.version,
        }
        sql = self._sql

        def work(c: Connection) -> None:
            execute(c, sql.restore_lock, {})
            execute(c, sql.restore_park_caps, params)
            execute(c, sql.restore_clear_holds, {})
            execute(c, sql.restore_drop_tenants, params)
            execute(c, sql.restore_upsert, params)
            execute(c, sql.restore_unpark_caps, params)
            # Sequences are not transactional, so this goes last.
            execute(c, sql.restore_version, params)

        self._db.run(connection, work, "READ COMMITTED")

    # --------------------------------------------------------- certificates

    def certify(self, *, connection: Connectable | None = None) -> FinancialCertificate:
        """Snapshot, certify, rotate the baseline forward and store the certificate.

        The snapshot and the rotation run in two transactions (when we own
        them): the snapshot in REPEATABLE READ, the rotation as one
        statement that locks the baseline row, so concurrent certifiers
        serialise on it instead of failing with serialization errors.
        """
        snapshot = self.snapshot(connection=connection)
        draft = certify_snapshot(snapshot)
        params = {
            "version": draft.snapshot_version,
            "digest": bytes.fromhex(draft.ledger_digest_hex),
            "tenant_count": draft.tenant_count,
            "active": draft.active_reservations,
            "balanced": draft.conservation_balanced,
            "total_initial": draft.total_initial_microcents,
            "total_committed": draft.total_committed_microcents,
            "representable": draft.aggregate_totals_representable,
        }
        rows = self._db.run(connection, lambda c: execute(c, self._sql.certify, params))
        since = int(rows[0].committed_since_last_certificate)
        return FinancialCertificate(
            **{**draft.to_dict(), "committed_since_last_certificate": since}
        )


def _snapshot_from_rows(rows: list[Any]) -> BudgetSnapshot:
    first = rows[0]
    tenants = tuple(
        TenantLedger(
            r.tenant_id,
            r.initial_microcents,
            r.remaining_microcents,
            r.reserved_microcents,
            r.committed_microcents,
        )
        for r in rows
        if r.tenant_id is not None
    )
    return BudgetSnapshot(
        version=int(first.version), tenants=tenants, active_reservations=int(first.active)
    )
