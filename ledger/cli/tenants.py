"""Tenants: ``ledger tenant create|top-up|limit|show|list|move|tree``."""

from __future__ import annotations

import click

from .. import _validate, errors
from ..outcomes import Outcome, Status
from .base import (
    Context,
    _amount,
    _emit,
    _money,
    _new_tenant_id,
    _outcome,
    _printable,
    _tenant_table,
    amount_settings,
    main,
    pass_ctx,
    units_option,
)


@main.group()
def tenant() -> None:
    """Create, fund, cap and inspect tenants."""


@tenant.command("create", context_settings=amount_settings)
@click.argument("tenant_id")
@click.argument("budget")
@click.option("--cap", default=None, help="Cap on the total of open holds.")
@click.option("--parent", default=None, help="Create it under this tenant (nested budgets).")
@units_option
@pass_ctx
def tenant_create(
    ctx: Context,
    tenant_id: str,
    budget: str,
    cap: str | None,
    parent: str | None,
    in_units: bool,
) -> None:
    """Create TENANT_ID with BUDGET (no-op if it exists)."""
    _new_tenant_id(tenant_id)
    amount = _amount(budget, in_units)
    # Checked before anything is written: a bad --cap must not leave a new tenant behind.
    max_reserved = None if cap is None else _validate.amount("--cap", _amount(cap, in_units))
    with ctx.ledger() as book:
        created = book.ensure_tenant(tenant_id, amount, parent)
        if max_reserved is not None:
            book.set_max_reserved_microcents(tenant_id, max_reserved)
        row = book.tenant(tenant_id)
    assert row is not None
    _emit(
        ctx,
        {"created": created, "tenant": row.to_dict()},
        lambda: click.echo(
            f"{'created' if created else 'already existed'}: {_printable(tenant_id)}"
        ),
    )


@tenant.command("top-up", context_settings=amount_settings)
@click.argument("tenant_id")
@click.argument("amount")
@units_option
@click.option("--idempotency-key", default=None, help="Retry-safe key.")
@pass_ctx
def tenant_top_up(
    ctx: Context, tenant_id: str, amount: str, in_units: bool, idempotency_key: str | None
) -> None:
    """Add AMOUNT to TENANT_ID's budget."""
    with ctx.ledger() as book:
        _outcome(
            ctx,
            book.top_up_tenant(
                tenant_id, _amount(amount, in_units), idempotency_key=idempotency_key
            ),
        )


@tenant.command("limit", context_settings=amount_settings)
@click.argument("tenant_id")
@click.argument("max_reserved")
@units_option
@pass_ctx
def tenant_limit(ctx: Context, tenant_id: str, max_reserved: str, in_units: bool) -> None:
    """Cap TENANT_ID's open holds at MAX_RESERVED (0 removes the cap)."""
    cap = _amount(max_reserved, in_units)
    with ctx.ledger() as book:
        book.set_max_reserved_microcents(tenant_id, cap)
    _emit(
        ctx,
        {"tenant_id": tenant_id, "max_reserved_microcents": max(cap, 0)},
        lambda: click.echo(f"{tenant_id}: cap {'removed' if cap <= 0 else _money(cap)}"),
    )


@tenant.command("show")
@click.argument("tenant_id")
@pass_ctx
def tenant_show(ctx: Context, tenant_id: str) -> None:
    """Show one tenant's balances."""
    with ctx.ledger() as book:
        row = book.tenant(tenant_id)
        cap = book.max_reserved_microcents(tenant_id)
    if row is None:
        raise errors.TenantNotFound(Outcome(Status.MISSING_TENANT), tenant_id=tenant_id)
    payload = {**row.to_dict(), "max_reserved_microcents": cap}

    def human() -> None:
        _tenant_table([row])
        click.echo(f"cap on open holds: {_money(cap) if cap else 'none'}")

    _emit(ctx, payload, human)


@tenant.command("list")
@pass_ctx
def tenant_list(ctx: Context) -> None:
    """List every tenant (a consistent snapshot)."""
    with ctx.ledger() as book:
        snap = book.snapshot()
    _emit(
        ctx,
        {"tenants": [t.to_dict() for t in snap.tenants]},
        lambda: _tenant_table(list(snap.tenants)),
    )


@tenant.command("move")
@click.argument("tenant_id")
@click.argument("parent", required=False)
@click.option("--root", is_flag=True, help="Make TENANT_ID a root (no parent).")
@pass_ctx
def tenant_move(ctx: Context, tenant_id: str, parent: str | None, root: bool) -> None:
    """Move TENANT_ID and its subtree under PARENT (or --root). No money moves."""
    if (parent is None) == (not root):
        raise click.UsageError("give either PARENT or --root")
    with ctx.ledger() as book:
        book.set_parent(tenant_id, parent)
    _emit(
        ctx,
        {"tenant_id": tenant_id, "parent_id": parent},
        lambda: click.echo(
            f"{_printable(tenant_id)}: "
            + ("now a root" if parent is None else f"now under {_printable(parent)}")
        ),
    )


@tenant.command("tree")
@click.argument("tenant_id")
@pass_ctx
def tenant_tree(ctx: Context, tenant_id: str) -> None:
    """Show TENANT_ID and every tenant below it, with their balances."""
    with ctx.ledger() as book:
        nodes = book.subtree(tenant_id)
        rows = {n.tenant_id: book.tenant(n.tenant_id) for n in nodes}
    payload = {
        "tenants": [
            {"depth": n.depth, **row.to_dict(), "parent_id": n.parent_id}
            for n in nodes
            if (row := rows[n.tenant_id]) is not None
        ]
    }

    def human() -> None:
        children: dict[str | None, list[str]] = {}
        depth = {n.tenant_id: n.depth for n in nodes}
        for n in nodes:
            children.setdefault(n.parent_id, []).append(n.tenant_id)

        def show(tid: str) -> None:
            row = rows[tid]
            if row is None:  # removed while we read
                return
            click.echo(
                "  " * depth[tid]
                + f"{_printable(tid)}  remaining {_money(row.remaining_microcents)}"
                + f"  reserved {_money(row.reserved_microcents)}"
                + f"  committed {_money(row.committed_microcents)}"
            )
            for child in children.get(tid, []):
                show(child)

        show(nodes[0].tenant_id)

    _emit(ctx, payload, human)
