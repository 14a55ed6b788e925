"""Two-phase spend: ``ledger reserve``, ``commit``, ``release``."""

from __future__ import annotations

import sys

import click

from .base import (
    EXIT_REFUSED,
    Context,
    _amount,
    _outcome,
    amount_settings,
    key_option,
    main,
    pass_ctx,
    units_option,
)


@main.command(context_settings=amount_settings)
@click.argument("tenant_id")
@click.argument("amount")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print the reservation id alone (a refusal: its status, on standard error).",
)
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=None,
    help="Seconds until the hold expires by itself.",
)
@key_option
@units_option
@pass_ctx
def reserve(
    ctx: Context,
    tenant_id: str,
    amount: str,
    ttl: int | None,
    idempotency_key: str | None,
    in_units: bool,
    quiet: bool,
) -> None:
    """Place a hold of AMOUNT on TENANT_ID.

    Prints the status, the reservation id and the balances; with -q, the
    reservation id alone (for scripts: RID=$(ledger reserve -q acme 500)).
    """
    cost = _amount(amount, in_units)
    with ctx.ledger() as book:
        outcome = book.try_reserve(tenant_id, cost, ttl=ttl, idempotency_key=idempotency_key)
    if quiet and not ctx.as_json:
        if not outcome.ok:
            click.echo(f"refused: {outcome.status}", err=True)
            sys.exit(EXIT_REFUSED)
        click.echo(str(outcome.reservation_id))
        return
    _outcome(ctx, outcome)


@main.command(context_settings=amount_settings)
@click.argument("reservation_id", type=click.IntRange(min=1))
@click.argument("actual")
@click.option("--tenant", "tenant_id", default=None, help="The hold's tenant (faster lookup).")
@key_option
@units_option
@pass_ctx
def commit(
    ctx: Context,
    reservation_id: int,
    actual: str,
    tenant_id: str | None,
    idempotency_key: str | None,
    in_units: bool,
) -> None:
    """Settle RESERVATION_ID at ACTUAL cost (surplus refunded)."""
    with ctx.ledger() as book:
        outcome = book.commit(
            reservation_id,
            _amount(actual, in_units),
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
        )
    _outcome(ctx, outcome)


@main.command()
@click.argument("reservation_id", type=click.IntRange(min=1))
@click.option("--tenant", "tenant_id", default=None, help="The hold's tenant (faster lookup).")
@key_option
@pass_ctx
def release(
    ctx: Context, reservation_id: int, tenant_id: str | None, idempotency_key: str | None
) -> None:
    """Cancel RESERVATION_ID, returning its amount."""
    with ctx.ledger() as book:
        _outcome(
            ctx, book.release(reservation_id, tenant_id=tenant_id, idempotency_key=idempotency_key)
        )
