"""Scale-out: ``ledger distribute`` (docs/scale-out.md; the work is in ledger/citus/)."""

from __future__ import annotations

import click

from ..citus.distribute import distribute as distribute_schema
from .base import (
    EXIT_BAD_INPUT,
    Context,
    _emit,
    _fail,
    main,
    pass_ctx,
)


@main.command()
@click.option(
    "--shard-count",
    type=click.IntRange(min=1),
    default=None,
    help="Shards per table when first distributed (default: citus.shard_count).",
)
@pass_ctx
def distribute(ctx: Context, shard_count: int | None) -> None:
    """Distribute the migrated schema on a Citus coordinator (safe to run again)."""
    if not ctx.database_url:
        _fail(EXIT_BAD_INPUT, "distribute needs --database-url (a Citus coordinator)", ctx)
    done = distribute_schema(ctx.database_url, ctx.schema, shard_count=shard_count)

    def human() -> None:
        click.echo(
            f"schema {done.schema!r} (revision {done.revision}) on Citus {done.citus_version}, "
            f"{done.shard_count} shards per table"
        )
        click.echo(f"by tenant_id: {', '.join(done.distributed)}")
        click.echo(f"reference:    {', '.join(done.reference) or '-'}")
        if done.functions:
            click.echo(f"delegated:    {', '.join(done.functions)}")
        for change in done.changed or ["nothing to do: already distributed"]:
            click.echo(f"  {change}")

    _emit(ctx, done.to_dict(), human)
