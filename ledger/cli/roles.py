"""Database roles: ``ledger roles create|isolate`` and ``ledger grant-auditor``.

What each role may do, and why, is in ledger/roles.py and docs/deployment.md.
"""

from __future__ import annotations

import click

from .base import (
    Context,
    _emit,
    main,
    pass_ctx,
)


@main.command("grant-auditor")
@click.argument("role", default="ledger_auditor")
@pass_ctx
def grant_auditor(ctx: Context, role: str) -> None:
    """Create ROLE (if missing) with SELECT on the audit views only."""
    from ..audit import AUDIT_VIEWS
    from ..audit import grant_auditor as grant

    grant(ctx.url(), role, schema=ctx.schema)
    _emit(
        ctx,
        {"role": role, "views": list(AUDIT_VIEWS)},
        lambda: click.echo(f"{role}: SELECT on {', '.join(AUDIT_VIEWS)}"),
    )


@main.group()
def roles() -> None:
    """Least-privilege roles (run as the owner of the ledger schema)."""


@roles.command("create")
@click.option("--app", default="ledger_app", show_default=True, help="Application role.")
@click.option("--auditor", default="ledger_auditor", show_default=True, help="Auditor role.")
@pass_ctx
def roles_create(ctx: Context, app: str, auditor: str) -> None:
    """Create the application and auditor roles (NOLOGIN) with their grants."""
    from ..roles import create_roles

    create_roles(ctx.url(), app=app, auditor=auditor, schema=ctx.schema)
    _emit(
        ctx,
        {"app": app, "auditor": auditor},
        lambda: click.echo(f"roles ready: {app} (ledger operations), {auditor} (audit views)"),
    )


@roles.command("isolate")
@click.argument("role", default="ledger_tenant_app")
@pass_ctx
def roles_isolate(ctx: Context, role: str) -> None:
    """Row-level security: ROLE sees only the tenant set by SET LOCAL ledger.tenant_id."""
    from ..roles import enable_row_level_security

    enable_row_level_security(ctx.url(), role, schema=ctx.schema)
    _emit(
        ctx,
        {"role": role},
        lambda: click.echo(f"{role} is confined to current_setting('ledger.tenant_id')"),
    )
