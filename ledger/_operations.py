"""Every single-tenant and ledger-wide operation, written once.

(Over 600 lines on purpose: the operations share their building blocks,
``cas``, ``idempotent``, ``expire_one``, ``missing``, which batches,
periods and corrections reuse from here; the Citus variants live in
ledger/citus/steps.py.)

Each function validates its input *before* anything reaches the database
(bad input raises a typed error and sends nothing), then returns an
:class:`~ledger._executor.Op`: the steps that yield SQL requests and turn the
rows into an outcome, plus the transaction they need. The steps never see a
connection, so the same operation runs on every back-end
(:mod:`ledger._executor`), and batches reuse the steps of the single
operations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from . import _telemetry, _validate, errors
from ._queries import GONE, Queries
from ._requests import Fetch, Op, Steps
from .certificates import FinancialCertificate, certify_snapshot
from .journal import RootHasher
from .outcomes import (
    Balance,
    ConservationStatus,
    ExpiredHolds,
    Outcome,
    ReserveOutcome,
    SettlementOutcome,
    SkippedTenant,
    Status,
    TopUpOutcome,
    commit_outcome,
    outcome_from_dict,
    release_outcome,
    reserve_outcome,
    top_up_outcome,
)
from .snapshot import (
    BudgetSnapshot,
    TenantLedger,
    conservation_status_for_snapshot,
    validate_for_restore,
)

OutcomeT = TypeVar("OutcomeT", bound=Outcome)

I64_MAX = _validate.I64_MAX
_CAS_ATTEMPTS = 100


# ------------------------------------------------------------- building blocks


def first_row(sql: str, params: dict[str, Any]) -> Steps[Any]:
    """The statement's first row, or None."""
    rows = yield Fetch(sql, params)
    return rows[0] if rows else None


def cas(sql: str, params: dict[str, Any], renew: str | None = None) -> Steps[Any]:
    """Run a compare-and-swap statement; re-run it while its probe answers 'retry'.

    'retry' means the row changed between the refused UPDATE and the probe
    that explains the refusal, so neither answer is current. Each retry
    implies another writer made progress, so the loop terminates.

    'renew' means the tenant has entered a new budget period that nobody has
    renewed yet (docs/periods.md): ``renew`` (the ``renew_tenant``
    statement) renews it, then the statement runs again. That happens once
    per tenant and period, on its first write.
    """
    for _ in range(_CAS_ATTEMPTS):
        rows = yield Fetch(sql, params)
        if not rows:
            return None
        status = rows[0].status
        if status == "renew":
            yield from renew_first(renew, rows[0].tenant_id)
        elif status != "retry":
            return rows[0]
        _telemetry.cas_retry()
    raise errors.RetryableError(
        f"the tenant row changed {_CAS_ATTEMPTS} times while this operation was being "
        "decided; retry it"
    )


def renew_first(renew: str | None, tenant_id: str) -> Steps[None]:
    """Renew a tenant a statement found due (``renew_tenant``: exactly once per period)."""
    if renew is None:
        raise errors.DatabaseError(
            f"tenant {tenant_id!r} is due for renewal but this operation cannot renew it; "
            "this is a bug: please report it",
            sqlstate="LG001",
        )
    yield Fetch(renew, {"tenant_id": tenant_id})


def idempotent(
    q: Queries,
    tenant_id: str | None,
    key: str | None,
    request: dict[str, Any],
    outcome_type: type[OutcomeT],
    steps: Callable[[], Steps[OutcomeT]],
    routed: tuple[str, dict[str, Any]] | None = None,
) -> Op[OutcomeT]:
    """Run ``steps`` at most once per (tenant, idempotency key).

    Without a key this is just ``steps``. With one, the key is claimed, the
    operation applied and its outcome recorded in one transaction. A
    concurrent duplicate blocks on the claim until that transaction ends,
    then reads the recorded outcome; a later retry (for example after a lost
    connection) reads it too. The same key with a different request raises
    :class:`~ledger.errors.IdempotencyConflict`.

    ``routed`` names the operation (a key of :data:`ledger.citus.keyed.KEYED`)
    and its statement's parameters when the call is one of those: on a Citus
    schema where ``ledger distribute`` made its keyed function, claim,
    operation and record are then one routed call (``q.idempotent``, answered
    by :mod:`ledger.citus.keyed`), which falls back to these steps when its
    answer is not final. On one server ``q.idempotent`` gives back these steps.
    """
    if key is None:
        return Op(steps)
    assert tenant_id is not None
    request_hash = hashlib.sha256(
        json.dumps({"tenant_id": tenant_id, **request}, sort_keys=True).encode()
    ).digest()
    ids = {"tenant_id": tenant_id, "ikey": key}

    def replayed(stored_hash: Any, stored: Any) -> OutcomeT:
        return replay(outcome_type, stored_hash, stored, request_hash, tenant_id, key)

    def once() -> Steps[OutcomeT]:
        claimed = yield Fetch(q.idempotency_claim, {**ids, "request_hash": request_hash})
        if not claimed:
            row = (yield Fetch(q.idempotency_read, ids))[0]
            return replayed(row.request_hash, row.outcome)
        outcome = yield from steps()
        recorded = yield Fetch(
            q.idempotency_record, {**ids, "outcome": json.dumps(_record(outcome, tenant_id))}
        )
        if len(recorded) != 1:  # the claim this transaction made must be there to update
            raise errors.DatabaseError(
                f"recording the outcome of idempotency key {key!r} touched {len(recorded)} "
                "rows instead of 1; the operation was rolled back. This is a bug: please report it",
                sqlstate="LG001",
            )
        return outcome

    return q.idempotent(routed, request_hash, replayed, Op(once, "READ COMMITTED"))


def replay(
    outcome_type: type[OutcomeT],
    stored_hash: Any,
    stored: Any,
    request_hash: bytes,
    tenant_id: str,
    key: str,
) -> OutcomeT:
    """The recorded outcome of a key claimed before, as every path replays it."""
    if bytes(stored_hash) != request_hash:
        raise errors.IdempotencyConflict(tenant_id, key)
    if isinstance(stored, str):  # a driver that does not decode jsonb
        stored = json.loads(stored)
    if stored is None:  # claimed and committed without its outcome: impossible
        raise errors.DatabaseError(
            f"idempotency key {key!r} of tenant {tenant_id!r} is claimed but has no "
            "recorded outcome; this is a bug: please report it",
            sqlstate="LG001",
        )
    outcome = outcome_from_dict(outcome_type, stored)
    if outcome.status in _LIMITED and getattr(outcome, "limited_by", "") is None:
        outcome = replace(outcome, limited_by=tenant_id)  # type: ignore[call-arg]
    _telemetry.replayed(outcome.status)
    return outcome


#: The refusals that name the level that refused (``limited_by``).
_LIMITED = (Status.INSUFFICIENT, Status.EXPOSURE_LIMIT_EXCEEDED, Status.OVERFLOW, Status.OVERRUN)


def _record(outcome: Outcome, tenant_id: str) -> dict[str, Any]:
    """What a key records: the seed's shape, plus ``limited_by`` when it names another level.

    A flat tenant's refusal is limited by the tenant itself, so its record stays
    exactly what it was before nested budgets (and what Citus's keyed functions
    write); :func:`replay` restores ``limited_by`` from the key's tenant.
    """
    out = outcome.to_dict()
    limited_by = getattr(outcome, "limited_by", None)
    if limited_by is not None and limited_by != tenant_id:
        out["limited_by"] = limited_by
    return out


def ledger_wide(q: Queries, operation: str) -> Steps[None]:
    """Refuse a ledger-wide operation to a role confined to one tenant.

    ``ledger roles isolate`` gives a role a row-level security policy that
    shows it one tenant. Operations on that tenant are fine; operations that
    speak for the whole ledger are not: a certificate it issued would cover
    one tenant yet enter the ledger's history and move its baseline; a
    restore, an expiry sweep or key pruning would act on its slice only; and
    ``verify_journal`` would see checkpoints of tenants whose journal it
    cannot read and report false discrepancies. The check runs in the
    operation's own transaction (``tenant_scoped`` in ledger/sql/reads.sql).
    """
    row = yield from first_row(q.tenant_scoped, {})
    if row is not None and row.scoped:
        raise errors.TenantScopedRole(operation)


def _check_key_scope(tenant_id: str | None, key: str | None) -> None:
    """A settlement's idempotency key is scoped under the tenant the caller names."""
    if key is not None and tenant_id is None:
        raise errors.InputError(
            "idempotency keys are scoped per tenant: pass tenant_id= together with "
            "idempotency_key= to commit() and release()"
        )


# --------------------------------------------------------------------- tenants


def ensure_tenant(
    q: Queries, tenant_id: str, budget_microcents: int, parent: str | None = None
) -> Op[bool]:
    tenant_id = _validate.tenant_id(tenant_id)
    parent = None if parent is None else _validate.tenant_id(parent)
    budget = _validate.amount("budget_microcents", budget_microcents)
    if budget < 0:
        raise errors.AmountValueError(
            f"budget_microcents must be >= 0, got {budget}; to add funds use top_up_tenant()"
        )
    if parent is not None:
        q.check_nested("ensure_tenant with a parent")
    params = {"tenant_id": tenant_id, "budget": budget, "ikey": None, "parent": parent}

    def steps() -> Steps[bool]:
        row = yield from first_row(q.ensure_tenant, params)
        return bool(row.created)

    return Op(steps)


def top_up_tenant(
    q: Queries, tenant_id: str, amount_microcents: int, idempotency_key: str | None
) -> Op[TopUpOutcome]:
    tenant_id = _validate.tenant_id(tenant_id)
    amount = _validate.amount("amount_microcents", amount_microcents)
    key = _validate.idempotency_key(idempotency_key)
    params = {"tenant_id": tenant_id, "amount": amount, "ikey": key}

    def steps() -> Steps[TopUpOutcome]:
        if amount <= 0:
            return TopUpOutcome(Status.INVALID_AMOUNT)
        row = yield from cas(q.top_up, params, q.renew_tenant)
        return top_up_outcome(row, amount)

    request = {"op": "top_up", "amount": amount}
    routed = ("top_up", params) if amount > 0 else None
    return idempotent(q, tenant_id, key, request, TopUpOutcome, steps, routed)


def set_max_reserved(q: Queries, tenant_id: str, max_microcents: int) -> Op[None]:
    tenant_id = _validate.tenant_id(tenant_id)
    cap = max(_validate.amount("max_microcents", max_microcents), 0)
    params = {"tenant_id": tenant_id, "cap": cap, "ikey": None}

    def steps() -> Steps[None]:
        if (yield from cas(q.set_cap, params, q.renew_tenant)) is None:
            raise errors.TenantNotFound(Outcome(Status.MISSING_TENANT), tenant_id=tenant_id)

    return Op(steps)


# ------------------------------------------------------------- two-phase spend


def try_reserve(
    q: Queries,
    tenant_id: str,
    cost_microcents: int,
    ttl: timedelta | int | None,
    expires_at: datetime | None,
    idempotency_key: str | None,
) -> Op[ReserveOutcome]:
    tenant_id = _validate.tenant_id(tenant_id)
    cost = _validate.amount("cost_microcents", cost_microcents)
    ttl_us, deadline = _validate.expiry(ttl, expires_at)
    key = _validate.idempotency_key(idempotency_key)
    params = {
        "tenant_id": tenant_id,
        "amount": cost,
        "ttl_us": ttl_us,
        "expires_at": deadline,
        "ikey": key,
    }

    def steps() -> Steps[ReserveOutcome]:
        if cost <= 0:
            return ReserveOutcome(
                Status.INSUFFICIENT, remaining_microcents=0, required_microcents=cost
            )
        row = yield from reserve_row(q, params)
        if row is not None and row.lapsed_holds:
            # Lapsed holds must never block a reserve: expire them, decide again.
            # (A nested refusal names its level: the holds through that level.)
            level = getattr(row, "limited_by", None)
            if level is None:
                while (
                    yield from expire_one(q, q.expire_for_tenant, tenant_id=tenant_id)
                ) is not None:
                    pass
            else:
                while (yield from expire_one(q, q.expire_through, level=level)) is not None:
                    pass
            row = yield from reserve_row(q, params)
        return reserve_outcome(row, cost)

    request = {
        "op": "reserve",
        "amount": cost,
        "ttl_us": ttl_us,
        "expires_at": None if deadline is None else deadline.isoformat(),
    }
    routed = ("try_reserve", params) if cost > 0 else None
    return idempotent(q, tenant_id, key, request, ReserveOutcome, steps, routed)


def reserve_row(q: Queries, params: dict[str, Any]) -> Steps[Any]:
    """The flat reserve statement, or the nested one when it answers 'nested'.

    The flat statement applies only to a tenant without a parent, so a flat
    tenant pays nothing for nested budgets; a tenant with one costs one more
    statement (``nested_reserve``, revision 0010).
    """
    row = yield from cas(q.try_reserve, params, q.renew_tenant)
    if row is not None and row.status == "nested":
        row = yield from cas(q.nested_reserve, params, q.renew_tenant)
    return row


def settle_row(
    q: Queries, sql: str, kind: str, params: dict[str, Any], owner: str | None
) -> Steps[Any]:
    """A flat settlement statement, or ``nested_settle`` when the hold is nested."""
    row = yield from cas(sql, {**params, "tenant_id": owner}, q.renew_tenant)
    if row is not None and row.status == "nested":
        nested = {"actual": None, **params, "tenant_id": owner, "kind": kind}
        row = yield from cas(q.nested_settle, nested, q.renew_tenant)
    return row


def commit(
    q: Queries,
    reservation_id: int,
    actual_microcents: int,
    tenant_id: str | None,
    idempotency_key: str | None,
) -> Op[SettlementOutcome]:
    rid = _validate.reservation_id(reservation_id)
    actual = _validate.amount("actual_microcents", actual_microcents)
    tenant_id = None if tenant_id is None else _validate.tenant_id(tenant_id)
    key = _validate.idempotency_key(idempotency_key)
    _check_key_scope(tenant_id, key)
    params = {"reservation_id": rid, "actual": actual, "tenant_id": tenant_id, "ikey": key}

    def steps() -> Steps[SettlementOutcome]:
        if actual < 0:
            return SettlementOutcome(Status.INVALID_AMOUNT)
        if rid > I64_MAX:
            return SettlementOutcome(Status.MISSING_RESERVATION)
        owner = yield from q.hold_owner(rid, tenant_id)
        if owner is GONE:
            return (yield from missing(q, rid))
        sql = q.commit if owner is None else q.commit_for_tenant
        row = yield from settle_row(q, sql, "commit", params, owner)
        if row is None:
            return (yield from missing(q, rid))
        if row.status == "lapsed":
            return (yield from expire_lapsed(q, rid, owner))
        return commit_outcome(row, actual)

    request = {"op": "commit", "reservation_id": rid, "actual": actual}
    routed = ("commit", params) if actual >= 0 and rid <= I64_MAX else None
    return idempotent(q, tenant_id, key, request, SettlementOutcome, steps, routed)


def release(
    q: Queries, reservation_id: int, tenant_id: str | None, idempotency_key: str | None
) -> Op[SettlementOutcome]:
    rid = _validate.reservation_id(reservation_id)
    tenant_id = None if tenant_id is None else _validate.tenant_id(tenant_id)
    key = _validate.idempotency_key(idempotency_key)
    _check_key_scope(tenant_id, key)
    params = {"reservation_id": rid, "tenant_id": tenant_id, "ikey": key}

    def steps() -> Steps[SettlementOutcome]:
        if rid > I64_MAX:
            return SettlementOutcome(Status.MISSING_RESERVATION)
        owner = yield from q.hold_owner(rid, tenant_id)
        if owner is GONE:
            return (yield from missing(q, rid))
        sql = q.release if owner is None else q.release_for_tenant
        row = yield from settle_row(q, sql, "release", params, owner)
        if row is None:
            return (yield from missing(q, rid))
        if row.status == "lapsed":
            return (yield from expire_lapsed(q, rid, owner))
        return release_outcome(row)

    request = {"op": "release", "reservation_id": rid}
    routed = ("release", params) if rid <= I64_MAX else None
    return idempotent(q, tenant_id, key, request, SettlementOutcome, steps, routed)


# ---------------------------------------------------------------------- expiry


def expire_one(q: Queries, sql: str, **params: Any) -> Steps[Any]:
    """Expire one lapsed hold picked by ``sql``; its row, or None if there was none.

    A hold whose tenant is due for renewal is expired after the renewal (the
    statement answers 'renew'), so it settles against the right period.
    """
    params.setdefault("ikey", None)
    for _ in range(_CAS_ATTEMPTS):
        row = yield from first_row(sql, params)
        if row is not None and row.status == "nested":
            row = yield from expire_nested(q, row, params["ikey"])
            if row is None:
                continue  # another sweeper took it in between: pick again
        if row is None or row.status != "renew":
            if row is not None:
                _telemetry.expired(row.tenant_id, row.reservation_id, row.returned)
            return row
        yield from renew_first(q.renew_tenant, row.tenant_id)
    raise errors.RetryableError("a tenant kept entering new periods during an expiry; retry it")


def expire_lapsed(q: Queries, rid: int, tenant: str | None) -> Steps[SettlementOutcome]:
    """A settlement found its hold past the deadline: expire it, report ``expired``.

    The settlement found the hold under ``tenant`` when it had one: the expiry is
    then tenant-keyed too (``expire_hold_for_tenant``: routed on Citus).
    """
    if tenant is None:
        row = yield from expire_one(q, q.expire_hold, reservation_id=rid)
    else:
        row = yield from expire_one(
            q, q.expire_hold_for_tenant, reservation_id=rid, tenant_id=tenant
        )
    if row is None:  # a sweeper got there first
        return (yield from missing(q, rid))
    return SettlementOutcome(
        Status.EXPIRED, remaining_microcents=row.remaining, returned_microcents=row.returned
    )


def missing(q: Queries, rid: int) -> Steps[SettlementOutcome]:
    """The hold is gone: say ``expired`` if that is why, else ``missing_reservation``.

    Asked in a statement of its own so that it sees an expiry that committed
    while the settlement was waiting for the hold's lock.
    """
    row = yield from first_row(q.expired_hold, {"reservation_id": rid})
    if row is not None:
        return SettlementOutcome(Status.EXPIRED, returned_microcents=row.returned)
    return SettlementOutcome(Status.MISSING_RESERVATION)


def expire_holds(q: Queries, limit: int) -> Op[ExpiredHolds]:
    count = _validate.positive_count("limit", limit)

    def steps() -> Steps[ExpiredHolds]:
        yield from ledger_wide(q, "expire_holds")
        skipped: dict[str, str] = {}

        def one_server() -> Steps[int]:
            done = 0
            while done < count:
                row = yield from sweep_one(q, q.expire_any, skipped, skip=list(skipped))
                if row is None:
                    break
                done += row is not SKIPPED
            return done

        done = yield from q.sweep(count, skipped, one_server)
        return ExpiredHolds(done, tuple(SkippedTenant(t, e) for t, e in skipped.items()))

    return Op(steps)


def expire_nested(q: Queries, picked: Any, ikey: str | None) -> Steps[Any]:
    """Expire a nested hold an expiry statement picked, at every level it reserved at."""
    params = {
        "kind": "expire",
        "reservation_id": picked.reservation_id,
        "actual": None,
        "tenant_id": picked.tenant_id,
        "ikey": ikey,
    }
    return (yield from first_row(q.nested_settle, params))


#: sweep_one's answer when the hold's tenant could not be renewed (and is skipped).
SKIPPED = object()


def sweep_one(q: Queries, sql: str, skipped: dict[str, str], **params: Any) -> Steps[Any]:
    """:func:`expire_one` for the sweepers: a tenant that cannot be renewed is passed over.

    A lapsed hold of a tenant due for renewal is expired after the renewal. If
    that renewal fails (``try_renew_tenant`` answers its error), the tenant is
    added to ``skipped`` with the error and :data:`SKIPPED` comes back: the
    sweep goes on with the other tenants' holds, and one
    tenant never stops expiry for everyone (issue 22).
    """
    params.setdefault("ikey", None)
    for _ in range(_CAS_ATTEMPTS):
        row = yield from first_row(sql, params)
        holder = None  # a nested hold's own tenant, when a level above it is due
        if row is not None and row.status == "nested":
            holder = row.tenant_id
            row = yield from expire_nested(q, row, params["ikey"])
            if row is None:
                continue  # another sweeper took it in between: pick again
        if row is None or row.status != "renew":
            if row is not None:
                _telemetry.expired(row.tenant_id, row.reservation_id, row.returned)
            return row
        renewed = yield from first_row(q.try_renew_tenant, {"tenant_id": row.tenant_id})
        if renewed is not None and renewed.error is not None:
            skipped[row.tenant_id] = renewed.error
            if holder is not None:
                # The sweep skips holds by their own tenant: skip this one's too, or
                # the sweep would pick the same hold again and again.
                skipped.setdefault(holder, renewed.error)
            return SKIPPED
        if "skip" in params:
            params["skip"] = list(skipped)
    raise errors.RetryableError("a tenant kept entering new periods during an expiry; retry it")


def prune_idempotency_keys(q: Queries, older_than: timedelta) -> Op[int]:
    if not isinstance(older_than, timedelta) or older_than < timedelta(0):
        raise errors.InputError("older_than must be a non-negative datetime.timedelta")
    age_us = older_than // timedelta(microseconds=1)

    def steps() -> Steps[int]:
        yield from ledger_wide(q, "prune_idempotency_keys")
        row = yield from first_row(q.idempotency_prune, {"age_us": age_us})
        return int(row.pruned)

    return Op(steps)


# ----------------------------------------------------------------------- reads


def tenant_row(q: Queries, tenant_id: str) -> Op[Any]:
    """The tenant's balance columns, or None if it does not exist."""
    tenant_id = _validate.tenant_id(tenant_id)
    return Op(lambda: first_row(q.tenant, {"tenant_id": tenant_id}))


def counts(q: Queries) -> Op[Any]:
    """Tenants, open holds, lifetime spend and the certificate baseline, in one row."""
    return Op(lambda: first_row(q.counts, {}))


def snapshot_version(q: Queries) -> Op[int]:
    def steps() -> Steps[int]:
        row = yield from first_row(q.snapshot_version, {})
        return int(row.version)

    return Op(steps)


def _snapshot_from_rows(rows: list[Any]) -> BudgetSnapshot:
    first = rows[0]
    tenants = tuple(
        TenantLedger(
            r.tenant_id,
            r.initial_microcents,
            r.remaining_microcents,
            r.reserved_microcents,
            r.committed_microcents,
            getattr(r, "parent_id", None),
        )
        for r in rows
        if r.tenant_id is not None
    )
    return BudgetSnapshot(
        version=int(first.version), tenants=tenants, active_reservations=int(first.active)
    )


def snapshot(q: Queries) -> Op[BudgetSnapshot]:
    """Everything is read by one statement in REPEATABLE READ: it balances under load."""

    def steps() -> Steps[BudgetSnapshot]:
        return _snapshot_from_rows((yield Fetch(q.snapshot, {})))

    return Op(steps, "REPEATABLE READ")


def verify_conservation(q: Queries) -> Op[ConservationStatus]:
    def steps() -> Steps[ConservationStatus]:
        row = (yield Fetch(q.first_unbalanced, {}))[0]
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

    return Op(steps, "REPEATABLE READ")


# ----------------------------------------------------------- restore, certify


def restore_from_snapshot(q: Queries, snapshot: BudgetSnapshot) -> Op[None]:
    if not isinstance(snapshot, BudgetSnapshot):
        raise errors.MalformedSnapshot(
            f"restore_from_snapshot needs a BudgetSnapshot, got {type(snapshot).__name__}; "
            "load JSON with BudgetSnapshot.from_json()"
        )
    checked = BudgetSnapshot.from_dict(snapshot.to_dict())
    validate_for_restore(checked)
    if checked.version > I64_MAX:
        raise errors.AmountValueError(
            f"snapshot version {checked.version} exceeds the largest version PostgreSQL's "
            f"bigint sequence can hold ({I64_MAX})"
        )
    tenants = checked.tenants
    params = {
        "ids": [t.tenant_id for t in tenants],
        "initials": [t.initial_microcents for t in tenants],
        "remainings": [t.remaining_microcents for t in tenants],
        "committeds": [t.committed_microcents for t in tenants],
        "version": checked.version,
        "ikey": None,
    }
    tree = {
        "ids": [t.tenant_id for t in tenants if t.parent_id is not None],
        "parents": [t.parent_id for t in tenants if t.parent_id is not None],
    }

    def steps() -> Steps[None]:
        yield from ledger_wide(q, "restore_from_snapshot")
        yield Fetch(q.restore_lock, {})
        yield Fetch(q.restore_clear_holds, {})
        yield Fetch(q.restore_clear_tree, {})
        yield Fetch(q.restore_drop_tenants, params)
        yield Fetch(q.restore_update, params)
        yield Fetch(q.restore_insert, params)
        if tree["ids"]:
            q.check_nested("restore_from_snapshot of a snapshot with a tree")
            yield Fetch(q.restore_tree, tree)
        # Sequences are not transactional, so this goes last.
        yield Fetch(q.restore_version, params)

    return Op(steps, "READ COMMITTED")


def certify(q: Queries) -> Op[FinancialCertificate]:
    """Snapshot and checkpoint in one REPEATABLE READ statement, then store and rotate.

    The certified snapshot and its checkpoint (every tenant's chain head,
    balances and open holds) are written by one statement, so the
    certificate's ``journal_root`` pins exactly the history behind its
    digest. The baseline rotation is a second, short statement that locks
    the baseline row, so concurrent certifiers serialise on it instead of
    failing with serialization errors.
    """

    def snapshot_steps() -> Steps[tuple[FinancialCertificate, bytes, Any]]:
        yield from ledger_wide(q, "certify")
        rows = yield Fetch(q.certify_snapshot, {})
        root = RootHasher()
        for r in rows:
            if r.tenant_id is not None:  # ordered by tenant id, i.e. UTF-8 byte order
                root.update(r.tenant_id, r.journal_seq, bytes(r.journal_head))
        return certify_snapshot(_snapshot_from_rows(rows)), root.digest(), rows[0].checkpoint_id

    def store(drafted: tuple[FinancialCertificate, bytes, Any]) -> Op[FinancialCertificate]:
        draft, journal_root, checkpoint_id = drafted
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
            "checkpoint_id": checkpoint_id,
        }

        def steps() -> Steps[FinancialCertificate]:
            stored = yield from first_row(q.certify, params)
            return replace(
                draft,
                committed_since_last_certificate=int(stored.committed_since_last_certificate),
                certificate_id=int(stored.certificate_id),
                journal_root_hex=journal_root.hex(),
            )

        return Op(steps)

    return Op(snapshot_steps, "REPEATABLE READ", then=store)
