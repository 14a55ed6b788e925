"""Nested budgets: the tenant tree's operations, written once as steps.

A tenant may have a parent (``tenants.parent_id``, revision 0010). A hold
placed at a tenant with a parent reserves at it and at every ancestor, in one
transaction (``nested_reserve``), and settles at exactly those levels
(``nested_settle``); those two are reached from the single operations in
:mod:`ledger._operations` when a flat statement answers ``nested``. This
module holds what only the tree has: moving a subtree, and reading children
and subtrees. The database refuses cycles, trees deeper than
:data:`MAX_TREE_DEPTH` and unknown parents itself (the ``tree_guard``
trigger), so raw SQL cannot build a bad tree either.
"""

from __future__ import annotations

from typing import NamedTuple

from . import _validate, errors
from ._queries import Queries
from ._requests import Fetch, Op, Steps
from .outcomes import Outcome, Status

#: The deepest tree allowed, counting the root (revision 0010's MAX_DEPTH).
MAX_TREE_DEPTH = 8


class TreeNode(NamedTuple):
    """One tenant of a subtree: its id, its parent's, and its depth below the subtree's root."""

    tenant_id: str
    parent_id: str | None
    depth: int


def _missing(tenant_id: str) -> errors.TenantNotFound:
    return errors.TenantNotFound(Outcome(Status.MISSING_TENANT), tenant_id=tenant_id)


def set_parent(q: Queries, tenant_id: str, parent: str | None) -> Op[None]:
    """Move ``tenant_id`` (and its subtree) under ``parent``, or make it a root.

    No money moves: holds placed before the move settle at the levels they
    reserved at (``reservations.ancestor_ids``); only new holds see the new
    ancestors. Refused with a typed error: an unknown tenant, an unknown
    parent, a cycle, a tree too deep. Nothing changes then.
    """
    tenant_id = _validate.tenant_id(tenant_id)
    parent = None if parent is None else _validate.tenant_id(parent)
    q.check_nested("set_parent")

    def steps() -> Steps[None]:
        rows = yield Fetch(q.set_parent, {"tenant_id": tenant_id, "parent": parent})
        if not rows:
            raise _missing(tenant_id)

    return Op(steps, "READ COMMITTED")


def children(q: Queries, tenant_id: str) -> Op[list[str]]:
    """The ids of a tenant's children, in byte order (TenantNotFound if it does not exist)."""
    tenant_id = _validate.tenant_id(tenant_id)

    def steps() -> Steps[list[str]]:
        rows = yield Fetch(q.children, {"tenant_id": tenant_id})
        if not rows:
            raise _missing(tenant_id)
        return [r.child for r in rows if r.child is not None]

    return Op(steps)


def subtree(q: Queries, tenant_id: str) -> Op[list[TreeNode]]:
    """The tenant and every tenant below it, level by level (TenantNotFound if none)."""
    tenant_id = _validate.tenant_id(tenant_id)

    def steps() -> Steps[list[TreeNode]]:
        rows = yield Fetch(q.subtree, {"tenant_id": tenant_id})
        if not rows:
            raise _missing(tenant_id)
        return [TreeNode(r.tenant_id, r.parent_id, int(r.depth)) for r in rows]

    return Op(steps)
