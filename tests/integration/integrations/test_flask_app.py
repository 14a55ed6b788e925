"""The Flask extension, through the example app and Flask's test client."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask

import ledger
from ledger.contrib.flask import FlaskLedger
from tests.conftest import _plain

ROOT = Path(__file__).resolve().parents[3]


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "flask_example", ROOT / "examples/flask_app/app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["flask_example"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example(db_url: str) -> Any:
    module = load_example()
    app = module.create_app(db_url)
    app.config["TESTING"] = False  # let errors become 500s as in production
    yield app, module
    with app.app_context():
        module.db.engine.dispose()


def test_reserve_work_commit(example: Any) -> None:
    app, module = example
    client = app.test_client()
    assert client.post("/tenants/acme", json={"budget": 1_000}).status_code == 201
    done = client.post("/jobs/acme", json={"estimate": 300, "actual": 250})
    assert done.status_code == 201
    assert done.get_json()["settlement"]["remaining_microcents"] == 750
    refused = client.post("/jobs/acme", json={"estimate": 5_000, "actual": 1})
    assert refused.status_code == 402 and refused.get_json()["status"] == "insufficient"
    assert client.get("/tenants/acme").get_json()["committed_microcents"] == 250
    with app.app_context():
        assert module.db.session.query(module.Job).count() == 1


def test_a_view_that_fails_after_reserving_keeps_nothing(example: Any) -> None:
    app, module = example
    client = app.test_client()
    client.post("/tenants/acme", json={"budget": 1_000})
    failed = client.post("/jobs/acme", json={"estimate": 300, "actual": 250, "fail": True})
    assert failed.status_code == 500
    state = client.get("/tenants/acme").get_json()
    assert state == {
        "tenant_id": "acme",
        "initial_microcents": 1_000,
        "remaining_microcents": 1_000,
        "reserved_microcents": 0,
        "committed_microcents": 0,
    }
    with app.app_context():
        assert module.db.session.query(module.Job).count() == 0
        book = ledger.Ledger(module.db.engine)
        assert book.active_reservations() == 0
        assert book.verify_journal().ok


def journal_ops(db_url: str, tenant: str) -> list[str]:
    with psycopg.connect(_plain(db_url)) as conn:
        rows = conn.execute(
            "SELECT op FROM ledger.journal WHERE tenant_id = %s ORDER BY seq", (tenant,)
        ).fetchall()
    return [r[0] for r in rows]


def test_failed_work_releases_a_hold_that_was_committed_before_it(
    example: Any, db_url: str
) -> None:
    app, module = example
    client = app.test_client()
    client.post("/tenants/acme", json={"budget": 1_000})
    failed = client.post("/jobs/acme", json={"estimate": 300, "actual": 250, "fail": True})
    assert failed.status_code == 500
    # The hold was real (committed on its own before the work) and then released:
    # not merely rolled back with a long transaction that held the tenant's row lock.
    assert journal_ops(db_url, "acme")[-2:] == ["reserve", "release"]
    assert client.get("/tenants/acme").get_json()["remaining_microcents"] == 1_000
    with app.app_context():
        assert module.db.session.query(module.Job).count() == 0
        assert ledger.Ledger(module.db.engine).active_reservations() == 0


def test_the_tenant_is_not_locked_while_a_request_works(example: Any, db_url: str) -> None:
    app, _ = example
    app.test_client().post("/tenants/acme", json={"budget": 1_000})
    slow_answer: list[int] = []
    slow = threading.Thread(
        target=lambda: slow_answer.append(
            app.test_client()
            .post("/jobs/acme", json={"estimate": 300, "actual": 200, "work_ms": 3_000})
            .status_code
        )
    )
    slow.start()
    with ledger.Ledger(db_url) as book:
        deadline = time.monotonic() + 30
        while book.reserved_microcents("acme") != 300:  # committed at once, seen from outside
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # Mid-work: another request of the same tenant goes through at once.
        quick = app.test_client().post("/jobs/acme", json={"estimate": 300, "actual": 100})
        assert quick.status_code == 201
        assert slow.is_alive(), "the quick request waited for the slow one's work"
        slow.join(60)
        assert slow_answer == [201]
        assert book.tenant("acme") == ledger.TenantLedger("acme", 1_000, 700, 0, 300)
        assert book.verify_journal().ok


def test_flask_cli_commands(example: Any) -> None:
    app, _ = example
    app.test_client().post("/tenants/acme", json={"budget": 1_000})
    runner = app.test_cli_runner()
    shown = runner.invoke(args=["ledger", "--json", "tenant", "show", "acme"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["remaining_microcents"] == 1_000
    assert runner.invoke(args=["ledger", "migrate", "current"]).exit_code == 0
    verify = runner.invoke(args=["ledger", "--json", "verify"])
    assert json.loads(verify.output)["journal"]["ok"]
    snap = runner.invoke(args=["ledger", "snapshot"])
    assert json.loads(snap.output)["tenants"][0]["tenant_id"] == "acme"
    missing = runner.invoke(args=["ledger", "tenant", "show", "nobody"])
    assert missing.exit_code == 2 and "Traceback" not in missing.output


def test_without_flask_sqlalchemy_the_app_context_is_the_transaction(db_url: str) -> None:
    app = Flask("plain")
    app.config["LEDGER_DATABASE_URL"] = db_url
    budgets = FlaskLedger(app)

    @app.post("/spend/<int:fail>")
    def spend(fail: int) -> Any:
        hold = budgets.ledger.try_reserve("t", 10)
        if fail:
            raise RuntimeError("boom")
        budgets.ledger.commit(hold.reservation_id, 10, tenant_id="t")
        return {"ok": True}

    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("t", 100)
        client = app.test_client()
        assert client.post("/spend/0").status_code == 200
        assert client.post("/spend/1").status_code == 500
        assert book.tenant("t") == ledger.TenantLedger("t", 100, 90, 0, 10)
    with app.app_context():
        app.extensions["sql_ledger"].engine().dispose()


def test_extension_needs_init_app() -> None:
    app = Flask("bare")
    ext = FlaskLedger()
    with app.app_context(), pytest.raises(RuntimeError, match="init_app"):
        ext.ledger.tenant_count()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs/acme", {"estimate": 1.5, "actual": 1}),
        ("/jobs/acme", {"estimate": "abc", "actual": 1}),
        ("/jobs/acme", {"estimate": 2**63, "actual": 1}),
        ("/jobs/acme", {"estimate": -1, "actual": 1}),
        ("/jobs/acme", {"estimate": 5, "actual": 1.5}),
        ("/jobs/acme", {"actual": 1}),
        ("/tenants/other", {"budget": 1.5}),
        ("/tenants/other", {"budget": 2**63}),
    ],
)
def test_bad_money_is_a_4xx_with_a_message(example: Any, path: str, body: dict[str, Any]) -> None:
    app, _ = example
    client = app.test_client()
    assert client.post("/tenants/acme", json={"budget": 1_000}).status_code == 201
    answer = client.post(path, json=body)
    assert 400 <= answer.status_code < 500, answer.data
    assert "microcents" in answer.get_json()["error"]
    assert client.get("/tenants/acme").get_json()["remaining_microcents"] == 1_000
    assert client.get("/tenants/other").status_code == 404


def test_a_body_that_is_not_json_is_a_400(example: Any) -> None:
    app, _ = example
    answer = app.test_client().post("/jobs/acme", data="not json", content_type="text/plain")
    assert answer.status_code == 400 and "JSON" in answer.get_json()["error"]
