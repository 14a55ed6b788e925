"""The steps that differ on a distributed schema, answered by :class:`DistributedQueries`.

Citus refuses a locking read that does not filter by the tenant (the
distribution column), so what plain PostgreSQL does in one statement by
reservation id alone is split here into a non-locking read that finds the
tenant, then tenant-keyed statements, which Citus routes to the tenant's
worker and which lock and re-check everything themselves
(ledger/sql/distributed.sql, docs/scale-out.md). The core operations
(:mod:`ledger._operations`, :mod:`ledger._batch`) call these through the
statements object, never by testing for Citus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .. import _operations as ops
from .._batch import one_by_one
from .._queries import GONE, Gone, OutcomeT, Queries, Settlement
from .._requests import Fetch, Op, Steps
from .._validate import I64_MAX


def hold_owner(q: Queries, rid: int, tenant_id: str | None) -> Steps[str | Gone | None]:
    """The tenant to settle hold ``rid`` under: the caller's, or else the hold's own.

    Read without a lock (``hold_tenant``: one command per shard); the settlement
    then locks the hold under that tenant and re-checks it. :data:`GONE` if there
    is no such hold.
    """
    if tenant_id is not None:
        return tenant_id
    row = yield from ops.first_row(q.hold_tenant, {"reservation_id": rid})
    return GONE if row is None else str(row.tenant_id)


def sweep_by_tenant(q: Queries, count: int, skipped: dict[str, str]) -> Steps[int]:
    """``expire_holds`` on Citus: candidates read without a lock, each expired per tenant.

    Citus refuses ``expire_any``'s ``FOR UPDATE SKIP LOCKED`` across shards. The
    oldest lapsed holds are read without a lock (``expire_candidates``); for each,
    its tenant's oldest lapsed hold is expired by ``expire_for_tenant``, routed to
    the tenant's worker, which locks it (``SKIP LOCKED``) and re-checks the
    deadline. A hold expired or settled meanwhile by another sweeper or a
    settlement is deleted under that lock, so it is skipped here: each hold is
    expired exactly once. A round that expires nothing (every candidate taken by
    someone else, or locked) ends the sweep, as SKIP LOCKED does on one server.
    """
    done = 0
    while done < count:
        wanted = count - done
        rows = yield Fetch(q.expire_candidates, {"limit": wanted})
        per_tenant: dict[str, int] = {}
        for r in rows:
            per_tenant[r.tenant_id] = per_tenant.get(r.tenant_id, 0) + 1
        progress = 0
        for tenant, holds in per_tenant.items():
            for _ in range(holds):
                if tenant in skipped:
                    break
                row = yield from ops.sweep_one(q, q.expire_for_tenant, skipped, tenant_id=tenant)
                if row is None or row is ops.SKIPPED:
                    break
                progress += 1
        done += progress
        if progress == 0 or len(rows) < wanted:
            break
    return done


def lock_on_workers(q: Queries, holds: list[tuple[int, str]], tenants: list[str]) -> Steps[None]:
    """Lock a batch's holds, then its tenants, each by a routed statement.

    The same order as ``batch_*_begin`` on one server and as single settlements
    (hold, then tenant), by id, so batches and single operations never wait on
    each other in a cycle; then the items are applied one by one.
    """
    for rid, tenant in holds:
        yield Fetch(q.lock_hold, {"tenant_id": tenant, "reservation_id": rid})
    for tenant in tenants:
        yield Fetch(q.lock_tenant, {"tenant_id": tenant})


def reserve_on_workers(
    q: Queries, tenants: list[str], singles: Callable[[], Iterator[Op[OutcomeT]]]
) -> Steps[list[OutcomeT]]:
    """Reserve batches on Citus: lock the tenants, then item by item."""
    yield from lock_on_workers(q, [], tenants)
    return (yield from one_by_one(singles)())


def settle_on_workers(
    q: Queries, prepared: list[Settlement], single: Callable[[Settlement], Op[OutcomeT]]
) -> Steps[list[OutcomeT]]:
    """Commit or release batches on Citus: find each hold's tenant, lock, then item by item.

    A hold's tenant is read once (``hold_tenant``, no lock) and then passed to its
    item's settlement, which finds the hold under it again, locked.
    """
    found: dict[int, str] = {}
    for rid, _, tenant_id, _ in prepared:
        if rid <= I64_MAX and rid not in found:
            owner = yield from hold_owner(q, rid, tenant_id)
            if isinstance(owner, str):
                found[rid] = owner
    yield from lock_on_workers(q, sorted(found.items()), sorted(set(found.values())))
    filled = [(rid, actual, given or found.get(rid), key) for rid, actual, given, key in prepared]
    return (yield from one_by_one(lambda: (single(p) for p in filled))())
