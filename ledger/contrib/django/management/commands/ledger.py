"""``manage.py ledger ...``: the ``ledger`` CLI against Django's database."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from ledger import cli
from ledger.contrib.django import database_url, ledger_settings


class Command(BaseCommand):
    help = "sql-ledger commands (migrate, tenant, snapshot, verify, ...) on Django's database"

    def run_from_argv(self, argv: list[str]) -> None:
        # Everything after "ledger" belongs to the click CLI, options included.
        url = database_url().render_as_string(hide_password=False)
        args = ["--database-url", url, "--schema", ledger_settings()["SCHEMA"], *argv[2:]]
        try:
            cli.main.main(args=args, prog_name=f"{argv[0]} ledger", standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
        except Exception as exc:  # click usage errors
            import click

            if isinstance(exc, click.ClickException):
                exc.show()
                sys.exit(cli.EXIT_BAD_INPUT)
            raise

    def handle(self, *args: Any, **options: Any) -> None:  # pragma: no cover - via run_from_argv
        self.run_from_argv(["manage.py", "ledger", *args])
