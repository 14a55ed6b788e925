"""What every ``ledger`` command shares: the group, its context, output and exit codes.

The commands live one group to a module beside this one
(:mod:`ledger.cli.commands` loads them all); :mod:`ledger.cli` is the entry
point, which checks that the ``[cli]`` extra (click, rich) is installed
before importing any of them.

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
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from .. import embedded, errors
from .. import migrator as migrations
from .._ledger import Ledger
from .._money import format_units, parse_units
from ..outcomes import Outcome
from ..snapshot import TenantLedger

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
    limited_by = getattr(outcome, "limited_by", None)
    if limited_by is not None:  # nested budgets: the level that refused
        payload["limited_by"] = limited_by

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


units_option = click.option("--units", "in_units", is_flag=True, help="Amounts are currency units.")


key_option = click.option(
    "--idempotency-key",
    default=None,
    help="Retry-safe key: the same key returns the first outcome.",
)


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
