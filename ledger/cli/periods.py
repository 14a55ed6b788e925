"""Allowances and periods: ``ledger allowance set|clear`` and ``ledger period``."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import click

from .. import _periods
from .base import (
    Context,
    _amount,
    _emit,
    _money,
    _outcome,
    main,
    pass_ctx,
    units_option,
)


def _default_anchor(zone: str, months: int) -> datetime:
    """The start of the current local month (months=N) or day (days=N) in ``zone``."""
    now = datetime.now(ZoneInfo(_periods.time_zone(zone)))
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start.replace(day=1) if months else start


def _parse_anchor(value: str | None, zone: str, months: int) -> datetime:
    if value is None:
        return _default_anchor(zone, months)
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (for example 2026-01-01T00:00)",
            param_hint="--anchor",
        ) from exc
    # A local time without an offset means local time in the allowance's zone.
    return at if at.tzinfo is not None else at.replace(tzinfo=ZoneInfo(_periods.time_zone(zone)))


@main.group()
def allowance() -> None:
    """Recurring allowances: a budget that renews every period (docs/periods.md)."""


@allowance.command("set")
@click.argument("tenant_id")
@click.argument("amount")
@click.option("--months", default=0, show_default=True, help="Period length in calendar months.")
@click.option("--days", default=0, show_default=True, help="Period length in days.")
@click.option(
    "--anchor",
    default=None,
    help="A boundary of the schedule, ISO 8601 (default: start of this local month or day).",
)
@click.option("--time-zone", "zone", default="UTC", show_default=True, help="IANA zone.")
@click.option("--min-rollover", default="0", show_default=True, help="Least carried over.")
@click.option(
    "--max-rollover", default="0", show_default=True, help="Most carried over (0: reset)."
)
@units_option
@click.option("--idempotency-key", default=None, help="Retry-safe key.")
@pass_ctx
def allowance_set(
    ctx: Context,
    tenant_id: str,
    amount: str,
    months: int,
    days: int,
    anchor: str | None,
    zone: str,
    min_rollover: str,
    max_rollover: str,
    in_units: bool,
    idempotency_key: str | None,
) -> None:
    """Give TENANT_ID AMOUNT every period (--months N or --days N)."""
    at = _parse_anchor(anchor, zone, months)
    with ctx.ledger() as book:
        _outcome(
            ctx,
            book.set_allowance(
                tenant_id,
                _amount(amount, in_units),
                months=months,
                days=days,
                anchor=at,
                time_zone=zone,
                min_rollover_microcents=_amount(min_rollover, in_units),
                max_rollover_microcents=_amount(max_rollover, in_units),
                idempotency_key=idempotency_key,
            ),
        )


@allowance.command("clear")
@click.argument("tenant_id")
@click.option("--idempotency-key", default=None, help="Retry-safe key.")
@pass_ctx
def allowance_clear(ctx: Context, tenant_id: str, idempotency_key: str | None) -> None:
    """Stop renewing TENANT_ID (its remaining budget is kept)."""
    with ctx.ledger() as book:
        _outcome(ctx, book.clear_allowance(tenant_id, idempotency_key=idempotency_key))


@main.command()
@click.argument("tenant_id")
@click.option("--index", "period_index", type=int, default=None, help="Period (default: now).")
@pass_ctx
def period(ctx: Context, tenant_id: str, period_index: int | None) -> None:
    """What TENANT_ID spent in a budget period (the current one by default)."""
    with ctx.ledger() as book:
        spend = book.period_spend(tenant_id, period_index)
    payload = spend.to_dict()

    def human() -> None:
        label = "current" if spend.is_current else f"current is {spend.current_period_index}"
        click.secho(f"period {spend.period_index} ({label})", bold=True)
        click.echo(f"  from {spend.starts_at.isoformat()} to {spend.ends_at.isoformat()}")
        click.echo(f"  allowance: {_money(spend.allowance_microcents)}")
        click.echo(f"  spent:     {_money(spend.spent_microcents)}")
        click.echo(f"  held:      {_money(spend.held_microcents)}")
        click.echo(f"  remaining: {_money(spend.remaining_microcents)}")

    _emit(ctx, payload, human)
