"""``ledger stats``: spend, holds and refusals of the last minutes, for an operator."""

from __future__ import annotations

from typing import Any

import click

from .base import (
    Context,
    _emit,
    _money,
    _printable,
    main,
    pass_ctx,
)


@main.command()
@click.option(
    "--minutes", default=60, show_default=True, help="Count refusals of the last N minutes."
)
@click.option("--top", default=5, show_default=True, help="How many tenants to list.")
@pass_ctx
def stats(ctx: Context, minutes: int, top: int) -> None:
    """A quick look at a live ledger: holds, recent refusals, top spenders, due renewals.

    Refusals are counted from the journal, which records the refusals of an
    existing tenant (insufficient, cap, overrun, ...). A refusal that touches
    no tenant's row is not journaled and not counted: an amount of 0 or less,
    an unknown tenant, an unknown or settled hold.
    """
    with ctx.ledger() as book:
        found = book.stats(minutes=minutes, top=top)
    _emit(ctx, found.to_dict(), lambda: _stats_text(found))


def _stats_text(found: Any) -> None:
    click.echo(
        f"open holds: {found.open_holds} (lapsed: {found.lapsed_holds}, "
        f"oldest: {found.oldest_hold_age_seconds:.0f} s)"
    )
    click.echo(
        f"refusals in the last {found.refusal_window_minutes} min: {found.refused} "
        "(journaled ones: not amounts <= 0, unknown tenants or holds)"
    )
    for op, status, n in found.refusals:
        click.echo(f"  {op} {status}: {n}")
    click.echo("largest tenants by spend:")
    for tenant_id, committed in found.top_spenders:
        click.echo(f"  {_printable(tenant_id)}: {_money(committed)}")
    click.echo(f"renewals due: {found.renewals_due}")
    for tenant_id, at in found.due:
        click.echo(f"  {_printable(tenant_id)}: since {at.isoformat()}")
