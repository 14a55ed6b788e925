"""``ledger dashboard``: the read-only screen.

The app itself is in ledger/dashboard/; docs/dashboard.md shows it.
"""

from __future__ import annotations

import sys

import click

from .base import (
    Context,
    _emit,
    main,
    pass_ctx,
)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8050,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--token",
    envvar="LEDGER_DASHBOARD_TOKEN",
    default=None,
    help="Require this token (16+ characters; or LEDGER_DASHBOARD_TOKEN). "
    "Needed to listen beyond loopback.",
)
@click.option(
    "--role",
    default="ledger_auditor",
    show_default=True,
    help="The read-only role to read as (see `ledger grant-auditor`).",
)
@pass_ctx
def dashboard(ctx: Context, host: str, port: int, token: str | None, role: str) -> None:
    """Serve the read-only web dashboard (docs/dashboard.md); Ctrl-C stops it."""
    from .. import dashboard as web

    web.require_extra()

    def announce(url: str, line: str) -> None:
        _emit(ctx, {"url": url, "role": role}, lambda: click.echo(line))
        sys.stdout.flush()

    web.serve(
        ctx.raw_url(),
        host=host,
        port=port,
        token=token,
        role=role,
        schema=ctx.schema,
        announce=announce,
    )
