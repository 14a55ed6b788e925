"""Entry point of the ``ledger`` command; importable without the ``[cli]`` extra.

The commands (:mod:`ledger.cli.commands`, one module per command group
beside it) need click and rich, which the base install
(the library alone) does not bring. :func:`run` checks for them first, so a
user who installed only ``sql-ledger`` gets one line naming the extra to
install and exit code 3, not a traceback. ``ledger.cli.main`` (the click
group, which Django's ``manage.py ledger`` runs), the commands that
``flask ledger`` reuses and the ``EXIT_*`` codes are loaded from
:mod:`ledger.cli.commands` on first use; without click that raises
:class:`ledger.errors.MissingExtra`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import MissingExtra

if TYPE_CHECKING:
    # What other modules use (the Flask and Django integrations build on these).
    from .commands import (
        EXIT_BAD_INPUT,
        EXIT_DATABASE,
        EXIT_OK,
        EXIT_REFUSED,
        EXIT_UNBALANCED,
        Context,
        LedgerGroup,
        certify,
        commit,
        expire,
        main,
        migrate,
        release,
        reserve,
        restore,
        snapshot,
        tenant,
        verify,
    )

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DATABASE",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNBALANCED",
    "Context",
    "LedgerGroup",
    "certify",
    "commit",
    "expire",
    "main",
    "migrate",
    "release",
    "reserve",
    "restore",
    "run",
    "snapshot",
    "tenant",
    "verify",
]

#: The packages the commands import (both in the [cli] extra).
CLI_MODULES = ("click", "rich")

#: "Database or environment error"; equal to base.EXIT_DATABASE (tests check),
#: repeated here because that module cannot be imported when this code runs.
_EXIT_ENVIRONMENT = 3

_FEATURE = "the ledger command"


def run() -> None:
    """Console-script entry point: run the CLI, or say which extra to install."""
    for module in CLI_MODULES:
        if importlib.util.find_spec(module) is None:
            _report_missing(MissingExtra(module, feature=_FEATURE))
    from .commands import run as run_commands

    run_commands()


def _report_missing(error: MissingExtra) -> NoReturn:
    if "--json" in sys.argv:
        print(json.dumps({"error": str(error), "exit_code": _EXIT_ENVIRONMENT}))
    else:
        print(f"error: {error}", file=sys.stderr)
    sys.exit(_EXIT_ENVIRONMENT)


def __getattr__(name: str) -> Any:
    """The names in ``__all__`` (``cli.main``, ``cli.EXIT_*`` ...), from ledger.cli.commands."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import commands
    except ModuleNotFoundError as exc:
        if exc.name not in CLI_MODULES:
            raise
        raise MissingExtra(exc.name, feature=_FEATURE) from exc
    return getattr(commands, name)
