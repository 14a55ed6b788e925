"""Snapshots and audits: ``ledger snapshot``, ``restore``, ``verify``, ``certify``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .. import errors
from .._certificate_check import load_certificate
from ..snapshot import BudgetSnapshot
from .base import (
    EXIT_UNBALANCED,
    Context,
    _confirm,
    _emit,
    _money,
    main,
    pass_ctx,
    yes_option,
)

#: A certificate's fields that are meaningless when its aggregate totals overflow.
_AGGREGATES = (
    "conservation_balanced",
    "total_initial_microcents",
    "total_committed_microcents",
)


@main.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON here instead of standard output.",
)
@pass_ctx
def snapshot(ctx: Context, output: Path | None) -> None:
    """Take a consistent, versioned snapshot as JSON."""
    with ctx.ledger() as book:
        snap = book.snapshot()
    text = snap.to_json(indent=2)
    if output is None:
        click.echo(text)
        return
    output.write_text(text + "\n", encoding="utf-8")
    _emit(
        ctx,
        {"written": str(output), "version": snap.version, "tenants": len(snap.tenants)},
        lambda: click.echo(f"snapshot v{snap.version} ({len(snap.tenants)} tenants) -> {output}"),
    )


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@yes_option
@pass_ctx
def restore(ctx: Context, file: Path, yes: bool) -> None:
    """Replace the ledger's state with the snapshot in FILE (validated first).

    Asks first on a terminal; off one (scripts, CI) it needs --yes.
    """
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise errors.MalformedSnapshot(f"{file} is not UTF-8 text") from exc
    snap = BudgetSnapshot.from_json(text)
    _confirm(
        ctx,
        yes,
        f"this replaces every tenant's balances and holds in schema {ctx.schema!r} "
        f"with the {len(snap.tenants)} tenants of {file.name}",
    )
    with ctx.ledger() as book:
        book.restore_from_snapshot(snap)
    _emit(
        ctx,
        {"restored": str(file), "version": snap.version, "tenants": len(snap.tenants)},
        lambda: click.echo(f"restored snapshot v{snap.version} ({len(snap.tenants)} tenants)"),
    )


@main.command()
@click.option(
    "--since-certificate",
    type=int,
    default=None,
    help="Replay the journal from this certificate's checkpoint, not from genesis.",
)
@click.option("--no-journal", is_flag=True, help="Only check conservation; skip journal replay.")
@click.option(
    "--certificate",
    "certificate_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A certificate kept outside the database (`ledger certify -o FILE`): "
    "fail if the database is from before it (restored to an earlier point).",
)
@pass_ctx
def verify(
    ctx: Context, since_certificate: int | None, no_journal: bool, certificate_file: Path | None
) -> None:
    """Check conservation and replay the journal (exit 4 if anything is off)."""
    outside = load_certificate(certificate_file) if certificate_file is not None else None
    with ctx.ledger() as book:
        against = book.check_against_certificate(outside) if outside is not None else None
        status = book.verify_conservation()
        report = None
        if not no_journal:
            if sys.stderr.isatty() and not ctx.as_json:
                from rich.progress import Progress, SpinnerColumn, TextColumn

                with Progress(
                    SpinnerColumn(), TextColumn("{task.description}"), transient=True
                ) as bar:
                    task = bar.add_task("replaying journal", total=None)
                    report = book.verify_journal(
                        since_certificate=since_certificate,
                        progress=lambda n: bar.update(
                            task, description=f"replaying journal: {n:,} tenants"
                        ),
                    )
            else:
                report = book.verify_journal(since_certificate=since_certificate)
    payload: dict[str, Any] = {"conservation": status.to_dict()}
    if report is not None:
        payload["journal"] = report.to_dict()
    if against is not None:
        payload["certificate"] = against.to_dict()

    def human() -> None:
        if against is not None:
            click.echo(
                f"certificate {against.certificate_id} (kept outside): "
                + ("the database is at or after it" if against.ok else "FAILED")
            )
            for problem in against.problems:
                click.echo(f"  {problem}")
        click.echo(str(status))
        if report is None:
            return
        click.echo(
            f"journal: {report.tenants_checked:,} tenants, {report.entries_checked:,} entries, "
            f"{report.certificates_checked:,} certificates checked: "
            + ("clean" if report.ok else f"{len(report.discrepancies)} discrepancies")
        )
        for d in report.discrepancies[:50]:
            click.echo(f"  {d.kind} tenant={d.tenant_id} seq={d.seq}: {d.detail}")

    _emit(ctx, payload, human)
    if (
        not status.is_balanced
        or (report is not None and not report.ok)
        or (against is not None and not against.ok)
    ):
        sys.exit(EXIT_UNBALANCED)


@main.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the certificate as JSON to this file, to keep outside the database "
    "(check a restored database against it with `ledger verify --certificate FILE`).",
)
@pass_ctx
def certify(ctx: Context, output: Path | None) -> None:
    """Issue and store a financial certificate (digest, totals, spend since last)."""
    if output is not None and output.exists():
        raise click.BadParameter(f"{output} exists; certificates are never overwritten")
    with ctx.ledger() as book:
        cert = book.certify()
    payload = cert.to_dict()
    if output is not None:
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        tmp.replace(output)

    def human() -> None:
        representable = payload.get("aggregate_totals_representable", True)
        for key, value in payload.items():
            if not representable and key in _AGGREGATES:
                click.echo(f"{key}: not computed (see below)")
                continue
            shown = _money(value) if key.endswith("microcents") else value
            click.echo(f"{key}: {shown}")
        if not representable:
            click.echo(
                "note: the totals across all tenants exceed 2^63 - 1 µ¢, the most a "
                "signed 64-bit amount holds, so this certificate, like the seed's, "
                "records no totals and does not certify conservation; that says nothing "
                "about the balances: `ledger verify` checks each tenant on its own"
            )

    _emit(ctx, payload, human)
