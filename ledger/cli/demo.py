"""``ledger demo``: concurrent spend against throwaway tenants, then a verify."""

from __future__ import annotations

import sys

import click

from .. import embedded
from .base import (
    EXIT_UNBALANCED,
    Context,
    _emit,
    _money,
    _tenant_table,
    main,
    pass_ctx,
)


@main.command()
@click.option(
    "--workers",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Concurrent workers.",
)
@click.option(
    "--operations",
    default=60,
    show_default=True,
    type=click.IntRange(min=1),
    help="Operations per worker.",
)
@pass_ctx
def demo(ctx: Context, workers: int, operations: int) -> None:
    """Create demo tenants, run a concurrent load, print balances and a certificate."""
    from .. import _demo as demo_module

    url = ctx.raw_url()
    if not ctx.as_json and not ctx.database_url:
        click.echo(f"embedded PostgreSQL, data in {embedded.status(ctx.data_dir)['data_dir']}")
    total = workers * operations
    show_progress = sys.stderr.isatty() and not ctx.as_json
    if show_progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("reserve/commit/release", total=total)
            result = demo_module.run(
                url,
                workers=workers,
                operations_per_worker=operations,
                progress=lambda n: bar.advance(task, n),
            )
    else:
        result = demo_module.run(url, workers=workers, operations_per_worker=operations)
    payload = {
        "operations": result.operations,
        "refused": result.refused,
        "committed_microcents": result.committed_microcents,
        "tenants": [t.to_dict() for t in result.snapshot.tenants],
        "conservation": result.conservation.to_dict(),
        "certificate": result.certificate.to_dict(),
    }

    def human() -> None:
        click.echo(
            f"{result.operations} operations by {workers} concurrent workers, "
            f"{result.refused} refused, {_money(result.committed_microcents)} spent"
        )
        _tenant_table(list(result.snapshot.tenants))
        click.secho(
            str(result.conservation), fg="green" if result.conservation.is_balanced else "red"
        )
        cert = result.certificate
        click.echo(
            f"certificate: snapshot v{cert.snapshot_version}, digest {cert.ledger_digest_hex}"
        )
        click.echo(
            f"  total initial {_money(cert.total_initial_microcents)}, "
            f"committed {_money(cert.total_committed_microcents)}, "
            f"balanced={cert.conservation_balanced}"
        )

    _emit(ctx, payload, human)
    if not result.conservation.is_balanced:
        sys.exit(EXIT_UNBALANCED)
