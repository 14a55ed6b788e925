"""The Django app, through the example project: migrations, atomic blocks, views, admin, CLI."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest

import ledger
from ledger.migrator import current_revision, head_revision, script_location
from tests.conftest import _database_url, drop_database, make_database

PROJECT = Path(__file__).resolve().parents[3] / "examples" / "django_project"


@pytest.fixture(scope="module")
def project(server_url: str) -> Iterator[str]:
    name = make_database(server_url, None)  # empty: manage.py migrate must build the ledger
    url = _database_url(server_url, name)
    sys.path.insert(0, str(PROJECT))
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    try:
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        yield url
    finally:
        from django.db import connections

        connections.close_all()
        os.environ.pop("DATABASE_URL", None)
        sys.path.remove(str(PROJECT))
        drop_database(server_url, name)


def test_manage_py_migrate_built_the_ledger(project: str) -> None:
    assert current_revision(project) == head_revision()
    from django.db.migrations.recorder import MigrationRecorder

    applied = {
        m
        for a, m in MigrationRecorder.Migration.objects.values_list("app", "name")
        if a == "sql_ledger"
    }
    twins = {
        p.stem for p in (Path(ledger.__file__).parent / "contrib/django/migrations").glob("0*.py")
    }
    assert applied == twins and "0004_journal_expired_holds" in applied


def test_every_alembic_revision_has_a_django_twin() -> None:
    revisions = {p.name.split("_")[0] for p in (script_location() / "versions").glob("[0-9]*.py")}
    twins = set()
    for path in (Path(ledger.__file__).parent / "contrib/django/migrations").glob("[0-9]*.py"):
        module = importlib.import_module(f"ledger.contrib.django.migrations.{path.stem}")
        twins.add(module.ALEMBIC_REVISION)
    assert revisions == twins, f"alembic revisions without a Django migration: {revisions - twins}"


def test_ledger_write_rolls_back_with_the_atomic_block(project: str) -> None:
    from django.db import transaction
    from shop.models import Job

    from ledger.contrib.django import get_ledger

    book = get_ledger()
    book.ensure_tenant("atomic", 1_000)
    with pytest.raises(RuntimeError), transaction.atomic():
        Job.objects.create(tenant="atomic", cost_microcents=5)
        assert book.try_reserve("atomic", 600).ok
        assert book.remaining_microcents("atomic") == 400  # visible inside the block
        raise RuntimeError("app failure")
    assert not Job.objects.filter(tenant="atomic").exists()
    assert book.tenant("atomic") == ledger.TenantLedger("atomic", 1_000, 1_000, 0, 0)
    assert book.ledger.active_reservations() == 0
    with transaction.atomic():
        Job.objects.create(tenant="atomic", cost_microcents=5)
        hold = book.try_reserve("atomic", 600)
        book.commit(hold.reservation_id, 5, tenant_id="atomic")
    assert book.tenant("atomic") == ledger.TenantLedger("atomic", 1_000, 995, 0, 5)
    assert book.verify_journal().ok


def test_views_with_the_test_client(project: str) -> None:
    from django.test import Client
    from shop.models import Job

    client = Client(raise_request_exception=False)
    post = lambda path, body: client.post(path, json.dumps(body), content_type="application/json")  # noqa: E731
    assert post("/tenants/shop", {"budget": 1_000}).status_code == 201
    done = post("/jobs/shop", {"estimate": 300, "actual": 250})
    assert done.status_code == 201, done.content
    assert done.json()["settlement"]["remaining_microcents"] == 750
    assert post("/jobs/shop", {"estimate": 10_000, "actual": 1}).status_code == 402
    failed = post("/jobs/shop", {"estimate": 300, "actual": 250, "fail": True})
    assert failed.status_code == 500
    assert client.get("/tenants/shop").json()["remaining_microcents"] == 750
    assert Job.objects.filter(tenant="shop").count() == 1


def test_admin_pages_are_read_only(project: str) -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    from ledger.contrib.django import get_ledger

    get_ledger().ensure_tenant("admin-visible", 5)
    get_ledger().try_reserve("admin-visible", 2)
    get_ledger().ledger.certify()
    get_ledger().ledger.set_threshold("admin-visible", "admin-limit", spent_percent=90)
    get_ledger().ledger.set_threshold("admin-visible", "admin-low", remaining_below_microcents=4)
    User.objects.filter(username="root").delete()
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    assert client.login(username="root", password="pw")
    for page in ("tenant", "reservation", "certificate", "threshold", "alert"):
        listing = client.get(f"/admin/sql_ledger/{page}/")
        assert listing.status_code == 200, page
        assert client.get(f"/admin/sql_ledger/{page}/add/").status_code == 403
    assert b"admin-visible" in client.get("/admin/sql_ledger/tenant/").content
    thresholds = client.get("/admin/sql_ledger/threshold/").content
    assert b"admin-limit" in thresholds and b"admin-low" in thresholds  # both rows of one tenant
    assert b"admin-low" in client.get("/admin/sql_ledger/alert/").content  # fired at once


def test_manage_py_ledger_command(project: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": project,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "PYTHONPATH": os.pathsep.join([str(PROJECT), *sys.path]),
    }

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "ledger", *a],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    created = run("--json", "tenant", "create", "cli", "77")
    assert created.returncode == 0, created.stderr
    shown = run("--json", "tenant", "show", "cli")
    assert json.loads(shown.stdout)["remaining_microcents"] == 77
    assert run("migrate", "current").returncode == 0
    assert json.loads(run("--json", "verify").stdout)["journal"]["ok"]
    bad = run("tenant", "show", "nobody")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_makemigrations_check_finds_nothing_to_do(project: str) -> None:
    """The admin's unmanaged models are in the migration state: no migration to write."""
    from django.core.management import call_command

    for apps in (["sql_ledger"], []):
        out = io.StringIO()
        call_command("makemigrations", *apps, "--check", "--dry-run", stdout=out)  # exits 1 if not
        assert "No changes detected" in out.getvalue()


def test_migrate_reports_no_unmigrated_model_changes(project: str) -> None:
    from django.core.management import call_command

    out = io.StringIO()
    call_command("migrate", stdout=out)
    assert "have changes that are not yet reflected" not in out.getvalue()
    assert "No migrations to apply" in out.getvalue()


def test_sqlmigrate_prints_the_sql_of_each_revision(
    project: str, server_url: str, server_version: int
) -> None:
    """sqlmigrate gives alembic's offline SQL; all four scripts build the ledger through psql."""
    from django.core.management import call_command

    scripts = []
    for name in sorted(
        p.stem for p in (Path(ledger.__file__).parent / "contrib/django/migrations").glob("0*.py")
    ):
        out = io.StringIO()
        call_command("sqlmigrate", "sql_ledger", name, stdout=out)
        assert "CANNOT BE WRITTEN AS SQL" not in out.getvalue()
        assert "lock_timeout" in out.getvalue()
        scripts.append(out.getvalue())
    assert "CREATE TABLE ledger.journal" in scripts[1]
    assert "CREATE INDEX CONCURRENTLY" in scripts[3]
    back = io.StringIO()
    call_command("sqlmigrate", "sql_ledger", "0003_audit_views", "--backwards", stdout=back)
    assert 'DROP VIEW "ledger".balances' in back.getvalue()

    from tests.integration.migrations.test_revisions import psql_apply

    name = make_database(server_url, None)
    try:
        url = _database_url(server_url, name)
        for script in scripts:
            applied = psql_apply(url, script, server_version)
            assert applied.returncode == 0, applied.stderr
        assert current_revision(url) == head_revision()
    finally:
        drop_database(server_url, name)


def test_django_migrations_go_backwards_and_forwards(project: str) -> None:
    from django.core.management import call_command

    call_command("migrate", "sql_ledger", "0001", verbosity=0)
    assert current_revision(project) == "0001"
    call_command("migrate", verbosity=0)
    assert current_revision(project) == head_revision()


def _journal_ops(url: str, tenant: str) -> list[str]:
    import psycopg

    from tests.conftest import _plain

    with psycopg.connect(_plain(url)) as conn:
        rows = conn.execute(
            "SELECT op FROM ledger.journal WHERE tenant_id = %s ORDER BY seq", (tenant,)
        ).fetchall()
    return [r[0] for r in rows]


def _post(path: str, body: dict[str, object]) -> object:
    from django.test import Client

    client = Client(raise_request_exception=False)
    return client.post(path, json.dumps(body), content_type="application/json")


def test_failed_work_releases_a_hold_that_was_committed_before_it(project: str) -> None:
    from shop.models import Job

    from ledger.contrib.django import get_ledger

    assert _post("/tenants/failing", {"budget": 1_000}).status_code == 201  # type: ignore[attr-defined]
    failed = _post("/jobs/failing", {"estimate": 300, "actual": 250, "fail": True})
    assert failed.status_code == 500  # type: ignore[attr-defined]
    # The hold was committed on its own before the work, then released by the failure.
    assert _journal_ops(project, "failing")[-2:] == ["reserve", "release"]
    assert not Job.objects.filter(tenant="failing").exists()
    book = get_ledger()
    # nothing held: the database is shared by this module's tests, so ask per tenant
    assert book.tenant("failing") == ledger.TenantLedger("failing", 1_000, 1_000, 0, 0)
    assert book.verify_journal().ok


def test_the_tenant_is_not_locked_while_a_request_works(project: str) -> None:
    import threading
    import time

    from django.db import connections

    from ledger.contrib.django import get_ledger

    _post("/tenants/busy", {"budget": 1_000})
    answers: list[int] = []

    def slow() -> None:
        try:
            answer = _post("/jobs/busy", {"estimate": 300, "actual": 200, "work_ms": 3_000})
            answers.append(answer.status_code)  # type: ignore[attr-defined]
        finally:
            connections.close_all()

    worker = threading.Thread(target=slow)
    worker.start()
    book = get_ledger().ledger
    deadline = time.monotonic() + 30
    while book.reserved_microcents("busy") != 300:  # committed at once, seen from outside
        assert time.monotonic() < deadline
        time.sleep(0.02)
    quick = _post("/jobs/busy", {"estimate": 300, "actual": 100})
    assert quick.status_code == 201  # type: ignore[attr-defined]
    assert worker.is_alive(), "the quick request waited for the slow one's work"
    worker.join(60)
    assert answers == [201]
    assert book.tenant("busy") == ledger.TenantLedger("busy", 1_000, 700, 0, 300)


def test_shop_has_no_migration_drift(project: str) -> None:
    from django.core.management import call_command

    call_command("makemigrations", "shop", "--check", "--dry-run", verbosity=0)


def test_wsgi_application_loads(project: str) -> None:
    from django.conf import settings

    wsgi = importlib.import_module("project.wsgi")
    assert callable(wsgi.application)
    assert settings.WSGI_APPLICATION == "project.wsgi.application"


def test_migrate_to_zero_and_back(project: str) -> None:
    """`migrate sql_ledger zero` drops the whole ledger; migrate builds it again, empty."""
    from django.core.management import call_command

    from ledger.contrib.django import get_ledger

    get_ledger().ensure_tenant("doomed", 5)
    call_command("migrate", "sql_ledger", "zero", verbosity=0)
    assert current_revision(project) is None
    call_command("migrate", verbosity=0)
    assert current_revision(project) == head_revision()
    assert get_ledger().tenant("doomed") is None
    assert get_ledger().ensure_tenant("reborn", 5)
    assert get_ledger().verify_journal().ok


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs/shop-bad", {"estimate": 1.5, "actual": 1}),
        ("/jobs/shop-bad", {"estimate": "abc", "actual": 1}),
        ("/jobs/shop-bad", {"estimate": 2**63, "actual": 1}),
        ("/jobs/shop-bad", {"estimate": -1, "actual": 1}),
        ("/jobs/shop-bad", {"estimate": 5, "actual": 1.5}),
        ("/tenants/shop-other", {"budget": 1.5}),
        ("/jobs/shop-bad", "not json"),
    ],
)
def test_views_answer_bad_money_with_a_400(project: str, path: str, body: Any) -> None:
    from django.test import Client

    client = Client(raise_request_exception=False)
    text = body if isinstance(body, str) else json.dumps(body)
    client.post("/tenants/shop-bad", json.dumps({"budget": 1_000}), content_type="application/json")
    answer = client.post(path, text, content_type="application/json")
    assert answer.status_code == 400, answer.content
    assert "error" in answer.json()
    assert client.get("/tenants/shop-bad").json()["remaining_microcents"] == 1_000
    assert client.get("/tenants/shop-other").status_code == 404
