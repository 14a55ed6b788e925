"""Schema migrations: ``ledger migrate upgrade|downgrade|current``."""

from __future__ import annotations

from collections.abc import Callable

import click

from .. import migrator as migrations
from .base import (
    EXIT_BAD_INPUT,
    Context,
    _confirm,
    _emit,
    _fail,
    main,
    pass_ctx,
    yes_option,
)


@main.group(invoke_without_command=True)
@pass_ctx
@click.pass_context
def migrate(click_ctx: click.Context, ctx: Context) -> None:
    """Upgrade the schema to the newest revision (or: upgrade REV, downgrade REV, current)."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(upgrade)


@migrate.command()
@click.argument("revision", default="head")
@pass_ctx
def upgrade(ctx: Context, revision: str) -> None:
    """Upgrade to REVISION (default: head)."""
    _move_schema(ctx, migrations.migrate, revision)


@migrate.command()
@click.argument("revision")
@yes_option
@pass_ctx
def downgrade(ctx: Context, revision: str, yes: bool) -> None:
    """Downgrade to REVISION ("base" drops every ledger table and its data).

    Asks first on a terminal; off one (scripts, CI) it needs --yes.
    """
    what = (
        f"this drops every table of the ledger schema {ctx.schema!r} and all their data"
        if revision == "base"
        else f"this downgrades the ledger schema {ctx.schema!r} to {revision}, "
        "dropping what later revisions added (and its data)"
    )
    _confirm(ctx, yes, what)
    _move_schema(ctx, migrations.downgrade, revision)


def _move_schema(ctx: Context, action: Callable[..., None], revision: str) -> None:
    from alembic.util.exc import CommandError

    url = ctx.raw_url()
    try:
        action(url, revision, schema=ctx.schema)
    except CommandError as exc:
        # alembic resolves the revision before it runs anything: nothing changed
        _fail(
            EXIT_BAD_INPUT,
            f"cannot move to revision {revision!r} ({exc}); give a revision number such "
            f"as {migrations.head_revision()}, head or base (`ledger migrate current` "
            "shows where the schema is)",
            ctx,
        )
    at = migrations.current_revision(url, schema=ctx.schema)
    _emit(ctx, {"revision": at}, lambda: click.echo(f"ledger schema {ctx.schema!r} at {at}"))


@migrate.command()
@pass_ctx
def current(ctx: Context) -> None:
    """Show the revision the database is at, and the newest one available."""
    url = ctx.raw_url()
    at = migrations.current_revision(url, schema=ctx.schema)
    head = migrations.head_revision()
    _emit(
        ctx,
        {"revision": at, "head": head},
        lambda: click.echo(f"at {at or 'nothing (never migrated)'}; newest is {head}"),
    )
