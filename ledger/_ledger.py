# Generated from ledger/_async_ledger.py by scripts/unasync.py: do not edit.
# Edit the source, then run `python scripts/unasync.py` (CI checks with --check).
"""The :class:`Ledger`: calybris' ``BudgetEngine`` semantics on PostgreSQL tables.

Method names and outcome fields mirror the seed so a calybris user finds
their way around; the state lives in PostgreSQL, so it survives restarts and
is shared by every process that connects.

Every method takes an optional ``connection=`` (a SQLAlchemy ``Connection``
or ``Session``). Given one, the operation joins the caller's transaction and
is undone by the caller's rollback. Without one, it runs in its own
transaction: a single autocommitted statement for the hot-path operations.

The :class:`~ledger.AsyncLedger` source (``ledger/_async_ledger.py``) says
where and why the two faces differ. Over 600 lines, for a reason: one class,
the public API, one short method per operation with its docstring; the
logic is in ``_operations.py`` and the modules it names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import URL

from . import (
    _alerts,
    _asof,
    _batch,
    _certificate_check,
    _corrections,
    _periods,
    _stats,
    _telemetry,
    _tree,
    _validate,
    _verify,
    errors,
)
from . import _operations as ops
from ._alerts import Alert, AlertBacklog, AlertRecord, Threshold
from ._asof import AsOfCheckpoint, BalanceAt, SpendReport
from ._batch import CommitItem, ReleaseItem, ReserveItem
from ._certificate_check import CertificateCheck
from ._coalesce import Coalescer
from ._engine import EngineLike, as_engine
from ._executor import Connectable, Database
from ._hold import Hold
from ._pool import OwnPool
from ._queries import Queries
from ._requests import Op
from ._routing import Routing, WorkerRouter
from ._stats import LedgerStats
from ._tree import TreeNode
from .certificates import FinancialCertificate
from .journal import JournalReport
from .outcomes import (
    AdjustOutcome,
    AllowanceOutcome,
    ConservationStatus,
    ExpiredHolds,
    PeriodSpend,
    RefundOutcome,
    Renewals,
    ReserveOutcome,
    SettlementOutcome,
    TopUpOutcome,
)
from .snapshot import BudgetSnapshot, TenantLedger

#: Where a call routed to a Citus worker runs: the worker's own database, on
#: both faces (ledger/_routing.py).
_Route = Database

__all__ = ["Ledger"]

T = TypeVar("T")

_I64_MAX = _validate.I64_MAX

#: How long a hold from :meth:`Ledger.hold` lives if nobody settles it (a crash).
DEFAULT_HOLD_TTL = timedelta(minutes=10)


class Ledger:
    # The constructors differ: each face gets its connections its own way.
    """Per-tenant budgets with two-phase spend, stored in one PostgreSQL schema.

    ``Ledger(engine_or_url, schema="ledger")``. Pass an existing SQLAlchemy
    engine to share its pool; pass a URL and the ledger creates (and
    :meth:`close` disposes of) its own. The schema must have been migrated
    with :func:`ledger.migrate`.

    ``coalesce=True`` runs the single-statement operations of many threads
    together, a round at a time, in one transaction and one round trip per
    round (see :mod:`ledger._coalesce`): for threaded servers under load.
    Each call still gets its own outcome, after its round has committed.

    ``route_to_workers=True`` (a URL only), on a schema ``ledger distribute``
    spread over Citus: calls about one tenant go straight to the tenant's
    worker instead of through the coordinator (ledger/citus/routing.py,
    docs/scale-out.md).
    """

    def __init__(
        self,
        engine_or_url: EngineLike,
        schema: str = "ledger",
        *,
        coalesce: bool = False,
        route_to_workers: bool = False,
    ) -> None:
        self.schema = _validate.schema_name(schema)
        if route_to_workers and (coalesce or not isinstance(engine_or_url, (str, URL))):
            raise errors.InputError(
                "route_to_workers=True needs a database URL (the ledger opens its own "
                "connections to the Citus workers) and coalesce=False; see docs/scale-out.md"
            )
        self.engine, self._owns_engine = as_engine(engine_or_url)
        self._url = self.engine.url
        pool = OwnPool(self.engine) if self._owns_engine else None
        self._db = Database(
            self.engine,
            coalescer=Coalescer(self.engine) if coalesce else None,
            # An engine the ledger made is its alone: its own psycopg connections
            # (ledger/_pool.py); a caller's Engine keeps SQLAlchemy's pool.
            pool=pool,
        )
        #: Which statements, and (route_to_workers=True on Citus) which worker a
        #: tenant's calls go to (ledger/_routing.py).
        self._routing = Routing(
            self.engine.url,
            self.schema,
            lambda op: self._db.run(op, None),
            workers=WorkerRouter(self.engine, pool, lambda op: self._db.run(op, None))
            if route_to_workers and pool is not None
            else None,
        )

    @property
    def _q(self) -> Queries:
        """:meth:`_queries`, as an attribute: the name ledger/telemetry.py, the Citus
        tests and the benchmarks read the statements by."""
        return self._routing.queries()

    #: Where operations run when no ``connection=`` is given: None means the
    #: ledger's own connection; a bound ledger (``BoundLedger``, sync only: the
    #: Flask and Django integrations) asks its framework.
    _default_connection: Callable[[], Connectable] | None = None

    def _run(
        self,
        op: Op[T],
        connection: Connectable | None,
        route: _Route | None = None,
        *,
        name: str,
        tenant_id: object = None,
        reservation_id: object = None,
    ) -> T:
        """Run ``op`` as the operation ``name`` (its span and metrics, docs/observability.md).

        ``route``: where :meth:`_at` sent a call about one tenant (None: the ledger's own).
        """
        if connection is None and self._default_connection is not None:
            connection = self._default_connection()
        return _telemetry.run(
            (route or self._db).run, op, connection, name, tenant_id, reservation_id
        )

    def _at(
        self, tenant_id: object, connection: Connectable | None
    ) -> tuple[Queries, _Route | None]:
        """The statements and connections for a call about one tenant.

        With ``route_to_workers=True`` on a distributed schema, and no
        connection of the caller's (or a framework's): the tenant's worker and
        its shard functions (ledger/citus/routing.py). Otherwise the ledger's
        own, as always.
        """
        if connection is not None or self._default_connection is not None:
            return self._queries(), None
        return self._routing.at(tenant_id)

    def _op(self, build: Callable[[Queries], Op[T]]) -> Op[T]:
        """The operation ``build`` makes, its arguments checked before any I/O.

        Operations check their arguments when they are built; the first call
        must look the statements up (a round trip, which waits on a down
        server), so it first builds the operation with the plain statements:
        bad input raises at once. (Not for batches: building twice would
        consume an iterator of items; they look the statements up first.)
        """
        if not self._routing.looked_up:
            build(self._routing.plain)
        return build(self._queries())

    def _tenant_op(
        self,
        tenant_id: str | None,
        connection: Connectable | None,
        build: Callable[[Queries], Op[T]],
    ) -> tuple[Op[T], _Route | None]:
        """:meth:`_op` for a call about one tenant (None: not known), routed as ``_at`` says."""
        if not self._routing.looked_up or self._routing.workers is not None:
            build(self._routing.plain)  # before the lookup or the shard map is consulted
        if tenant_id is None:
            return build(self._queries()), None
        q, route = self._at(tenant_id, connection)
        return build(q), route

    def _queries(self) -> Queries:
        """The statements: on a Citus schema that ``ledger distribute`` prepared, the
        single-tenant writes become calls of their routed functions, one round trip to
        the tenant's worker (ledger/citus/). Looked up on first use, then kept; on
        plain PostgreSQL the statements stay as they are."""
        return self._routing.queries()

    def close(self) -> None:
        """Stop coalescing, and dispose of the engine if the ledger created it."""
        self._routing.close()
        self._db.close()
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        url = self._url.render_as_string(hide_password=True)
        return f"Ledger({url!r}, schema={self.schema!r})"

    def _own_transactions(self) -> Ledger:
        """This ledger as it runs without ``connection=``: its own transactions."""
        return self

    # ------------------------------------------------------------------ holds

    @contextmanager
    def hold(
        self,
        tenant_id: str,
        estimate_microcents: int,
        *,
        ttl: timedelta | int = DEFAULT_HOLD_TTL,
        idempotency_key: str | None = None,
    ) -> Iterator[Hold]:
        """Reserve ``estimate_microcents`` now, run the block with no lock held, then settle.

        The reserve is committed at once in a transaction of its own (never
        the caller's or a framework's), so other requests of the tenant are
        not held up by the work; ``ttl`` (a ``timedelta`` or seconds) expires
        the hold if the process dies before settling. Inside the block call
        ``h.settle(actual)``, which joins ``connection=`` or the bound
        framework transaction when given, so the settlement is atomic with
        the app's writes (if that transaction then rolls back, the hold
        stays open and its TTL returns the amount: the block cannot know
        whether the app will still commit). Leaving the block without
        settling releases the hold; an exception releases it and propagates. A refused reserve
        raises its typed error (for example
        :class:`~ledger.errors.InsufficientFundsError`) and the block does
        not run.
        """
        own = self._own_transactions()
        reserved = own.try_reserve(
            tenant_id, estimate_microcents, ttl=ttl, idempotency_key=idempotency_key
        ).raise_for_status()
        held = Hold(self, own, tenant_id, reserved, estimate_microcents)
        try:
            yield held
        except BaseException:
            held._close(failed=True)
            raise
        held._close(failed=False)

    # ------------------------------------------------------------- tenants

    def ensure_tenant(
        self,
        tenant_id: str,
        budget_microcents: int,
        parent: str | None = None,
        *,
        connection: Connectable | None = None,
    ) -> bool:
        """Create a tenant with a budget; a no-op if it exists. Returns True if created.

        Deviation from the seed: a negative budget raises ``ValueError``
        instead of being silently ignored, because a typo should not look
        like success.

        ``parent`` places the new tenant under an existing tenant (nested
        budgets, docs/nested.md): its holds then reserve at every ancestor
        too. The parent gives it nothing; an unknown parent raises
        :class:`~ledger.errors.UnknownParent` and a tree deeper than
        ``ledger.MAX_TREE_DEPTH`` :class:`~ledger.errors.TreeTooDeep`, and
        nothing is created. An existing tenant is left where it is (move it
        with :meth:`set_parent`).
        """
        op, route = self._tenant_op(
            tenant_id,
            connection,
            lambda q: ops.ensure_tenant(q, tenant_id, budget_microcents, parent),
        )
        return self._run(op, connection, route, name="ensure_tenant", tenant_id=tenant_id)

    def set_parent(
        self, tenant_id: str, parent: str | None, *, connection: Connectable | None = None
    ) -> None:
        """Move a tenant and its subtree under ``parent`` (None: make it a root).

        No money moves: holds placed before the move settle at the levels they
        reserved at, and the old ancestors keep the spend from before it.
        Refused with a typed error, changing nothing: an unknown tenant
        (:class:`~ledger.errors.TenantNotFound`), an unknown parent, a cycle
        (:class:`~ledger.errors.TreeCycle`), a tree too deep.
        """
        op, route = self._tenant_op(
            tenant_id, connection, lambda q: _tree.set_parent(q, tenant_id, parent)
        )
        self._run(op, connection, route, name="set_parent", tenant_id=tenant_id)

    def children(self, tenant_id: str, *, connection: Connectable | None = None) -> list[str]:
        """The ids of a tenant's children, in byte order."""
        op, route = self._tenant_op(tenant_id, connection, lambda q: _tree.children(q, tenant_id))
        return self._run(op, connection, route, name="children", tenant_id=tenant_id)

    def subtree(self, tenant_id: str, *, connection: Connectable | None = None) -> list[TreeNode]:
        """The tenant and every tenant below it (id, parent, depth), level by level."""
        op, route = self._tenant_op(tenant_id, connection, lambda q: _tree.subtree(q, tenant_id))
        return self._run(op, connection, route, name="subtree", tenant_id=tenant_id)

    def top_up_tenant(
        self,
        tenant_id: str,
        amount_microcents: int,
        *,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> TopUpOutcome:
        """Add funds: ``initial`` and ``remaining`` grow together, lifetime spend is kept."""
        op, route = self._tenant_op(
            tenant_id,
            connection,
            lambda q: ops.top_up_tenant(q, tenant_id, amount_microcents, idempotency_key),
        )
        return self._run(op, connection, route, name="top_up_tenant", tenant_id=tenant_id)

    def set_max_reserved_microcents(
        self, tenant_id: str, max_microcents: int, *, connection: Connectable | None = None
    ) -> None:
        """Cap the total of a tenant's open holds; ``0`` (or less) removes the cap.

        Deviation from the seed: an unknown tenant raises
        :class:`~ledger.errors.TenantNotFound` instead of storing a cap for a
        tenant that does not exist yet.
        """
        op, route = self._tenant_op(
            tenant_id, connection, lambda q: ops.set_max_reserved(q, tenant_id, max_microcents)
        )
        self._run(op, connection, route, name="set_max_reserved_microcents", tenant_id=tenant_id)

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
        op, route = self._tenant_op(
            tenant_id,
            connection,
            lambda q: ops.try_reserve(
                q, tenant_id, cost_microcents, ttl, expires_at, idempotency_key
            ),
        )
        return self._run(op, connection, route, name="try_reserve", tenant_id=tenant_id)

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
        op, route = self._tenant_op(
            tenant_id,
            connection,
            lambda q: ops.commit(q, reservation_id, actual_microcents, tenant_id, idempotency_key),
        )
        return self._run(
            op, connection, route, name="commit", tenant_id=tenant_id, reservation_id=reservation_id
        )

    def release(
        self,
        reservation_id: int,
        *,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> SettlementOutcome:
        """Cancel a hold, returning its full amount to ``remaining``."""
        op, route = self._tenant_op(
            tenant_id,
            connection,
            lambda q: ops.release(q, reservation_id, tenant_id, idempotency_key),
        )
        return self._run(
            op,
            connection,
            route,
            name="release",
            tenant_id=tenant_id,
            reservation_id=reservation_id,
        )

    # ------------------------------------------------------------ corrections

    def refund(
        self,
        tenant_id: str,
        reservation_id: int,
        amount_microcents: int,
        *,
        reason: str,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> RefundOutcome:
        """Give back part or all of the tenant's commit of hold ``reservation_id``.

        ``committed`` falls and ``remaining`` grows by ``amount_microcents``
        (``initial`` is unchanged). The refunds of one commit never add up
        to more than its amount, however many run at once; a refused refund
        (``unknown_commit``, ``refund_exceeds_commit``, ``missing_tenant``)
        changes nothing. ``reason`` (required, at most 1000 UTF-8 bytes) is
        journaled with the entry. See docs/corrections.md.
        """
        op, route = self._tenant_op(
            tenant_id,
            connection,
            lambda q: _corrections.refund(
                q, tenant_id, reservation_id, amount_microcents, reason, idempotency_key
            ),
        )
        return self._run(
            op, connection, route, name="refund", tenant_id=tenant_id, reservation_id=reservation_id
        )

    def adjust(
        self,
        tenant_id: str,
        amount_microcents: int,
        *,
        reason: str,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> AdjustOutcome:
        """Change the tenant's budget by a signed amount, with a journaled ``reason``.

        ``initial`` and ``remaining`` move together; ``reserved`` and
        ``committed`` are never touched. A negative adjustment that would take
        ``remaining`` below zero is refused (``insufficient``); so is one that
        would overflow. ``0`` is bad input. See docs/corrections.md.
        """
        op, route = self._tenant_op(
            tenant_id,
            connection,
            lambda q: _corrections.adjust(q, tenant_id, amount_microcents, reason, idempotency_key),
        )
        return self._run(op, connection, route, name="adjust", tenant_id=tenant_id)

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
        return self._run(
            _batch.try_reserve_many(self._queries(), items, all_or_nothing),
            connection,
            name="try_reserve_many",
        )

    def commit_many(
        self,
        items: Iterable[CommitItem | tuple[Any, ...]],
        *,
        all_or_nothing: bool = False,
        connection: Connectable | None = None,
    ) -> list[SettlementOutcome]:
        """Settle many holds (``CommitItem`` or ``(reservation_id, actual)``), in order."""
        return self._run(
            _batch.commit_many(self._queries(), items, all_or_nothing),
            connection,
            name="commit_many",
        )

    def release_many(
        self,
        items: Iterable[ReleaseItem | int | tuple[Any, ...]],
        *,
        all_or_nothing: bool = False,
        connection: Connectable | None = None,
    ) -> list[SettlementOutcome]:
        """Release many holds (``ReleaseItem``, a reservation id, or a tuple), in order."""
        return self._run(
            _batch.release_many(self._queries(), items, all_or_nothing),
            connection,
            name="release_many",
        )

    # ---------------------------------------------------------------- expiry

    def expire_holds(
        self, *, limit: int = 1000, connection: Connectable | None = None
    ) -> ExpiredHolds:
        """Expire up to ``limit`` lapsed holds, oldest deadline first; returns how many.

        Each hold is expired by its own statement, which locks it with
        ``FOR UPDATE SKIP LOCKED``: any number of sweepers can run at once
        (from cron, a worker loop, several processes) and never wait on each
        other or expire a hold twice. The count is an ``int`` whose ``skipped``
        names tenants whose holds could not be expired (their period could not
        be renewed), with why; the sweep expired the others' holds.
        """
        return self._run(
            self._op(lambda q: ops.expire_holds(q, limit)), connection, name="expire_holds"
        )

    # ---------------------------------------------------------------- periods

    def set_allowance(
        self,
        tenant_id: str,
        allowance_microcents: int,
        *,
        anchor: datetime,
        months: int = 0,
        days: int = 0,
        time_zone: str = "UTC",
        min_rollover_microcents: int = 0,
        max_rollover_microcents: int = 0,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> AllowanceOutcome:
        """Give a tenant a recurring allowance: ``allowance_microcents`` every period.

        Pass exactly one of ``months=N`` (calendar months) or ``days=N``;
        period ``k`` starts at ``anchor + k * N`` computed in ``time_zone``
        (any boundary of the schedule, past or future, may serve as the
        anchor). At each boundary ``remaining`` becomes
        ``clamp(remaining, min_rollover, max_rollover) + allowance``: the
        defaults (0, 0) reset it to the allowance. Setting an allowance starts
        the period containing now *without* crediting anything (what the
        tenant has is kept); the first allowance arrives at the next boundary.
        Changing only the amounts takes effect at the next boundary; changing
        the schedule starts a new period now (docs/periods.md).
        """
        op = self._op(
            lambda q: _periods.set_allowance(
                q,
                tenant_id,
                allowance_microcents,
                months,
                days,
                anchor,
                time_zone,
                min_rollover_microcents,
                max_rollover_microcents,
                idempotency_key,
            )
        )
        return self._run(op, connection, name="set_allowance", tenant_id=tenant_id)

    def clear_allowance(
        self,
        tenant_id: str,
        *,
        idempotency_key: str | None = None,
        connection: Connectable | None = None,
    ) -> AllowanceOutcome:
        """Stop renewing a tenant: it leaves its periods and keeps its ``remaining``.

        Holds opened in its last period then settle as holds from a closed
        period (their unspent part is forfeited, docs/periods.md).
        """
        op = self._op(lambda q: _periods.clear_allowance(q, tenant_id, idempotency_key))
        return self._run(op, connection, name="clear_allowance", tenant_id=tenant_id)

    def renew_periods(
        self, *, limit: int = 1000, connection: Connectable | None = None
    ) -> Renewals:
        """Renew up to ``limit`` tenants whose period has ended (the sweeper).

        Writes renew every tenant lazily on their first operation of a new
        period; this is for tenants nobody writes to, so that their balances
        and journals show each period. Tenants are picked ``SKIP LOCKED``, so
        sweepers and lazy renewals never renew a period twice or wait on each
        other. Returns ``Renewals(tenants, periods, skipped)``: a tenant that
        cannot be renewed is named in ``skipped`` and passed over. Call again
        while ``tenants == limit``.
        """
        return self._run(
            self._op(lambda q: _periods.renew_periods(q, limit)),
            connection,
            name="renew_periods",
        )

    def period_spend(
        self,
        tenant_id: str,
        period_index: int | None = None,
        *,
        connection: Connectable | None = None,
    ) -> PeriodSpend:
        """What a tenant spent in one period: the current one by default.

        Spend is attributed to the period a hold was opened in (commit entries
        carry it), so a hold committed after its period ended still counts
        there. Raises :class:`~ledger.errors.NoAllowance` for a tenant without
        an allowance and :class:`~ledger.errors.TenantNotFound` for no tenant.
        """
        op = self._op(lambda q: _periods.period_spend(q, tenant_id, period_index))
        return self._run(op, connection, name="period_spend", tenant_id=tenant_id)

    # ------------------------------------------------- thresholds and alerts

    def set_threshold(
        self,
        tenant_id: str,
        name: str,
        *,
        spent_microcents: int | None = None,
        spent_percent: int | float | Decimal | None = None,
        remaining_below_microcents: int | None = None,
        connection: Connectable | None = None,
    ) -> bool:
        """Set (or replace) the threshold ``name`` of a tenant; True if it is new.

        Exactly one level: ``spent_microcents`` (the current period's spend
        reaches it), ``spent_percent`` (the same as a share of the period's
        allowance, or of ``initial`` without one) or
        ``remaining_below_microcents`` (``remaining`` falls below it). The
        write that crosses it records an :class:`Alert` in its own
        transaction, at most once per threshold and period; a threshold that
        is already crossed fires at once (docs/alerts.md). A missing tenant
        raises :class:`~ledger.errors.TenantNotFound`.
        """
        op = self._op(
            lambda q: _alerts.set_threshold(
                q, tenant_id, name, spent_microcents, spent_percent, remaining_below_microcents
            )
        )
        return self._run(op, connection, name="set_threshold", tenant_id=tenant_id)

    def clear_threshold(
        self, tenant_id: str, name: str, *, connection: Connectable | None = None
    ) -> bool:
        """Delete a threshold; True if it existed. Alerts it fired stay in the outbox."""
        op = self._op(lambda q: _alerts.clear_threshold(q, tenant_id, name))
        return self._run(op, connection, name="clear_threshold", tenant_id=tenant_id)

    def thresholds(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> list[Threshold]:
        """A tenant's thresholds, by name."""
        op = self._op(lambda q: _alerts.thresholds(q, tenant_id))
        return self._run(op, connection, name="thresholds", tenant_id=tenant_id)

    def claim_alerts(
        self,
        limit: int = 100,
        lease: timedelta = timedelta(seconds=30),
        *,
        consumer: str | None = None,
        connection: Connectable | None = None,
    ) -> list[Alert]:
        """Claim up to ``limit`` undelivered alerts for ``lease``, oldest first.

        ``FOR UPDATE SKIP LOCKED``: concurrent claimers never get the same
        alert while its lease runs. Acknowledge with :meth:`ack_alerts`; an
        alert not acknowledged before its lease ends is claimed again.
        ``consumer`` is recorded in ``alerts.claimed_by`` (default host:pid).
        """
        op = self._op(lambda q: _alerts.claim_alerts(q, limit, lease, consumer))
        return self._run(op, connection, name="claim_alerts")

    def ack_alerts(
        self, ids: Iterable[int | Alert], *, connection: Connectable | None = None
    ) -> int:
        """Mark alerts delivered (never claimed again); returns how many were not already."""
        op = self._op(lambda q: _alerts.ack_alerts(q, ids))
        return self._run(op, connection, name="ack_alerts")

    def release_alerts(
        self,
        ids: Iterable[int | Alert],
        *,
        error: str | None = None,
        retry_after: timedelta | None = None,
        connection: Connectable | None = None,
    ) -> int:
        """End the lease of claimed alerts, so a claim takes them again: now, or after
        ``retry_after`` (a backoff).

        For a handler that failed: ``error`` is kept in ``alerts.last_error``.
        """
        op = self._op(lambda q: _alerts.release_alerts(q, ids, error, retry_after))
        return self._run(op, connection, name="release_alerts")

    def list_alerts(
        self,
        tenant_id: str | None = None,
        *,
        undelivered: bool = False,
        limit: int = 100,
        connection: Connectable | None = None,
    ) -> list[AlertRecord]:
        """The outbox, newest first, with each alert's delivery state (claims nothing)."""
        op = self._op(lambda q: _alerts.list_alerts(q, tenant_id, undelivered, limit))
        return self._run(op, connection, name="list_alerts", tenant_id=tenant_id)

    def alert_backlog(self, *, connection: Connectable | None = None) -> AlertBacklog:
        """How many alerts are undelivered, and how old the oldest is (the telemetry gauges)."""
        op = self._op(_alerts.alert_backlog)
        return self._run(op, connection, name="alert_backlog")

    def alerts(
        self,
        *,
        limit: int = 1,
        lease: timedelta = timedelta(seconds=30),
        consumer: str | None = None,
        listen: bool | str = True,
        poll_interval: float = 1.0,
        idle_timeout: float | None = None,
        max_alerts: int | None = None,
    ) -> Iterator[Alert]:
        """Consume alerts: ``for alert in abook.alerts(): handle(alert)``.

        Claims up to ``limit`` alerts at a time (a lease each, as
        :meth:`claim_alerts`), hands them over one by one, and acknowledges
        each when the loop asks for the next, that is after the loop's body
        returned. Leaving the loop (``break``, an exception) hands the alert
        being handled, and the rest of the claim, back at once, unacknowledged.
        A consumer that dies keeps its claim until the lease ends; then
        another consumer gets it. So a body runs at least once per alert,
        ``delivered_at`` is set once, and two live consumers never hold one
        alert: deduplicate on ``alert_id`` downstream.

        Between claims it waits for a ``NOTIFY`` on a session of its own
        (``listen=True``: the ledger's database; a URL: another, such as a
        direct connection past a transaction pooler) for at most
        ``poll_interval`` seconds, and simply polls when it cannot listen
        (``listen=False``, or the session failed). ``idle_timeout`` ends the
        loop after that many seconds without an alert; ``max_alerts`` after
        that many acknowledged.
        """
        cfg = _alerts.consumer_settings(
            self._routing.plain,
            self._url,
            limit,
            lease,
            consumer,
            listen,
            poll_interval,
            idle_timeout,
            max_alerts,
        )
        delivered = 0
        idle_since = time.monotonic()
        listener = _alerts.Listener.open(cfg.conninfo, _alerts.channel(self.schema))
        try:
            while True:
                claimed = self.claim_alerts(cfg.limit, cfg.lease, consumer=cfg.consumer)
                if not claimed:
                    if cfg.idle_timeout is not None and (
                        time.monotonic() - idle_since >= cfg.idle_timeout
                    ):
                        return
                    listener.wait(cfg.interval)
                    continue
                for index, alert in enumerate(claimed):
                    try:
                        yield alert
                    except BaseException:
                        self.release_alerts(claimed[index:])
                        raise
                    self.ack_alerts([alert.alert_id])
                    delivered += 1
                    if cfg.max_alerts is not None and delivered >= cfg.max_alerts:
                        self.release_alerts(claimed[index + 1 :])
                        return
                idle_since = time.monotonic()
        finally:
            listener.close()

    # ----------------------------------------------------------- idempotency

    def prune_idempotency_keys(
        self, older_than: timedelta, *, connection: Connectable | None = None
    ) -> int:
        """Forget idempotency keys older than ``older_than``; returns how many.

        Keys are kept until pruned. A retry with a pruned key is treated as a
        new request, so keep keys at least as long as clients may retry
        (24 hours is a common choice).
        """
        return self._run(
            self._op(lambda q: ops.prune_idempotency_keys(q, older_than)),
            connection,
            name="prune_idempotency_keys",
        )

    # --------------------------------------------------------------- reads

    def tenant(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> TenantLedger | None:
        """One tenant's balances, or None if it does not exist."""
        op, route = self._tenant_op(tenant_id, connection, lambda q: ops.tenant_row(q, tenant_id))
        row = self._run(op, connection, route, name="tenant", tenant_id=tenant_id)
        if row is None:
            return None
        return TenantLedger(
            tenant_id,
            row.initial_microcents,
            row.remaining_microcents,
            row.reserved_microcents,
            row.committed_microcents,
            getattr(row, "parent_id", None),
        )

    def _tenant_row(self, tenant_id: str, connection: Connectable | None, name: str) -> Any:
        op, route = self._tenant_op(tenant_id, connection, lambda q: ops.tenant_row(q, tenant_id))
        return self._run(op, connection, route, name=name, tenant_id=tenant_id)

    def remaining_microcents(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> int | None:
        row = self._tenant_row(tenant_id, connection, name="remaining_microcents")
        return None if row is None else int(row.remaining_microcents)

    def reserved_microcents(self, tenant_id: str, *, connection: Connectable | None = None) -> int:
        """Sum of open holds; 0 for an unknown tenant, as in the seed."""
        row = self._tenant_row(tenant_id, connection, name="reserved_microcents")
        return 0 if row is None else int(row.reserved_microcents)

    def committed_microcents(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> int | None:
        """Lifetime spend (monotonic), not the amount currently held."""
        row = self._tenant_row(tenant_id, connection, name="committed_microcents")
        return None if row is None else int(row.committed_microcents)

    def initial_microcents(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> int | None:
        """Total ever granted: the creation budget plus every top-up."""
        row = self._tenant_row(tenant_id, connection, name="initial_microcents")
        return None if row is None else int(row.initial_microcents)

    def max_reserved_microcents(
        self, tenant_id: str, *, connection: Connectable | None = None
    ) -> int | None:
        """The cap on open holds (0 = none), or None for an unknown tenant."""
        row = self._tenant_row(tenant_id, connection, name="max_reserved_microcents")
        return None if row is None else int(row.max_reserved_microcents)

    def _counts(self, connection: Connectable | None, name: str) -> Any:
        return self._run(ops.counts(self._queries()), connection, name=name)

    def tenant_count(self, *, connection: Connectable | None = None) -> int:
        return int(self._counts(connection, name="tenant_count").tenants)

    def active_reservations(self, *, connection: Connectable | None = None) -> int:
        """Number of open holds across all tenants."""
        return int(self._counts(connection, name="active_reservations").reservations)

    def total_committed_microcents(self, *, connection: Connectable | None = None) -> int:
        """Lifetime spend summed over tenants, exactly (a Python int, never wrapped)."""
        return int(self._counts(connection, name="total_committed_microcents").committed)

    def committed_since_last_certificate(self, *, connection: Connectable | None = None) -> int:
        """Spend since the last certificate's baseline (negative after restoring an older state)."""
        counts = self._counts(connection, name="committed_since_last_certificate")
        delta = int(counts.committed) - int(counts.baseline)
        return max(min(delta, _I64_MAX), _validate.I64_MIN)

    def snapshot_version(self, *, connection: Connectable | None = None) -> int:
        """Version of the latest snapshot (0 before the first one)."""
        return self._run(ops.snapshot_version(self._queries()), connection, name="snapshot_version")

    # ------------------------------------------------------------ snapshots

    def snapshot(self, *, connection: Connectable | None = None) -> BudgetSnapshot:
        """A consistent, versioned view of every tenant and the open-hold count.

        Everything is read by a single statement in a REPEATABLE READ
        transaction, so the snapshot balances even while writers are busy.
        """
        return self._run(ops.snapshot(self._queries()), connection, name="snapshot")

    def verify_conservation(self, *, connection: Connectable | None = None) -> ConservationStatus:
        """Check the invariant inside PostgreSQL, returning the first offending tenant.

        Like the seed it advances the snapshot version. The scan runs in the
        database, so its memory use does not grow with the number of tenants.
        """
        return self._run(
            ops.verify_conservation(self._queries()), connection, name="verify_conservation"
        )

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
        self._run(
            self._op(lambda q: ops.restore_from_snapshot(q, snapshot)),
            connection,
            name="restore_from_snapshot",
        )

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
        return self._run(ops.certify(self._queries()), connection, name="certify")

    def check_against_certificate(
        self,
        certificate: FinancialCertificate | Mapping[str, Any] | str | Path,
        *,
        connection: Connectable | None = None,
    ) -> CertificateCheck:
        """Is this database at or after a certificate kept outside it (not rolled back)?

        ``certificate`` is a :class:`FinancialCertificate`, its ``to_dict()``,
        or a JSON file written by ``ledger certify -o FILE``. A database
        restored to before the certificate fails with a ``rollback`` problem;
        see :mod:`ledger._certificate_check` and docs/deployment.md.
        """
        return self._run(
            self._op(lambda q: _certificate_check.check_against_certificate(q, certificate)),
            connection,
            name="check_against_certificate",
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
        return self._run(
            self._op(lambda q: _verify.verify_journal(q, since_certificate, progress)),
            connection,
            name="verify_journal",
        )

    # --------------------------------------------------------- observability

    def stats(
        self, *, minutes: int = 60, top: int = 5, connection: Connectable | None = None
    ) -> LedgerStats:
        """A quick look at the live ledger, read by one statement (``ledger stats``).

        Open and lapsed holds and the oldest hold's age; refused spends of the
        last ``minutes`` by operation and status (the ``refusals`` table);
        the ``top`` tenants by lifetime spend; tenants whose renewal is due.
        """
        return self._run(
            self._op(lambda q: _stats.stats(q, minutes, top)), connection, name="stats"
        )

    # ---------------------------------------------------------- as-of queries

    def balance_at(
        self, tenant_id: str, at: datetime, *, connection: Connectable | None = None
    ) -> BalanceAt | None:
        """One tenant's balances at ``at`` (timezone-aware), from the journal.

        The state after every entry of the tenant's chain up to the first one
        stamped after ``at`` (docs/asof.md says why that definition). None if
        the tenant did not exist at ``at``: not yet created, removed, or
        unknown. One statement; an as-of checkpoint shortens its scan.
        """
        return self._run(
            self._op(lambda q: _asof.balance_at(q, tenant_id, at)),
            connection,
            name="balance_at",
            tenant_id=tenant_id,
        )

    def balances_at(
        self, at: datetime, *, connection: Connectable | None = None
    ) -> list[BalanceAt]:
        """Every tenant that existed at ``at``, in tenant id order, from one snapshot.

        Computed in the database and streamed: memory holds one row per
        tenant, never the journal.
        """
        return self._run(
            self._op(lambda q: _asof.balances_at(q, at)), connection, name="balances_at"
        )

    def spend_between(
        self,
        start: datetime,
        end: datetime,
        *,
        tenant_id: str | None = None,
        connection: Connectable | None = None,
    ) -> SpendReport:
        """Commits minus refunds between ``start`` (exclusive) and ``end`` (inclusive).

        For one tenant or, without ``tenant_id``, every tenant. Windows add up:
        spend(a, b) + spend(b, c) == spend(a, c). ``start`` after ``end`` is
        refused with :class:`~ledger.errors.InputError`.
        """
        return self._run(
            self._op(lambda q: _asof.spend_between(q, start, end, tenant_id)),
            connection,
            name="spend_between",
            tenant_id=tenant_id,
        )

    def asof_checkpoint(self, *, connection: Connectable | None = None) -> AsOfCheckpoint:
        """Record where each tenant's chain stands and its latest stamp so far.

        A cache for :meth:`balance_at`, :meth:`balances_at` and
        :meth:`spend_between`: queries for a time after a checkpoint scan only
        the entries after it. It never changes an answer. Run it periodically
        (``ledger asof checkpoint``, from cron); each run reads only the
        entries written since the previous one.
        """
        return self._run(_asof.asof_checkpoint(self._queries()), connection, name="asof_checkpoint")


class BoundLedger(Ledger):
    """A :class:`Ledger` whose operations run on a connection chosen by a framework.

    Framework integrations hand this out so that ledger writes join the
    framework's transaction (Flask-SQLAlchemy's ``db.session``, Django's
    ``transaction.atomic()``) without the caller having to remember it. An
    explicit ``connection=`` argument still wins. It is a real ``Ledger``
    subclass, so every method keeps its signature and types; it shares the
    unbound ledger's engine and never disposes of it.

    Sync only: the integrations that bind a ledger (Flask, Django) are sync.
    """

    def __init__(self, ledger: Ledger, connection: Callable[[], Connectable]) -> None:
        self.schema = ledger.schema
        self.engine = ledger.engine
        self._url = ledger._url
        self._owns_engine = False
        self._db = ledger._db
        # The same statements; operations join the framework's connection: never routed.
        self._routing = ledger._routing
        self._default_connection = connection
        self._unbound = ledger

    @property
    def ledger(self) -> Ledger:
        """The unbound ledger (operations run in their own transactions)."""
        return self._unbound

    def _own_transactions(self) -> Ledger:
        return self._unbound

    def close(self) -> None:
        """Nothing to do: the unbound ledger owns the engine (and any coalescer)."""

    def __repr__(self) -> str:
        return f"BoundLedger({self._unbound!r})"
