"""The sweepers an operator runs from cron: ``ledger expire``, ``renew``, ``prune-keys``."""

from __future__ import annotations

import click

from .base import (
    Context,
    _emit,
    main,
    pass_ctx,
)


@main.command()
@click.option("--limit", default=1000, show_default=True, help="Most holds to expire.")
@pass_ctx
def expire(ctx: Context, limit: int) -> None:
    """Expire holds past their deadline (safe to run from many processes)."""
    with ctx.ledger() as book:
        n = book.expire_holds(limit=limit)
    _emit(ctx, {"expired": n}, lambda: click.echo(f"expired {n} holds"))


@main.command()
@click.option("--limit", default=1000, show_default=True, help="Most tenants to renew.")
@pass_ctx
def renew(ctx: Context, limit: int) -> None:
    """Renew tenants whose budget period has ended (the sweeper; safe in parallel)."""
    with ctx.ledger() as book:
        done = book.renew_periods(limit=limit)
    _emit(
        ctx,
        {"tenants": done.tenants, "periods": done.periods},
        lambda: click.echo(f"renewed {done.tenants} tenants ({done.periods} periods)"),
    )


@main.command("prune-keys")
@click.option(
    "--older-than-hours",
    default=24,
    show_default=True,
    type=int,
    help="Forget idempotency keys older than this.",
)
@pass_ctx
def prune_keys(ctx: Context, older_than_hours: int) -> None:
    """Forget old idempotency keys."""
    from datetime import timedelta

    if older_than_hours < 0:
        raise click.BadParameter("must be >= 0", param_hint="--older-than-hours")
    with ctx.ledger() as book:
        n = book.prune_idempotency_keys(timedelta(hours=older_than_hours))
    _emit(ctx, {"pruned": n}, lambda: click.echo(f"pruned {n} idempotency keys"))
