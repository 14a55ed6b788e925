"""The ``ledger`` command line, built on click and rich (the ``[cli]`` extra).

:mod:`ledger.cli` is the entry point: it checks that the extra is installed
before importing this module, and exposes :data:`main` and the exit codes.

Every command works against ``--database-url`` / ``LEDGER_DATABASE_URL``, or,
with neither, against the embedded PostgreSQL in a per-user data directory,
started on demand and left running for the next command.

Exit codes (also in README):

====  ==========================================================
0     success
1     the ledger refused the operation (insufficient, cap, ...)
2     bad input or usage
3     database or environment error
4     verification found the ledger out of balance
====  ==========================================================
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

import click

from . import _periods, _validate, embedded, errors
from . import migrator as migrations
from ._ledger import Ledger
from ._money import format_units, parse_units
from ._outside import load_certificate
from .citus.distribute import distribute as distribute_schema
from .outcomes import Outcome, Status
from .snapshot import BudgetSnapshot, TenantLedger

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2
EXIT_DATABASE = 3
EXIT_UNBALANCED = 4


@dataclass
class Context:
    database_url: str | None
    schema: str
    data_dir: Path | None
    as_json: bool

    def raw_url(self) -> str:
        """The database to use, starting the embedded server if needed (no migration)."""
        if self.database_url is not None:
            return self.database_url
        return embedded.start(self.data_dir).url

    def url(self) -> str:
        """The database to use; starts the embedded server (and migrates it) if needed."""
        if self.database_url is not None:
            return self.database_url
        url = self.raw_url()
        if migrations.current_revision(url, schema=self.schema) != migrations.head_revision():
            migrations.migrate(url, schema=self.schema)
        return url

    @contextmanager
    def ledger(self) -> Iterator[Ledger]:
        with Ledger(self.url(), schema=self.schema) as book:
            yield book


pass_ctx = click.make_pass_decorator(Context)


def _emit(ctx: Context, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if ctx.as_json:
        click.echo(json.dumps(payload, ensure_ascii=False, default=str))
    else:
        human()


def _fail(code: int, message: str, ctx: Context | None = None) -> NoReturn:
    as_json = ctx.as_json if ctx is not None else "--json" in sys.argv
    if as_json:
        click.echo(json.dumps({"error": message, "exit_code": code}, ensure_ascii=False))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _amount(value: str, in_units: bool, *, negative_ok: bool = False) -> int:
    """Parse an amount argument: integer microcents, or currency units with --units.

    Only ``adjust`` takes a negative amount; elsewhere one is bad input (exit 2)
    with a message that says what to do instead.
    """
    try:
        if in_units:
            parsed = parse_units(value)
        else:
            text = value.replace("_", "")
            if not text.lstrip("-").isdigit() or text.startswith("--"):
                raise ValueError(
                    f"{value!r} is not a whole number of microcents "
                    "(pass --units for 12.50-style amounts)"
                )
            parsed = int(text)
    except ValueError as exc:
        _bad_parameter(str(exc))
    if parsed < 0 and not negative_ok:
        _bad_parameter(
            f"{value} is negative; amounts here are 0 or more "
            "(to take budget away, use `ledger adjust TENANT_ID -AMOUNT --reason ...`)"
        )
    return parsed


def _bad_parameter(message: str) -> NoReturn:
    """A bad argument found inside a command: JSON under --json, click's usage error otherwise."""
    current = click.get_current_context(silent=True)
    ctx = current.find_object(Context) if current is not None else None
    if ctx is not None and ctx.as_json:
        _fail(EXIT_BAD_INPUT, message, ctx)
    raise click.BadParameter(message)


#: Commands whose amounts may look like options (-5): click passes them through
#: as arguments, so ``_amount`` can say what is wrong instead of "No such option".
amount_settings: dict[str, Any] = {"ignore_unknown_options": True}


def _printable(text: str) -> str:
    """``text`` with control characters escaped (a newline shows as \\n), for one-line output."""
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def _new_tenant_id(tenant_id: str) -> str:
    """Refuse ids an operator cannot see or type back; the library's own rule is wider."""
    if tenant_id != tenant_id.strip():
        raise click.BadParameter(
            f"{tenant_id!r} starts or ends with white space; give the id without it",
            param_hint="TENANT_ID",
        )
    if any(not c.isprintable() for c in tenant_id):
        raise click.BadParameter(
            f"{_printable(tenant_id)!r} holds control characters (tabs, newlines ...); "
            "give an id of printable characters",
            param_hint="TENANT_ID",
        )
    return tenant_id


def _confirm(ctx: Context, yes: bool, what: str) -> None:
    """Ask before a destructive command: on a terminal, a prompt; otherwise --yes is required."""
    if yes:
        return
    if not sys.stdin.isatty() or ctx.as_json:
        _fail(
            EXIT_BAD_INPUT,
            f"{what}; nothing was changed. Pass --yes to do it without a terminal to ask on",
            ctx,
        )
    click.confirm(f"{what}. Continue?", abort=True, err=True)


yes_option = click.option(
    "-y", "--yes", is_flag=True, help="Do it without asking (required off a terminal)."
)


def _money(microcents: int | None) -> str:
    if microcents is None:
        return "-"
    return f"{microcents:,} µ¢ ({format_units(microcents)})"


def _outcome(ctx: Context, outcome: Outcome) -> None:
    payload = outcome.to_dict()

    def human() -> None:
        style = "green" if outcome.ok else "yellow"
        click.secho(str(outcome.status), fg=style, bold=True)
        for key, value in payload.items():
            if key == "status" or value is None:
                continue
            shown = _money(value) if key.endswith("microcents") else value
            click.echo(f"  {key}: {shown}")

    _emit(ctx, payload, human)
    if not outcome.ok:
        sys.exit(EXIT_REFUSED)


_TABLE_COLUMNS = ("tenant", "initial", "remaining", "reserved", "committed")


def _tenant_table(tenants: list[TenantLedger]) -> None:
    """Balances as a table, or, when the table would not fit, one block per tenant.

    Every digit of every amount is shown: rich would cut a cell that does not
    fit with an ellipsis, so the width is measured first and a table that is
    too wide for the terminal (80 columns when piped) is printed vertically.
    """
    from rich.console import Console
    from rich.table import Table

    rows = [
        (
            _printable(t.tenant_id),
            *(
                f"{v:,}\n{format_units(v)}"
                for v in (
                    t.initial_microcents,
                    t.remaining_microcents,
                    t.reserved_microcents,
                    t.committed_microcents,
                )
            ),
        )
        for t in tenants
    ]
    widths = [
        max([len(name), *(len(line) for row in rows for line in row[i].splitlines())])
        for i, name in enumerate(_TABLE_COLUMNS)
    ]
    console = Console()
    # each column has one space of padding either side and one rule after it, plus the first
    if sum(widths) + 3 * len(widths) + 1 > console.width:
        for row in rows:
            click.echo(f"tenant: {row[0]}")
            for name, cell in zip(_TABLE_COLUMNS[1:], row[1:], strict=True):
                microcents, units = cell.splitlines()
                click.echo(f"  {name + ':':<11}{microcents} µ¢ ({units})")
        return
    table = Table(title=None)
    for name in _TABLE_COLUMNS:
        # fold, never an ellipsis: should the measure above be off, digits wrap, none is lost
        table.add_column(
            name, justify="left" if name == "tenant" else "right", overflow="fold", no_wrap=False
        )
    for row in rows:
        table.add_row(*row)
    console.print(table)


#: Library words in error messages, and what an operator types instead.
_CLI_WORDS = (
    ("create it with ensure_tenant() first", "create it with `ledger tenant create ID BUDGET`"),
    ("set_allowance() (or `ledger allowance set`)", "`ledger allowance set`"),
    ("run ledger.migrate(url) or `ledger migrate` first", "run `ledger migrate` first"),
    ("run ledger.migrate(url) (or `ledger migrate`) first", "run `ledger migrate` first"),
)


def _cli_words(message: str) -> str:
    for library, cli_words in _CLI_WORDS:
        message = message.replace(library, cli_words)
    return message


class LedgerGroup(click.Group):
    """Turns ledger errors into one clear line and a documented exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # --json is accepted anywhere (`ledger reserve t 5 --json`): it is the
        # group's option, so move it before the subcommand (not past a `--`).
        end = args.index("--") if "--" in args else len(args)
        if "--json" in args[:end]:
            args = ["--json", *(a for a in args[:end] if a != "--json"), *args[end:]]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        obj = ctx.obj if isinstance(ctx.obj, Context) else None
        try:
            return super().invoke(ctx)
        except (
            errors.InputError,
            errors.AmountTypeError,
            errors.TenantNotFound,
            errors.IdempotencyConflict,
        ) as exc:
            _fail(EXIT_BAD_INPUT, _cli_words(str(exc)), _ctx_of(ctx, obj))
        except errors.LedgerError as exc:
            _fail(EXIT_DATABASE, _cli_words(str(exc)), _ctx_of(ctx, obj))
        except OSError as exc:
            _fail(EXIT_DATABASE, f"{type(exc).__name__}: {exc}", _ctx_of(ctx, obj))
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if os.environ.get("LEDGER_DEBUG"):
                raise
            _fail(
                EXIT_DATABASE,
                f"internal error ({type(exc).__name__}: {exc}); "
                "rerun with LEDGER_DEBUG=1 for a traceback and please report it",
                _ctx_of(ctx, obj),
            )


def _ctx_of(ctx: click.Context, fallback: Context | None) -> Context | None:
    return ctx.obj if isinstance(ctx.obj, Context) else fallback


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="LEDGER_DATABASE_URL",
    help="PostgreSQL URL. Default: the embedded server (see `ledger embedded`).",
)
@click.option("--schema", default="ledger", show_default=True, help="Ledger schema name.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="LEDGER_EMBEDDED_DIR",
    help="Data directory of the embedded server.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.version_option(package_name="sql-ledger")
@click.pass_context
def main(
    ctx: click.Context, database_url: str | None, schema: str, data_dir: Path | None, as_json: bool
) -> None:
    """Per-tenant budgets in PostgreSQL: reserve, commit, release, verify, certify.

    Amounts are integer microcents (1 cent = 1,000,000); pass --units to give
    currency units instead (12.50).
    """
    if database_url is not None and not database_url.strip():
        raise click.BadParameter(
            "is empty; give a PostgreSQL URL (postgresql://user@host/db), or leave out "
            "--database-url and LEDGER_DATABASE_URL to use the embedded server",
            param_hint="--database-url",
        )
    ctx.obj = Context(database_url, schema, data_dir, as_json)


# ------------------------------------------------------------------ migrate


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


# ------------------------------------------------------------------ tenants

units_option = click.option("--units", "in_units", is_flag=True, help="Amounts are currency units.")


@main.group()
def tenant() -> None:
    """Create, fund, cap and inspect tenants."""


@tenant.command("create", context_settings=amount_settings)
@click.argument("tenant_id")
@click.argument("budget")
@click.option("--cap", default=None, help="Cap on the total of open holds.")
@units_option
@pass_ctx
def tenant_create(
    ctx: Context, tenant_id: str, budget: str, cap: str | None, in_units: bool
) -> None:
    """Create TENANT_ID with BUDGET (no-op if it exists)."""
    _new_tenant_id(tenant_id)
    amount = _amount(budget, in_units)
    # Checked before anything is written: a bad --cap must not leave a new tenant behind.
    max_reserved = None if cap is None else _validate.amount("--cap", _amount(cap, in_units))
    with ctx.ledger() as book:
        created = book.ensure_tenant(tenant_id, amount)
        if max_reserved is not None:
            book.set_max_reserved_microcents(tenant_id, max_reserved)
        row = book.tenant(tenant_id)
    assert row is not None
    _emit(
        ctx,
        {"created": created, "tenant": row.to_dict()},
        lambda: click.echo(
            f"{'created' if created else 'already existed'}: {_printable(tenant_id)}"
        ),
    )


@tenant.command("top-up", context_settings=amount_settings)
@click.argument("tenant_id")
@click.argument("amount")
@units_option
@click.option("--idempotency-key", default=None, help="Retry-safe key.")
@pass_ctx
def tenant_top_up(
    ctx: Context, tenant_id: str, amount: str, in_units: bool, idempotency_key: str | None
) -> None:
    """Add AMOUNT to TENANT_ID's budget."""
    with ctx.ledger() as book:
        _outcome(
            ctx,
            book.top_up_tenant(
                tenant_id, _amount(amount, in_units), idempotency_key=idempotency_key
            ),
        )


@tenant.command("limit", context_settings=amount_settings)
@click.argument("tenant_id")
@click.argument("max_reserved")
@units_option
@pass_ctx
def tenant_limit(ctx: Context, tenant_id: str, max_reserved: str, in_units: bool) -> None:
    """Cap TENANT_ID's open holds at MAX_RESERVED (0 removes the cap)."""
    cap = _amount(max_reserved, in_units)
    with ctx.ledger() as book:
        book.set_max_reserved_microcents(tenant_id, cap)
    _emit(
        ctx,
        {"tenant_id": tenant_id, "max_reserved_microcents": max(cap, 0)},
        lambda: click.echo(f"{tenant_id}: cap {'removed' if cap <= 0 else _money(cap)}"),
    )


@tenant.command("show")
@click.argument("tenant_id")
@pass_ctx
def tenant_show(ctx: Context, tenant_id: str) -> None:
    """Show one tenant's balances."""
    with ctx.ledger() as book:
        row = book.tenant(tenant_id)
        cap = book.max_reserved_microcents(tenant_id)
    if row is None:
        raise errors.TenantNotFound(Outcome(Status.MISSING_TENANT), tenant_id=tenant_id)
    payload = {**row.to_dict(), "max_reserved_microcents": cap}

    def human() -> None:
        _tenant_table([row])
        click.echo(f"cap on open holds: {_money(cap) if cap else 'none'}")

    _emit(ctx, payload, human)


@tenant.command("list")
@pass_ctx
def tenant_list(ctx: Context) -> None:
    """List every tenant (a consistent snapshot)."""
    with ctx.ledger() as book:
        snap = book.snapshot()
    _emit(
        ctx,
        {"tenants": [t.to_dict() for t in snap.tenants]},
        lambda: _tenant_table(list(snap.tenants)),
    )


# ------------------------------------------------------------- two-phase spend


key_option = click.option(
    "--idempotency-key",
    default=None,
    help="Retry-safe key: the same key returns the first outcome.",
)


@main.command(context_settings=amount_settings)
@click.argument("tenant_id")
@click.argument("amount")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print the reservation id alone (a refusal: its status, on standard error).",
)
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=None,
    help="Seconds until the hold expires by itself.",
)
@key_option
@units_option
@pass_ctx
def reserve(
    ctx: Context,
    tenant_id: str,
    amount: str,
    ttl: int | None,
    idempotency_key: str | None,
    in_units: bool,
    quiet: bool,
) -> None:
    """Place a hold of AMOUNT on TENANT_ID.

    Prints the status, the reservation id and the balances; with -q, the
    reservation id alone (for scripts: RID=$(ledger reserve -q acme 500)).
    """
    cost = _amount(amount, in_units)
    with ctx.ledger() as book:
        outcome = book.try_reserve(tenant_id, cost, ttl=ttl, idempotency_key=idempotency_key)
    if quiet and not ctx.as_json:
        if not outcome.ok:
            click.echo(f"refused: {outcome.status}", err=True)
            sys.exit(EXIT_REFUSED)
        click.echo(str(outcome.reservation_id))
        return
    _outcome(ctx, outcome)


@main.command(context_settings=amount_settings)
@click.argument("reservation_id", type=click.IntRange(min=1))
@click.argument("actual")
@click.option("--tenant", "tenant_id", default=None, help="The hold's tenant (faster lookup).")
@key_option
@units_option
@pass_ctx
def commit(
    ctx: Context,
    reservation_id: int,
    actual: str,
    tenant_id: str | None,
    idempotency_key: str | None,
    in_units: bool,
) -> None:
    """Settle RESERVATION_ID at ACTUAL cost (surplus refunded)."""
    with ctx.ledger() as book:
        outcome = book.commit(
            reservation_id,
            _amount(actual, in_units),
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
        )
    _outcome(ctx, outcome)


@main.command()
@click.argument("reservation_id", type=click.IntRange(min=1))
@click.option("--tenant", "tenant_id", default=None, help="The hold's tenant (faster lookup).")
@key_option
@pass_ctx
def release(
    ctx: Context, reservation_id: int, tenant_id: str | None, idempotency_key: str | None
) -> None:
    """Cancel RESERVATION_ID, returning its amount."""
    with ctx.ledger() as book:
        _outcome(
            ctx, book.release(reservation_id, tenant_id=tenant_id, idempotency_key=idempotency_key)
        )


# ------------------------------------------------------------- corrections

reason_option = click.option(
    "--reason",
    required=True,
    help="Why (a ticket id, say): journaled with the entry; required.",
)
correction_key_option = click.option(
    "--idempotency-key",
    "--key",
    "idempotency_key",
    default=None,
    help="Retry-safe key: the same key returns the first outcome.",
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


# ----------------------------------------------------- snapshots and audits


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
@click.option("--limit", default=1000, show_default=True, help="Most holds to expire.")
@pass_ctx
def expire(ctx: Context, limit: int) -> None:
    """Expire holds past their deadline (safe to run from many processes)."""
    with ctx.ledger() as book:
        n = book.expire_holds(limit=limit)
    _emit(ctx, {"expired": n}, lambda: click.echo(f"expired {n} holds"))


# ---------------------------------------------------------------- periods


@main.command()
@click.option("--limit", default=1000, show_default=True, help="Most tenants to renew.")
@pass_ctx
def renew(ctx: Context, limit: int) -> None:
    """Renew tenants whose budget period has ended (the sweeper; safe in parallel)."""
    with ctx.ledger() as book:
        done = book.renew_periods(limit=limit)
    _emit(
        ctx,
        {"tenants": done.tenants, "periods": done.periods},
        lambda: click.echo(f"renewed {done.tenants} tenants ({done.periods} periods)"),
    )


def _default_anchor(zone: str, months: int) -> datetime:
    """The start of the current local month (months=N) or day (days=N) in ``zone``."""
    now = datetime.now(ZoneInfo(_periods.time_zone(zone)))
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start.replace(day=1) if months else start


def _parse_anchor(value: str | None, zone: str, months: int) -> datetime:
    if value is None:
        return _default_anchor(zone, months)
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (for example 2026-01-01T00:00)",
            param_hint="--anchor",
        ) from exc
    # A local time without an offset means local time in the allowance's zone.
    return at if at.tzinfo is not None else at.replace(tzinfo=ZoneInfo(_periods.time_zone(zone)))


@main.group()
def allowance() -> None:
    """Recurring allowances: a budget that renews every period (docs/periods.md)."""


@allowance.command("set")
@click.argument("tenant_id")
@click.argument("amount")
@click.option("--months", default=0, show_default=True, help="Period length in calendar months.")
@click.option("--days", default=0, show_default=True, help="Period length in days.")
@click.option(
    "--anchor",
    default=None,
    help="A boundary of the schedule, ISO 8601 (default: start of this local month or day).",
)
@click.option("--time-zone", "zone", default="UTC", show_default=True, help="IANA zone.")
@click.option("--min-rollover", default="0", show_default=True, help="Least carried over.")
@click.option(
    "--max-rollover", default="0", show_default=True, help="Most carried over (0: reset)."
)
@units_option
@click.option("--idempotency-key", default=None, help="Retry-safe key.")
@pass_ctx
def allowance_set(
    ctx: Context,
    tenant_id: str,
    amount: str,
    months: int,
    days: int,
    anchor: str | None,
    zone: str,
    min_rollover: str,
    max_rollover: str,
    in_units: bool,
    idempotency_key: str | None,
) -> None:
    """Give TENANT_ID AMOUNT every period (--months N or --days N)."""
    at = _parse_anchor(anchor, zone, months)
    with ctx.ledger() as book:
        _outcome(
            ctx,
            book.set_allowance(
                tenant_id,
                _amount(amount, in_units),
                months=months,
                days=days,
                anchor=at,
                time_zone=zone,
                min_rollover_microcents=_amount(min_rollover, in_units),
                max_rollover_microcents=_amount(max_rollover, in_units),
                idempotency_key=idempotency_key,
            ),
        )


@allowance.command("clear")
@click.argument("tenant_id")
@click.option("--idempotency-key", default=None, help="Retry-safe key.")
@pass_ctx
def allowance_clear(ctx: Context, tenant_id: str, idempotency_key: str | None) -> None:
    """Stop renewing TENANT_ID (its remaining budget is kept)."""
    with ctx.ledger() as book:
        _outcome(ctx, book.clear_allowance(tenant_id, idempotency_key=idempotency_key))


@main.command()
@click.argument("tenant_id")
@click.option("--index", "period_index", type=int, default=None, help="Period (default: now).")
@pass_ctx
def period(ctx: Context, tenant_id: str, period_index: int | None) -> None:
    """What TENANT_ID spent in a budget period (the current one by default)."""
    with ctx.ledger() as book:
        spend = book.period_spend(tenant_id, period_index)
    payload = spend.to_dict()

    def human() -> None:
        label = "current" if spend.is_current else f"current is {spend.current_period_index}"
        click.secho(f"period {spend.period_index} ({label})", bold=True)
        click.echo(f"  from {spend.starts_at.isoformat()} to {spend.ends_at.isoformat()}")
        click.echo(f"  allowance: {_money(spend.allowance_microcents)}")
        click.echo(f"  spent:     {_money(spend.spent_microcents)}")
        click.echo(f"  held:      {_money(spend.held_microcents)}")
        click.echo(f"  remaining: {_money(spend.remaining_microcents)}")

    _emit(ctx, payload, human)


# ----------------------------------------------------------------- stats


@main.command()
@click.option(
    "--minutes", default=60, show_default=True, help="Count refusals of the last N minutes."
)
@click.option("--top", default=5, show_default=True, help="How many tenants to list.")
@pass_ctx
def stats(ctx: Context, minutes: int, top: int) -> None:
    """A quick look at a live ledger: holds, recent refusals, top spenders, due renewals.

    Refusals are counted from the journal, which records the refusals of an
    existing tenant (insufficient, cap, overrun, ...). A refusal that touches
    no tenant's row is not journaled and not counted: an amount of 0 or less,
    an unknown tenant, an unknown or settled hold.
    """
    with ctx.ledger() as book:
        found = book.stats(minutes=minutes, top=top)
    _emit(ctx, found.to_dict(), lambda: _stats_text(found))


def _stats_text(found: Any) -> None:
    click.echo(
        f"open holds: {found.open_holds} (lapsed: {found.lapsed_holds}, "
        f"oldest: {found.oldest_hold_age_seconds:.0f} s)"
    )
    click.echo(
        f"refusals in the last {found.refusal_window_minutes} min: {found.refused} "
        "(journaled ones: not amounts <= 0, unknown tenants or holds)"
    )
    for op, status, n in found.refusals:
        click.echo(f"  {op} {status}: {n}")
    click.echo("largest tenants by spend:")
    for tenant_id, committed in found.top_spenders:
        click.echo(f"  {_printable(tenant_id)}: {_money(committed)}")
    click.echo(f"renewals due: {found.renewals_due}")
    for tenant_id, at in found.due:
        click.echo(f"  {_printable(tenant_id)}: since {at.isoformat()}")


@main.command("grant-auditor")
@click.argument("role", default="ledger_auditor")
@pass_ctx
def grant_auditor(ctx: Context, role: str) -> None:
    """Create ROLE (if missing) with SELECT on the audit views only."""
    from .audit import AUDIT_VIEWS
    from .audit import grant_auditor as grant

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
    from .roles import create_roles

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
    from .roles import enable_row_level_security

    enable_row_level_security(ctx.url(), role, schema=ctx.schema)
    _emit(
        ctx,
        {"role": role},
        lambda: click.echo(f"{role} is confined to current_setting('ledger.tenant_id')"),
    )


@main.command("prune-keys")
@click.option(
    "--older-than-hours",
    default=24,
    show_default=True,
    type=int,
    help="Forget idempotency keys older than this.",
)
@pass_ctx
def prune_keys(ctx: Context, older_than_hours: int) -> None:
    """Forget old idempotency keys."""
    from datetime import timedelta

    if older_than_hours < 0:
        raise click.BadParameter("must be >= 0", param_hint="--older-than-hours")
    with ctx.ledger() as book:
        n = book.prune_idempotency_keys(timedelta(hours=older_than_hours))
    _emit(ctx, {"pruned": n}, lambda: click.echo(f"pruned {n} idempotency keys"))


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


#: A certificate's fields that are meaningless when its aggregate totals overflow.
_AGGREGATES = (
    "conservation_balanced",
    "total_initial_microcents",
    "total_committed_microcents",
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
    from . import _demo as demo_module

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


# ------------------------------------------------------------------ embedded


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


def run() -> None:
    """Console-script entry point."""
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail(EXIT_BAD_INPUT, "aborted")
    except click.ClickException as exc:
        if "--json" in sys.argv:
            click.echo(json.dumps({"error": exc.format_message(), "exit_code": EXIT_BAD_INPUT}))
        else:
            exc.show()
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run()


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


# ------------------------------------------------------------- as-of queries


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


# ----------------------------------------------------------------- dashboard


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
    from . import dashboard as web

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
