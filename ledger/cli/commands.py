"""Every ``ledger`` command, registered on :data:`~ledger.cli.base.main`, and the entry point.

Importing this module imports each command group's module, which adds its
commands to the group; :func:`run` runs the group with the exit codes of
:mod:`ledger.cli.base`. The Flask and Django integrations reuse the
commands from here.
"""

from __future__ import annotations

import json
import sys

import click

from .alerts import (
    alerts,
    alerts_deliver,
    threshold,
    threshold_clear,
    threshold_list,
    threshold_set,
)
from .asof import asof_checkpoint, balances, spend
from .audits import certify, restore, snapshot, verify
from .base import (
    EXIT_BAD_INPUT,
    EXIT_DATABASE,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNBALANCED,
    Context,
    LedgerGroup,
    _fail,
    main,
)
from .citus import distribute
from .corrections import adjust, refund
from .dashboard import dashboard
from .demo import demo
from .embedded_server import (
    embedded_group,
    embedded_path,
    embedded_reset,
    embedded_status,
    embedded_stop,
)
from .maintenance import expire, prune_keys, renew
from .migrate import current, downgrade, migrate, upgrade
from .periods import allowance, allowance_clear, allowance_set, period
from .roles import grant_auditor, roles, roles_create, roles_isolate
from .spend import commit, release, reserve
from .stats import stats
from .tenants import tenant, tenant_create, tenant_limit, tenant_list, tenant_show, tenant_top_up

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DATABASE",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNBALANCED",
    "Context",
    "LedgerGroup",
    "adjust",
    "alerts",
    "alerts_deliver",
    "allowance",
    "allowance_clear",
    "allowance_set",
    "asof_checkpoint",
    "balances",
    "certify",
    "commit",
    "current",
    "dashboard",
    "demo",
    "distribute",
    "downgrade",
    "embedded_group",
    "embedded_path",
    "embedded_reset",
    "embedded_status",
    "embedded_stop",
    "expire",
    "grant_auditor",
    "main",
    "migrate",
    "period",
    "prune_keys",
    "refund",
    "release",
    "renew",
    "reserve",
    "restore",
    "roles",
    "roles_create",
    "roles_isolate",
    "run",
    "snapshot",
    "spend",
    "stats",
    "tenant",
    "tenant_create",
    "tenant_limit",
    "tenant_list",
    "tenant_show",
    "tenant_top_up",
    "threshold",
    "threshold_clear",
    "threshold_list",
    "threshold_set",
    "upgrade",
    "verify",
]


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
