"""Thresholds and alerts: ``ledger threshold set|clear|list``, ``ledger alerts [deliver]``."""

from __future__ import annotations

from datetime import timedelta

import click

from .. import webhook
from .base import Context, _amount, _emit, _fail, _money, main, pass_ctx, units_option


@main.group()
def threshold() -> None:
    """Thresholds that record an alert when a tenant's spend crosses them (docs/alerts.md)."""


@threshold.command("set")
@click.argument("tenant_id")
@click.argument("name")
@click.option("--spent", default=None, help="Fire when the period's spend reaches AMOUNT.")
@click.option(
    "--percent", default=None, help="Fire at this share of the allowance (or of initial)."
)
@click.option("--remaining-below", default=None, help="Fire when remaining falls below AMOUNT.")
@units_option
@pass_ctx
def threshold_set(
    ctx: Context,
    tenant_id: str,
    name: str,
    spent: str | None,
    percent: str | None,
    remaining_below: str | None,
    in_units: bool,
) -> None:
    """Set (or replace) threshold NAME of TENANT_ID: exactly one of the three levels."""
    from decimal import Decimal, InvalidOperation

    share: Decimal | None = None
    if percent is not None:
        try:
            share = Decimal(percent)
        except InvalidOperation:
            raise click.BadParameter(
                f"{percent!r} is not a number", param_hint="--percent"
            ) from None
    with ctx.ledger() as book:
        created = book.set_threshold(
            tenant_id,
            name,
            spent_microcents=None if spent is None else _amount(spent, in_units),
            spent_percent=share,
            remaining_below_microcents=None
            if remaining_below is None
            else _amount(remaining_below, in_units),
        )
    _emit(
        ctx,
        {"tenant_id": tenant_id, "name": name, "created": created},
        lambda: click.echo(
            f"{'set' if created else 'replaced'} threshold {name!r} of {tenant_id!r}"
        ),
    )


@threshold.command("clear")
@click.argument("tenant_id")
@click.argument("name")
@pass_ctx
def threshold_clear(ctx: Context, tenant_id: str, name: str) -> None:
    """Delete threshold NAME of TENANT_ID (exit 1 if it did not exist)."""
    with ctx.ledger() as book:
        cleared = book.clear_threshold(tenant_id, name)
    if not cleared:
        _fail(1, f"tenant {tenant_id!r} has no threshold {name!r}", ctx)
    _emit(
        ctx,
        {"tenant_id": tenant_id, "name": name, "cleared": True},
        lambda: click.echo(f"cleared threshold {name!r} of {tenant_id!r}"),
    )


@threshold.command("list")
@click.argument("tenant_id")
@pass_ctx
def threshold_list(ctx: Context, tenant_id: str) -> None:
    """The thresholds of TENANT_ID."""
    with ctx.ledger() as book:
        found = book.thresholds(tenant_id)

    def human() -> None:
        if not found:
            click.echo(f"{tenant_id!r} has no thresholds")
        for t in found:
            level = (
                f"spent >= {_money(t.spent_microcents)}"
                if t.kind == "spent"
                else f"spent >= {t.spent_percent}%"
                if t.kind == "spent_percent"
                else f"remaining < {_money(t.remaining_below_microcents)}"
            )
            click.echo(f"{t.name}: {level}")

    _emit(ctx, {"tenant_id": tenant_id, "thresholds": [t.to_dict() for t in found]}, human)


@main.group(invoke_without_command=True)
@click.option("--tenant", "tenant_id", default=None, help="One tenant's alerts only.")
@click.option("--undelivered", is_flag=True, help="Only alerts not yet delivered.")
@click.option("--limit", default=50, show_default=True, help="At most this many, newest first.")
@click.pass_context
def alerts(click_ctx: click.Context, tenant_id: str | None, undelivered: bool, limit: int) -> None:
    """The alerts outbox, newest first; `ledger alerts deliver` posts them to a webhook."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    with ctx.ledger() as book:
        records = book.list_alerts(tenant_id, undelivered=undelivered, limit=limit)

    def human() -> None:
        if not records:
            click.echo("no alerts")
        for r in records:
            a = r.alert
            state = "delivered" if r.delivered_at is not None else f"pending ({a.attempts} tries)"
            period = "" if a.period_index is None else f" period {a.period_index}"
            click.echo(
                f"#{a.alert_id} {a.tenant_id} {a.threshold}{period}: "
                f"spent {_money(a.spent_microcents)}, "
                f"remaining {_money(a.remaining_microcents)}, {state}"
            )

    _emit(ctx, {"alerts": [r.to_dict() for r in records]}, human)


@alerts.command("deliver")
@click.option("--url", required=True, help="Webhook URL (http or https) to POST each alert to.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per request.")
@click.option("--backoff", default=1.0, show_default=True, help="First retry delay (doubles).")
@click.option("--max-backoff", default=300.0, show_default=True, help="Longest retry delay.")
@click.option("--lease", default=60.0, show_default=True, help="Seconds an alert stays claimed.")
@click.option(
    "--listen-url",
    default=None,
    help="LISTEN here (a direct connection past a transaction pooler).",
)
@click.option("--no-listen", is_flag=True, help="Poll only (behind a transaction pooler).")
@click.option("--poll-interval", default=1.0, show_default=True, help="Seconds between polls.")
@click.option("--idle-timeout", default=None, type=float, help="Stop after this long idle.")
@click.option("--max-alerts", default=None, type=int, help="Stop after this many delivered.")
@pass_ctx
def alerts_deliver(
    ctx: Context,
    url: str,
    timeout: float,
    backoff: float,
    max_backoff: float,
    lease: float,
    listen_url: str | None,
    no_listen: bool,
    poll_interval: float,
    idle_timeout: float | None,
    max_alerts: int | None,
) -> None:
    """POST each alert to --url as JSON, with retries and exponential backoff."""
    listen: bool | str = False if no_listen else (listen_url or True)
    with ctx.ledger() as book:
        done = webhook.deliver(
            book,
            url,
            timeout=timeout,
            backoff=backoff,
            max_backoff=max_backoff,
            lease=timedelta(seconds=lease),
            listen=listen,
            poll_interval=poll_interval,
            idle_timeout=idle_timeout,
            max_alerts=max_alerts,
        )
    _emit(
        ctx,
        {"delivered": done.delivered, "failed_attempts": done.failed_attempts},
        lambda: click.echo(
            f"delivered {done.delivered} alert(s); {done.failed_attempts} failed attempt(s)"
        ),
    )
