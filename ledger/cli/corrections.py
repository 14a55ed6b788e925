"""Corrections after the fact: ``ledger refund`` and ``ledger adjust``, journaled with a reason."""

from __future__ import annotations

import click

from .base import (
    Context,
    _amount,
    _outcome,
    correction_key_option,
    main,
    pass_ctx,
    reason_option,
    units_option,
)


@main.command()
@click.argument("tenant_id")
@click.argument("reservation_id", type=int)
@click.argument("amount")
@reason_option
@correction_key_option
@units_option
@pass_ctx
def refund(
    ctx: Context,
    tenant_id: str,
    reservation_id: int,
    amount: str,
    reason: str,
    idempotency_key: str | None,
    in_units: bool,
) -> None:
    """Give back AMOUNT of TENANT_ID's commit of hold RESERVATION_ID.

    Never more than the commit left after earlier refunds (docs/corrections.md).
    """
    with ctx.ledger() as book:
        outcome = book.refund(
            tenant_id,
            reservation_id,
            _amount(amount, in_units),
            reason=reason,
            idempotency_key=idempotency_key,
        )
    _outcome(ctx, outcome)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("tenant_id")
@click.argument("amount")
@reason_option
@correction_key_option
@units_option
@pass_ctx
def adjust(
    ctx: Context,
    tenant_id: str,
    amount: str,
    reason: str,
    idempotency_key: str | None,
    in_units: bool,
) -> None:
    """Change TENANT_ID's budget by AMOUNT, which may be negative (-500).

    Initial and remaining move together; a negative amount larger than what
    remains is refused.
    """
    with ctx.ledger() as book:
        outcome = book.adjust(
            tenant_id,
            _amount(amount, in_units, negative_ok=True),
            reason=reason,
            idempotency_key=idempotency_key,
        )
    _outcome(ctx, outcome)
