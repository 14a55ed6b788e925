"""The embedded PostgreSQL server: ``ledger embedded status|stop|reset|path``."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from .. import embedded
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


@main.group("embedded")
def embedded_group() -> None:
    """Inspect or stop the embedded PostgreSQL server."""


@embedded_group.command("status")
@pass_ctx
def embedded_status(ctx: Context) -> None:
    """Where the data lives and whether the server runs."""
    info = embedded.status(ctx.data_dir)

    def human() -> None:
        click.echo(f"data directory: {info['data_dir']}")
        click.echo(f"running: {'yes, pid ' + str(info['pid']) if info['running'] else 'no'}")
        click.echo(
            "stop it with `ledger embedded stop`; wipe its data with `ledger embedded reset`"
        )

    _emit(ctx, info, human)


@embedded_group.command("stop")
@pass_ctx
def embedded_stop(ctx: Context) -> None:
    """Stop the embedded server (data is kept)."""
    stopped = embedded.stop(ctx.data_dir)
    _emit(
        ctx, {"stopped": stopped}, lambda: click.echo("stopped" if stopped else "was not running")
    )


@embedded_group.command("reset")
@yes_option
@pass_ctx
def embedded_reset(ctx: Context, yes: bool) -> None:
    """Stop the embedded server and delete its data (every tenant, hold and journal entry).

    Asks first on a terminal; off one (scripts, CI) it needs --yes. The next
    command starts a fresh, empty server.
    """
    path = Path(str(embedded.status(ctx.data_dir)["data_dir"]))
    if path.exists() and not (path / "PG_VERSION").exists() and any(path.iterdir()):
        _fail(
            EXIT_BAD_INPUT,
            f"{path} is not an embedded PostgreSQL data directory (no PG_VERSION); "
            "nothing was deleted: check --data-dir / LEDGER_EMBEDDED_DIR",
            ctx,
        )
    _confirm(ctx, yes, f"this deletes the embedded server's data in {path}")
    stopped = embedded.stop(ctx.data_dir)
    existed = path.exists()
    if existed:
        shutil.rmtree(path)
    _emit(
        ctx,
        {"data_dir": str(path), "stopped": stopped, "deleted": existed},
        lambda: click.echo(f"deleted {path}" if existed else f"nothing to delete at {path}"),
    )


@embedded_group.command("path")
@pass_ctx
def embedded_path(ctx: Context) -> None:
    """Print the data directory."""
    path = embedded.status(ctx.data_dir)["data_dir"]
    _emit(ctx, {"data_dir": path}, lambda: click.echo(path))
