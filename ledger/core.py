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

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection

from . import _batch as batch
from . import _validate, errors
from . import _verify as verify
from ._batch import CommitItem, ReleaseItem, ReserveItem
from ._db import Connectable, Database, execute
from ._engine import EngineLike, as_engine
from ._sql import Statements
from .finance import FinancialCertificate, certify_snapshot
from .journal import JournalReport, RootHasher
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

OutcomeT = TypeVar("OutcomeT", ReserveOutcome, SettlementOutcome, TopUpOutcome)

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
        params = {"tenant_id": tenant_id, "budget": budget, "ikey": None}
        rows = self._db.run(connection, lambda c: execute(c, self._sql.ensure_tenant, params))
        return bool(rows[0].created)

    def top_up_tenant(
        self,
        tenant_id: str,
        amount_microcents: int,
        *,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> TopUpOutcome:
        """Add funds: ``initial`` and ``remaining`` grow together, lifetime spend is kept."""
        tenant_id = _validate.tenant_id(tenant_id)
        amount = _validate.amount("amount_microcents", amount_microcents)
        key = _validate.idempotency_key(idempotency_key)

        def run(conn: Connectable | None) -> TopUpOutcome:
            if amount <= 0:
                return TopUpOutcome(Status.INVALID_AMOUNT)
            params = {"tenant_id": tenant_id, "amount": amount, "ikey": key}
            row = self._cas(conn, self._sql.top_up, params)
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

        request = {"op": "top_up", "amount": amount}
        return self._once(connection, tenant_id, key, request, TopUpOutcome, run)

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
        params = {"tenant_id": tenant_id, "cap": cap, "ikey": None}
        rows = self._db.run(connection, lambda c: execute(c, self._sql.set_cap, params))
        if not rows:
            raise errors.TenantNotFound(tenant_id)

    # --------------------------------------------------------- two-phase spend

    def try_reserve(
        self,
        tenant_id: str,
        cost_microcents: int,
        *,
        ttl: timedelta | int | None = None,
        expires_at: datetime | None = None,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> ReserveOutcome:
        """Place a hold of ``cost_microcents`` if the balance and the cap allow it.

        Checks run in the seed's order: non-positive cost (insufficient),
        reserved-total overflow, exposure cap, then balance.

        ``ttl`` (a ``timedelta`` or whole seconds, measured on the database
        clock) or ``expires_at`` (an aware ``datetime``) make the hold expire:
        its amount then returns to ``remaining`` through an ``expire`` journal
        entry, by :meth:`expire_holds` or lazily, and a tenant's lapsed holds
        never cause a reserve to be refused.
        """
        tenant_id = _validate.tenant_id(tenant_id)
        cost = _validate.amount("cost_microcents", cost_microcents)
        ttl_us, deadline = _validate.expiry(ttl, expires_at)
        key = _validate.idempotency_key(idempotency_key)

        def run(conn: Connectable | None) -> ReserveOutcome:
            if cost <= 0:
                return ReserveOutcome(
                    Status.INSUFFICIENT, remaining_microcents=0, required_microcents=cost
                )
            params = {
                "tenant_id": tenant_id,
                "amount": cost,
                "ttl_us": ttl_us,
                "expires_at": deadline,
                "ikey": key,
            }
            row = self._cas(conn, self._sql.try_reserve, params)
            if row is not None and row.lapsed_holds:
                # Lapsed holds must never block a reserve: expire them, decide again.
                while self._expire_one(conn, self._sql.expire_for_tenant, tenant_id=tenant_id):
                    pass
                row = self._cas(conn, self._sql.try_reserve, params)
            return reserve_outcome(row, cost)

        request = {
            "op": "reserve",
            "amount": cost,
            "ttl_us": ttl_us,
            "expires_at": None if deadline is None else deadline.isoformat(),
        }
        return self._once(connection, tenant_id, key, request, ReserveOutcome, run)

    def commit(
        self,
        reservation_id: int,
        actual_microcents: int,
        *,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> SettlementOutcome:
        """Settle a hold at its actual cost: refund the surplus, or debit an affordable overrun.

        An unaffordable overrun returns ``overrun`` and keeps the hold with
        nothing refunded; a lifetime-spend overflow returns ``overflow`` and
        also keeps the hold. A hold past its deadline is expired instead and
        the answer is ``expired``. Passing ``tenant_id`` lets the lookup use
        the tenant key (and, on a sharded deployment, a single shard); it is
        required with ``idempotency_key``, since keys are scoped per tenant.
        """
        rid = _validate.reservation_id(reservation_id)
        actual = _validate.amount("actual_microcents", actual_microcents)
        hint = None if tenant_id is None else _validate.tenant_id(tenant_id)
        key = _validate.idempotency_key(idempotency_key)
        scope = _key_scope(hint, key)

        def run(conn: Connectable | None) -> SettlementOutcome:
            if actual < 0:
                return SettlementOutcome(Status.INVALID_AMOUNT)
            if rid > _I64_MAX:
                return SettlementOutcome(Status.MISSING_RESERVATION)
            params = {"reservation_id": rid, "actual": actual, "tenant_id": hint, "ikey": key}
            stmt = self._sql.commit if hint is None else self._sql.commit_for_tenant
            row = self._cas(conn, stmt, params)
            if row is None:
                return self._missing(conn, rid)
            if row.status == "lapsed":
                return self._expire_lapsed(conn, rid)
            return commit_outcome(row, actual)

        request = {"op": "commit", "reservation_id": rid, "actual": actual}
        return self._once(connection, scope, key, request, SettlementOutcome, run)

    def release(
        self,
        reservation_id: int,
        *,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> SettlementOutcome:
        """Cancel a hold, returning its full amount to ``remaining``."""
        rid = _validate.reservation_id(reservation_id)
        hint = None if tenant_id is None else _validate.tenant_id(tenant_id)
        key = _validate.idempotency_key(idempotency_key)
        scope = _key_scope(hint, key)

        def run(conn: Connectable | None) -> SettlementOutcome:
            if rid > _I64_MAX:
                return SettlementOutcome(Status.MISSING_RESERVATION)
            params = {"reservation_id": rid, "tenant_id": hint, "ikey": key}
            stmt = self._sql.release if hint is None else self._sql.release_for_tenant
            rows = self._db.run(conn, lambda c: execute(c, stmt, params))
            if not rows:
                return self._missing(conn, rid)
            row = rows[0]
            if row.status == "lapsed":
                return self._expire_lapsed(conn, rid)
            return release_outcome(row)

        request = {"op": "release", "reservation_id": rid}
        return self._once(connection, scope, key, request, SettlementOutcome, run)

    # --------------------------------------------------------------- batches

    def try_reserve_many(
        self,
        items: Iterable[ReserveItem | tuple[Any, ...]],
        *,
        all_or_nothing: bool = False,
        connection: Connectable | None = None,
    ) -> list[ReserveOutcome]:
        """Reserve for many items (``ReserveItem`` or ``(tenant_id, cost)``), in order.

        One outcome per item, exactly as if each were a :meth:`try_reserve`
        call, in a constant number of round trips. With ``all_or_nothing``,
        a single refusal rolls every item back and raises
        :class:`~ledger.errors.BatchRefused` (its ``outcomes`` say why).
        """
        return batch.try_reserve_many(self, items, all_or_nothing, connection)

    def commit_many(
        self,
        items: Iterable[CommitItem | tuple[Any, ...]],
        *,
        all_or_nothing: bool = False,
        connection: Connectable | None = None,
    ) -> list[SettlementOutcome]:
        """Settle many holds (``CommitItem`` or ``(reservation_id, actual)``), in order."""
        return batch.commit_many(self, items, all_or_nothing, connection)

    def release_many(
        self,
        items: Iterable[ReleaseItem | int | tuple[Any, ...]],
        *,
        all_or_nothing: bool = False,
        connection: Connectable | None = None,
    ) -> list[SettlementOutcome]:
        """Release many holds (``ReleaseItem``, a reservation id, or a tuple), in order."""
        return batch.release_many(self, items, all_or_nothing, connection)

    # ---------------------------------------------------------------- expiry

    def expire_holds(self, *, limit: int = 1000, connection: Connectable | None = None) -> int:
        """Expire up to ``limit`` lapsed holds, oldest deadline first; returns how many.

        Each hold is expired by its own statement, which locks it with
        ``FOR UPDATE SKIP LOCKED``: any number of sweepers can run at once
        (from cron, a worker loop, several processes) and never wait on each
        other or expire a hold twice.
        """
        count = _validate.positive_count("limit", limit)
        done = 0
        while done < count and self._expire_one(connection, self._sql.expire_any):
            done += 1
        return done

    def _expire_one(self, connection: Connectable | None, statement: Any, **params: Any) -> Any:
        params.setdefault("ikey", None)
        rows = self._db.run(connection, lambda c: execute(c, statement, params))
        return rows[0] if rows else None

    def _expire_lapsed(self, connection: Connectable | None, rid: int) -> SettlementOutcome:
        """A settlement found its hold past the deadline: expire it, report ``expired``."""
        row = self._expire_one(connection, self._sql.expire_hold, reservation_id=rid)
        if row is None:  # a sweeper got there first
            return self._missing(connection, rid)
        return SettlementOutcome(
            Status.EXPIRED, remaining_microcents=row.remaining, returned_microcents=row.returned
        )

    def _missing(self, connection: Connectable | None, rid: int) -> SettlementOutcome:
        """The hold is gone: say ``expired`` if that is why, else ``missing_reservation``.

        Asked in a statement of its own so that it sees an expiry that
        committed while the settlement was waiting for the hold's lock.
        """
        rows = self._db.run(
            connection, lambda c: execute(c, self._sql.expired_hold, {"reservation_id": rid})
        )
        if rows:
            return SettlementOutcome(Status.EXPIRED, returned_microcents=rows[0].returned)
        return SettlementOutcome(Status.MISSING_RESERVATION)

    # ----------------------------------------------------------- idempotency

    def _once(
        self,
        connection: Connectable | None,
        tenant_id: str | None,
        key: str | None,
        request: dict[str, Any],
        outcome_type: type[OutcomeT],
        run: Callable[[Connectable | None], OutcomeT],
    ) -> OutcomeT:
        """Run ``run`` at most once per (tenant, idempotency key).

        Without a key this is just ``run(connection)``. With one, the key is
        claimed, the operation applied and its outcome recorded in one
        transaction. A concurrent duplicate blocks on the claim until that
        transaction ends, then reads the recorded outcome; a later retry
        (for example after a lost connection) reads it too. The same key
        with a different request raises :class:`~ledger.errors.IdempotencyConflict`.
        """
        if key is None:
            return run(connection)
        assert tenant_id is not None
        request_hash = hashlib.sha256(
            json.dumps({"tenant_id": tenant_id, **request}, sort_keys=True).encode()
        ).digest()
        ids = {"tenant_id": tenant_id, "ikey": key}

        def work(conn: Connection) -> OutcomeT:
            claimed = execute(
                conn, self._sql.idempotency_claim, {**ids, "request_hash": request_hash}
            )
            if not claimed:
                row = execute(conn, self._sql.idempotency_read, ids)[0]
                if bytes(row.request_hash) != request_hash:
                    raise errors.IdempotencyConflict(tenant_id, key)
                return _outcome_from_dict(outcome_type, row.outcome)
            outcome = run(conn)
            execute(
                conn,
                self._sql.idempotency_record,
                {**ids, "outcome": json.dumps(outcome.to_dict())},
            )
            return outcome

        return self._db.run(connection, work, "READ COMMITTED")

    def prune_idempotency_keys(
        self, older_than: timedelta, *, connection: Connectable | None = None
    ) -> int:
        """Forget idempotency keys older than ``older_than``; returns how many.

        Keys are kept until pruned. A retry with a pruned key is treated as a
        new request, so keep keys at least as long as clients may retry
        (24 hours is a common choice).
        """
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise errors.InputError("older_than must be a non-negative datetime.timedelta")
        age_us = older_than // timedelta(microseconds=1)
        rows = self._db.run(
            connection, lambda c: execute(c, self._sql.idempotency_prune, {"age_us": age_us})
        )
        return int(rows[0].pruned)

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
        params["ikey"] = None

        def work(c: Connection) -> None:
            execute(c, sql.restore_lock, {})
            execute(c, sql.restore_clear_holds, {})
            execute(c, sql.restore_drop_tenants, params)
            execute(c, sql.restore_update, params)
            execute(c, sql.restore_insert, params)
            # Sequences are not transactional, so this goes last.
            execute(c, sql.restore_version, params)

        self._db.run(connection, work, "READ COMMITTED")

    # --------------------------------------------------------- certificates

    def certify(self, *, connection: Connectable | None = None) -> FinancialCertificate:
        """Snapshot, certify, rotate the baseline forward and store the certificate.

        The certified snapshot and its checkpoint (every tenant's chain head,
        balances and open holds) are written by one statement, so the
        certificate's ``journal_root`` pins exactly the history behind its
        digest. The baseline rotation is a second, short statement that locks
        the baseline row, so concurrent certifiers serialise on it instead of
        failing with serialization errors.
        """
        rows = self._db.run(
            connection, lambda c: execute(c, self._sql.certify_snapshot, {}), "REPEATABLE READ"
        )
        snapshot = _snapshot_from_rows(rows)
        root = RootHasher()
        for r in rows:
            if r.tenant_id is not None:  # ordered by tenant id, i.e. UTF-8 byte order
                root.update(r.tenant_id, r.journal_seq, bytes(r.journal_head))
        draft = certify_snapshot(snapshot)
        journal_root = root.digest()
        params = {
            "version": draft.snapshot_version,
            "digest": bytes.fromhex(draft.ledger_digest_hex),
            "tenant_count": draft.tenant_count,
            "active": draft.active_reservations,
            "balanced": draft.conservation_balanced,
            "total_initial": draft.total_initial_microcents,
            "total_committed": draft.total_committed_microcents,
            "representable": draft.aggregate_totals_representable,
            "journal_root": journal_root,
            "checkpoint_id": rows[0].checkpoint_id,
        }
        stored = self._db.run(connection, lambda c: execute(c, self._sql.certify, params))[0]
        return replace(
            draft,
            committed_since_last_certificate=int(stored.committed_since_last_certificate),
            certificate_id=int(stored.certificate_id),
            journal_root_hex=journal_root.hex(),
        )

    # --------------------------------------------------------------- journal

    def verify_journal(
        self,
        *,
        since_certificate: int | None = None,
        progress: Callable[[int], None] | None = None,
        connection: Connectable | None = None,
    ) -> JournalReport:
        """Replay every tenant's journal and compare it with the live tables.

        Recomputes every hash chain, rebuilds balances and open holds from the
        entries, checks that the chains still pass through every certified
        head and that every certificate's journal root still holds, and
        compares the result with the tenant and hold tables, all within one
        consistent snapshot. ``since_certificate`` starts the replay at that
        certificate's checkpoint instead of at genesis. Rows are streamed, so
        memory does not grow with the journal. ``progress``, if given, is
        called with the number of tenants replayed so far.
        """
        if since_certificate is not None:
            since_certificate = _validate.positive_count("since_certificate", since_certificate)
        return self._db.run(
            connection,
            lambda c: verify.run(c, self._sql, since_certificate, progress),
            "REPEATABLE READ",
        )


def reserve_outcome(row: Any, cost: int) -> ReserveOutcome:
    """Outcome of a TRY_RESERVE result row (None: the tenant does not exist)."""
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


def commit_outcome(row: Any, actual: int) -> SettlementOutcome:
    """Outcome of a COMMIT result row that is neither missing nor lapsed."""
    status = Status(row.status)
    if status is Status.COMMITTED:
        return SettlementOutcome(
            status, remaining_microcents=row.remaining, actual_microcents=actual
        )
    return SettlementOutcome(status, remaining_microcents=row.remaining)


def release_outcome(row: Any) -> SettlementOutcome:
    """Outcome of a RELEASE result row that is neither missing nor lapsed."""
    return SettlementOutcome(
        Status.RELEASED, remaining_microcents=row.remaining, returned_microcents=row.returned
    )


def _key_scope(tenant_id: str | None, key: str | None) -> str | None:
    if key is not None and tenant_id is None:
        raise errors.InputError(
            "idempotency keys are scoped per tenant: pass tenant_id= together with "
            "idempotency_key= to commit() and release()"
        )
    return tenant_id


def _outcome_from_dict(outcome_type: type[OutcomeT], data: dict[str, Any]) -> OutcomeT:
    fields_ = dict(data)
    status = Status(fields_.pop("status"))
    return outcome_type(status, **fields_)


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
