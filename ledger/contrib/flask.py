"""Flask extension: ledger operations that commit or roll back with the request.

    from flask_sqlalchemy import SQLAlchemy
    from ledger.contrib.flask import FlaskLedger

    db = SQLAlchemy(app)
    budgets = FlaskLedger(app, db=db)

    @app.post("/work/<tenant>")
    def work(tenant):
        with budgets.ledger.hold(tenant, 250_000, ttl=30) as h:  # committed at once
            actual = call_the_model()          # slow work: no transaction, no lock
            db.session.add(Job(tenant=tenant, cost=actual))
            h.settle(actual)                   # joins db.session's transaction
            db.session.commit()                # one commit for the job and the spend

``hold()`` places the reserve in its own short transaction, so the tenant's
row is locked for milliseconds, not for the work; an exception (or leaving
without settling) releases it, and its TTL returns the money if the process
dies first. Every other operation, ``settle()`` included, joins
``db.session``'s transaction. Without Flask-SQLAlchemy
(``LEDGER_DATABASE_URL`` in the config) each app context gets one
connection in one transaction, committed at teardown unless the request
failed. Use ``try_reserve``/``commit`` in that transaction directly only for
short work that must be atomic with the reserve itself: its row lock lasts
until the request ends.

``flask ledger ...`` offers the CLI's commands (migrate, tenant, snapshot,
verify, certify, ...) against the app's database.
"""

from __future__ import annotations

from typing import Any

import click
from flask import Flask, current_app, g
from flask.cli import with_appcontext
from sqlalchemy import Connection, Engine, create_engine

from .._engine import normalise_url
from .._ledger import BoundLedger, Ledger
from ..cli import commands as ledger_cli

EXTENSION_KEY = "sql_ledger"
_G_CONNECTION = "_sql_ledger_connection"


class _State:
    def __init__(self, app: Flask, db: Any) -> None:
        self.db = db
        self.schema: str = app.config.setdefault("LEDGER_SCHEMA", "ledger")
        self.url: str | None = app.config.get("LEDGER_DATABASE_URL")
        self._engine: Engine | None = None
        self._ledger: Ledger | None = None

    def engine(self) -> Engine:
        if self.db is not None:
            engine: Engine = self.db.engine
            return engine
        if self._engine is None:
            if not self.url:
                raise RuntimeError(
                    "FlaskLedger needs Flask-SQLAlchemy (FlaskLedger(app, db=db)) or "
                    "LEDGER_DATABASE_URL in the app config"
                )
            self._engine = create_engine(normalise_url(self.url))
        return self._engine

    def ledger(self) -> Ledger:
        if self._ledger is None or self._ledger.engine is not self.engine():
            self._ledger = Ledger(self.engine(), schema=self.schema)
        return self._ledger


class FlaskLedger:
    """The usual Flask extension shape: ``FlaskLedger(app)`` or ``init_app(app)`` later."""

    def __init__(self, app: Flask | None = None, *, db: Any = None) -> None:
        self._db = db
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        db = self._db
        if db is None and "sqlalchemy" in app.extensions:
            db = app.extensions["sqlalchemy"]
        app.extensions[EXTENSION_KEY] = _State(app, db)
        app.teardown_appcontext(_teardown)
        app.cli.add_command(_cli_group())

    @staticmethod
    def _state() -> _State:
        try:
            state: _State = current_app.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError("FlaskLedger.init_app(app) was not called for this app") from None
        return state

    @property
    def ledger(self) -> BoundLedger:
        """The ledger, bound to the current request's transaction."""
        state = self._state()
        return BoundLedger(state.ledger(), lambda: _connection(state))


def _connection(state: _State) -> Any:
    if state.db is not None:
        return state.db.session
    conn: Connection | None = g.get(_G_CONNECTION)
    if conn is None:
        conn = state.engine().connect()
        conn.begin()
        setattr(g, _G_CONNECTION, conn)
    return conn


def _teardown(exc: BaseException | None) -> None:
    conn: Connection | None = g.pop(_G_CONNECTION, None)
    if conn is None:
        return
    try:
        if exc is None:
            conn.commit()
        else:
            conn.rollback()
    finally:
        conn.close()


def _cli_group() -> click.Group:
    @click.group(
        "ledger",
        cls=ledger_cli.LedgerGroup,
        help="sql-ledger commands against this app's database.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
    @with_appcontext
    @click.pass_context
    def group(ctx: click.Context, as_json: bool) -> None:
        state = FlaskLedger._state()
        url = state.engine().url.render_as_string(hide_password=False)
        ctx.obj = ledger_cli.Context(url, state.schema, None, as_json)

    for command in (
        ledger_cli.migrate,
        ledger_cli.tenant,
        ledger_cli.reserve,
        ledger_cli.commit,
        ledger_cli.release,
        ledger_cli.snapshot,
        ledger_cli.restore,
        ledger_cli.verify,
        ledger_cli.certify,
        ledger_cli.expire,
    ):
        group.add_command(command)
    return group
