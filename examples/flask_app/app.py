"""A small Flask app that holds budget before slow work and settles it after.

    pip install -e ".[flask,cli]"        # cli: the embedded PostgreSQL when no DATABASE_URL
    python examples/flask_app/app.py          # embedded PostgreSQL, port 5000
    DATABASE_URL=postgresql://... python examples/flask_app/app.py
    DATABASE_URL=postgresql://... gunicorn -k gthread -w 2 --threads 16 \\
        --chdir examples/flask_app 'app:create_app()'

    curl -X POST localhost:5000/tenants/acme -d '{"budget": 5000000}' -H 'Content-Type: application/json'
    curl -X POST localhost:5000/jobs/acme -d '{"estimate": 300000, "actual": 250000, "work_ms": 200}' \\
        -H 'Content-Type: application/json'

The pattern (see ``run_job``):

1. ``hold()`` commits the reserve at once, in its own short transaction, so
   the tenant's row is locked for milliseconds, not for the whole work; its
   TTL returns the money if this process dies before settling;
2. the work runs outside any database transaction;
3. ``settle()`` joins ``db.session``'s transaction, so the job row and the
   commit of the hold land together or not at all;
4. an exception (or leaving without settling) releases the hold.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from flask import Flask, abort, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import ledger
from ledger.contrib.flask import FlaskLedger
from ledger.errors import RefusedError, TenantNotFound

#: How long a hold may outlive a crashed worker before its money comes back.
HOLD_TTL = timedelta(seconds=int(os.environ.get("HOLD_TTL_SECONDS", "30")))


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
budgets = FlaskLedger(db=db)


class Job(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(255))
    cost_microcents: Mapped[int] = mapped_column(BigInteger)


class WorkFailed(RuntimeError):
    """The (simulated) expensive work failed after the budget was held."""


MAX_MICROCENTS = 2**63 - 1


class BadRequest(ValueError):
    """The request's body is not what the route takes (answered 400, nothing changed)."""


def body_of(data: Any) -> dict[str, Any]:
    """The JSON object of the request, or BadRequest."""
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object, e.g. {"estimate": 300000}')
    return data


def microcents(body: dict[str, Any], key: str) -> int:
    """``body[key]`` as an amount: a whole number of microcents, 0 to 2^63 - 1.

    ``int()`` alone would turn 1.5 into 1 and "abc" into a 500.
    """
    value = body.get(key)
    if type(value) is not int or not 0 <= value <= MAX_MICROCENTS:
        raise BadRequest(
            f"{key} must be a whole number of microcents from 0 to {MAX_MICROCENTS}, not {value!r}"
        )
    return value


def do_the_work(body: dict[str, Any]) -> int:
    """Stands for the slow, costly call (an LLM, a payment); returns what it cost."""
    time.sleep(int(body.get("work_ms", 0)) / 1000)
    if body.get("fail"):
        raise WorkFailed("the work failed after the budget was held")
    return microcents(body, "actual")


def create_app(database_url: str | None = None) -> Flask:
    app = Flask(__name__)
    url = database_url or os.environ.get("DATABASE_URL")
    if url is None:  # no server of your own: use the embedded one
        url = ledger.embedded.start().url
    app.config["SQLALCHEMY_DATABASE_URI"] = url.replace("postgresql://", "postgresql+psycopg://", 1)
    # one connection per concurrent request at most, never a wait for the pool
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 8, "max_overflow": 32}
    db.init_app(app)
    budgets.init_app(app)
    with app.app_context():  # serialised: gunicorn's workers may all start at once
        ledger.migrate(db.engine)
        with db.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('flask_app setup'))"))
            db.metadata.create_all(conn)

    @app.errorhandler(RefusedError)
    def refused(error: RefusedError) -> Any:
        # 404 for an unknown tenant; 402 (Payment Required) for every other refusal
        status = 404 if isinstance(error, TenantNotFound) else 402
        return jsonify(error.outcome.to_dict()), status

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest) -> Any:
        return jsonify(error=str(error)), 400

    @app.post("/tenants/<tenant>")
    def create_tenant(tenant: str) -> Any:
        budget = microcents(body_of(request.get_json(force=True, silent=True)), "budget")
        created = budgets.ledger.ensure_tenant(tenant, budget)
        db.session.commit()
        return jsonify(created=created), 201 if created else 200

    @app.get("/tenants/<tenant>")
    def show_tenant(tenant: str) -> Any:
        row = budgets.ledger.tenant(tenant)
        if row is None:
            abort(404)
        return jsonify(row.to_dict())

    @app.post("/jobs/<tenant>")
    def run_job(tenant: str) -> Any:
        body = body_of(request.get_json(force=True, silent=True))
        estimate = microcents(body, "estimate")
        microcents(body, "actual")  # checked before anything is held
        # A refusal raises RefusedError (answered 402 above); nothing was held.
        with budgets.ledger.hold(tenant, estimate, ttl=HOLD_TTL) as hold:
            cost = do_the_work(body)  # no transaction open, no lock held
            job = Job(tenant=tenant, cost_microcents=cost)
            db.session.add(job)
            settled = hold.settle(cost)  # joins db.session: one commit for both
            if not settled.ok:  # e.g. an overrun the balance cannot cover
                db.session.rollback()  # no job row; leaving the block releases the hold
                return jsonify(settled.to_dict()), 402
            db.session.commit()
        return jsonify(job=job.id, settlement=settled.to_dict()), 201

    return app


if __name__ == "__main__":
    create_app().run()
