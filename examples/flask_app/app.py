"""A small Flask app that reserves budget before work and settles it after.

    pip install -e ".[flask]"
    python examples/flask_app/app.py          # embedded PostgreSQL, port 5000
    DATABASE_URL=postgresql://... python examples/flask_app/app.py

    curl -X POST localhost:5000/tenants/acme -d '{"budget": 5000000}' -H 'Content-Type: application/json'
    curl -X POST localhost:5000/jobs/acme -d '{"estimate": 300000, "actual": 250000}' -H 'Content-Type: application/json'

The job row and the ledger writes share one transaction: if the work fails
after the reserve, neither the job nor the hold is kept.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import BigInteger, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import ledger
from ledger.contrib.flask import FlaskLedger


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
    """The (simulated) expensive work failed after the budget was reserved."""


def create_app(database_url: str | None = None) -> Flask:
    app = Flask(__name__)
    url = database_url or os.environ.get("DATABASE_URL")
    if url is None:  # no server of your own: use the embedded one
        url = ledger.embedded.start().url
    app.config["SQLALCHEMY_DATABASE_URI"] = url.replace("postgresql://", "postgresql+psycopg://", 1)
    db.init_app(app)
    budgets.init_app(app)
    with app.app_context():
        ledger.migrate(db.engine)
        db.create_all()

    @app.post("/tenants/<tenant>")
    def create_tenant(tenant: str) -> Any:
        budget = int(request.get_json(force=True)["budget"])
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
        body = request.get_json(force=True)
        hold = budgets.ledger.try_reserve(tenant, int(body["estimate"]))
        if not hold.ok:
            return jsonify(hold.to_dict()), 402
        job = Job(tenant=tenant, cost_microcents=int(body["actual"]))
        db.session.add(job)
        db.session.flush()
        if body.get("fail"):
            raise WorkFailed("the work failed after reserving")
        settled = budgets.ledger.commit(hold.reservation_id, job.cost_microcents, tenant_id=tenant)
        if not settled.ok:
            db.session.rollback()
            return jsonify(settled.to_dict()), 402
        db.session.commit()
        return jsonify(job=job.id, settlement=settled.to_dict()), 201

    return app


if __name__ == "__main__":
    create_app().run()
