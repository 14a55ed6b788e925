"""As-of queries: ``ledger balances --at``, ``ledger spend``, ``ledger asof-checkpoint``."""

from __future__ import annotations

from datetime import datetime

import click

from ..snapshot import TenantLedger
from .base import (
    EXIT_REFUSED,
    Context,
    _emit,
    _fail,
    _money,
    _tenant_table,
    main,
    pass_ctx,
)


def _instant(value: str, option: str) -> datetime:
    """An ISO 8601 time with its offset (2026-11-01T00:00:00+01:00, or ...Z for UTC)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time; write e.g. 2026-11-01T00:00:00Z",
            param_hint=option,
        ) from exc
    if parsed.tzinfo is None:
        raise click.BadParameter(
            f"{value!r} has no UTC offset; add one (Z, +01:00) so the time is unambiguous",
            param_hint=option,
        )
    return parsed


@main.command()
@click.option(
    "--at", "at", required=True, help="ISO 8601 time with offset, e.g. 2026-11-01T00:00Z."
)
@click.option("--tenant", "tenant_id", default=None, help="One tenant (default: every tenant).")
@pass_ctx
def balances(ctx: Context, at: str, tenant_id: str | None) -> None:
    """Balances at a past time, from the journal (docs/asof.md)."""
    when = _instant(at, "--at")
    with ctx.ledger() as book:
        if tenant_id is None:
            rows = book.balances_at(when)
        else:
            one = book.balance_at(tenant_id, when)
            if one is None:
                _fail(
                    EXIT_REFUSED, f"tenant {tenant_id!r} did not exist at {when.isoformat()}", ctx
                )
            rows = [one]

    def human() -> None:
        click.echo(f"balances at {when.isoformat()}")
        _tenant_table(
            [
                TenantLedger(
                    r.tenant_id,
                    r.initial_microcents,
                    r.remaining_microcents,
                    r.reserved_microcents,
                    r.committed_microcents,
                )
                for r in rows
            ]
        )

    _emit(ctx, {"at": when.isoformat(), "tenants": [r.to_dict() for r in rows]}, human)


@main.command()
@click.option("--from", "start", required=True, help="Start (exclusive), ISO 8601 with offset.")
@click.option("--to", "end", required=True, help="End (inclusive), ISO 8601 with offset.")
@click.option("--tenant", "tenant_id", default=None, help="One tenant (default: every tenant).")
@pass_ctx
def spend(ctx: Context, start: str, end: str, tenant_id: str | None) -> None:
    """Spend (commits minus refunds) between two times, from the journal (docs/asof.md)."""
    lo, hi = _instant(start, "--from"), _instant(end, "--to")
    with ctx.ledger() as book:
        report = book.spend_between(lo, hi, tenant_id=tenant_id)

    def human() -> None:
        click.echo(f"spend after {lo.isoformat()} up to {hi.isoformat()}")
        for t in report.tenants:
            click.echo(
                f"  {t.tenant_id}: {_money(t.spent_microcents)} ({t.commits} commits, "
                f"{t.refunds} refunds)"
            )
        click.echo(f"total: {_money(report.spent_microcents)}")

    _emit(ctx, report.to_dict(), human)


@main.command("asof-checkpoint")
@pass_ctx
def asof_checkpoint(ctx: Context) -> None:
    """Record each tenant's chain position and latest stamp, so as-of queries scan less."""
    with ctx.ledger() as book:
        done = book.asof_checkpoint()
    _emit(
        ctx,
        done.to_dict(),
        lambda: click.echo(
            f"checkpointed {done.tenants} tenants ({done.entries} new journal entries covered)"
        ),
    )
