"""Every Python example in docs/*.md runs, as written, against a real database.

docs/integration.md's blocks are grouped by the section they appear in, and
each section's blocks run in the environment they assume: plain Python for
SQLAlchemy and Flask (then driven through Flask's test client), a settings
module and a separate interpreter for Django (its settings are process-wide),
and alembic's own ``upgrade``/``downgrade`` for the host ``env.py``. Python
blocks in any other docs page run in order in one namespace, as the README's
do in tests/integration/docs/test_readme.py. ``test_every_python_block_is_run`` fails when a
block appears that no runner here executes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import make_url

import ledger
from ledger.migrator import current_revision, head_revision
from tests.conftest import _plain
from tests.helpers import python_block_matches, python_blocks

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"
INTEGRATION = DOCS / "integration.md"
DJANGO_PROJECT = ROOT / "examples" / "django_project"
HOST_APP = Path(__file__).resolve().parents[2] / "host_app"

#: docs/integration.md: section heading -> how many Python blocks its runner executes.
INTEGRATION_RUNNERS = {
    "Plain SQLAlchemy": 1,
    "Flask": 1,
    "Django": 2,
    "A host application's own alembic history": 1,
}


def sections(path: Path) -> dict[str, list[str]]:
    """Python blocks of a page, grouped under the ``## `` heading they follow."""
    text = path.read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    for offset, block in python_block_matches(text, path.name):
        headings = re.findall(r"^## (.+?)\s*$", text[:offset], re.M)
        out.setdefault(headings[-1] if headings else "", []).append(block)
    return out


def other_pages() -> list[Path]:
    return [p for p in sorted(DOCS.glob("*.md")) if p != INTEGRATION]


def sqlalchemy_url(url: str) -> str:
    """The URL as a SQLAlchemy user writes it, with the psycopg 3 driver named."""
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def run_block(block: str, where: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    namespace = {"__name__": "docs_example"} if namespace is None else namespace
    exec(compile(block, where, "exec"), namespace)
    return namespace


@pytest.fixture
def database_url(empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty database as ``DATABASE_URL``: each recipe migrates it itself."""
    url = sqlalchemy_url(empty_db_url)
    monkeypatch.setenv("DATABASE_URL", url)
    yield url


# ----------------------------------------------------------------- coverage


def test_every_python_block_is_run() -> None:
    found = sections(INTEGRATION)
    assert {k: len(v) for k, v in found.items()} == INTEGRATION_RUNNERS, (
        "docs/integration.md's Python blocks changed: give each new block a runner in "
        "tests/integration/docs/test_docs.py (INTEGRATION_RUNNERS and a test) so that it runs"
    )
    total = sum(len(python_blocks(p)) for p in sorted(DOCS.glob("*.md")))
    assert total == sum(INTEGRATION_RUNNERS.values()) + sum(
        len(python_blocks(p)) for p in other_pages()
    )


def test_fences_that_look_like_python_are_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n```py\nx = 1\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="fence Python examples as ```python"):
        python_blocks(page)
    page.write_text("- item\n\n  ```python\n  x = 1\n  ```\n", encoding="utf-8")
    assert python_blocks(page) == ["x = 1\n"]


# ------------------------------------------------------ docs/integration.md


def test_plain_sqlalchemy_recipe(database_url: str, empty_db_url: str) -> None:
    (block,) = sections(INTEGRATION)["Plain SQLAlchemy"]
    ns = run_block(block, f"{INTEGRATION}: Plain SQLAlchemy")
    try:
        hold = ns["hold"]
        with psycopg.connect(_plain(empty_db_url)) as conn:
            assert conn.execute("SELECT reservation_id FROM public.orders").fetchall() == [
                (hold.reservation_id,)
            ]
        book = ns["book"]
        assert book.tenant("acme") == ledger.TenantLedger("acme", 1_000_000, 750_000, 250_000, 0)
        assert book.verify_journal().ok
    finally:
        ns["book"].close()
        ns["engine"].dispose()


def test_flask_recipe(database_url: str) -> None:
    (block,) = sections(INTEGRATION)["Flask"]
    ns = run_block(block, f"{INTEGRATION}: Flask")
    app, budgets, db, job = ns["app"], ns["budgets"], ns["db"], ns["Job"]
    try:
        with app.app_context():
            budgets.ledger.ensure_tenant("acme", 1_000_000)
            budgets.ledger.ensure_tenant("poor", 100_000)
            db.session.commit()
        client = app.test_client()
        done = client.post("/jobs/acme")
        assert done.status_code == 201, done.text
        assert client.post("/jobs/poor").status_code == 402  # 250_000 estimate > 100_000
        refused = client.post("/jobs/nobody")
        assert refused.status_code == 402
        assert refused.json["status"] == "missing_tenant"
        with app.app_context():
            assert [(j.tenant, j.cost_microcents) for j in db.session.query(job)] == [
                ("acme", 180_000)
            ]
            book = budgets.ledger
            assert book.tenant("acme") == ledger.TenantLedger(
                "acme", 1_000_000, 820_000, 0, 180_000
            )
            assert book.tenant("poor") == ledger.TenantLedger("poor", 100_000, 100_000, 0, 0)
            assert book.ledger.verify_journal().ok
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


# A settings module with what the Django block assumes is already there: the
# project's own INSTALLED_APPS and DATABASES (from DATABASE_URL). The doc's
# settings block is appended to it as written.
DJANGO_BASE_SETTINGS = """\
import os

from sqlalchemy import make_url

SECRET_KEY = "docs-test-only"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shop"]

_url = make_url(os.environ["DATABASE_URL"])
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.database,
        "USER": _url.username or "",
        "PASSWORD": _url.password or "",
        "HOST": _url.query.get("host") or _url.host or "",
        "PORT": str(_url.port or ""),
    }
}
"""

# Runs in its own interpreter: migrate with manage.py's command, then use the
# doc's run_job as an application would, and report what happened.
DJANGO_DRIVER = """\
import json

import django

django.setup()

from django.core.management import call_command

call_command("migrate", verbosity=0)

import ledger
from ledger.contrib.django import get_ledger
from shop.models import Job

import docs_jobs

get_ledger().ensure_tenant("acme", 1_000_000)
job = docs_jobs.run_job("acme", 250_000, 180_000)
refused = []
for estimate, actual in ((10_000_000, 1), (250_000, 10_000_000)):
    try:
        docs_jobs.run_job("acme", estimate, actual)
    except ledger.errors.RefusedError as exc:
        refused.append(exc.outcome.status)
print(json.dumps({
    "job": [job.tenant, job.cost_microcents],
    "refused": refused,
    "jobs": list(Job.objects.values_list("tenant", "cost_microcents")),
    "tenant": get_ledger().tenant("acme").to_dict(),
    "journal_ok": get_ledger().verify_journal().ok,
}))
"""


def test_django_recipe(database_url: str, empty_db_url: str, tmp_path: Path) -> None:
    settings_block, jobs_block = sections(INTEGRATION)["Django"]
    assert settings_block.startswith("# settings.py")
    assert jobs_block.startswith("# shop/jobs.py")
    (tmp_path / "docs_settings.py").write_text(
        DJANGO_BASE_SETTINGS + "\n" + settings_block, encoding="utf-8"
    )
    (tmp_path / "docs_jobs.py").write_text(jobs_block, encoding="utf-8")
    (tmp_path / "driver.py").write_text(DJANGO_DRIVER, encoding="utf-8")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "docs_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(DJANGO_PROJECT), *sys.path]),
    }
    run = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["job"] == ["acme", 180_000]
    # refused at the reserve, and at the commit after the job row was written
    assert report["refused"] == ["insufficient", "overrun"]
    assert report["jobs"] == [["acme", 180_000]]  # the refused runs' atomic blocks kept nothing
    assert report["tenant"] == ledger.TenantLedger("acme", 1_000_000, 820_000, 0, 180_000).to_dict()
    assert report["journal_ok"]
    assert current_revision(empty_db_url) == head_revision()


def test_host_alembic_recipe(empty_db_url: str, tmp_path: Path) -> None:
    (block,) = sections(INTEGRATION)["A host application's own alembic history"]
    script = tmp_path / "migrations"
    shutil.copytree(HOST_APP, script, ignore=shutil.ignore_patterns("env.py", "__pycache__"))
    (script / "env.py").write_text(block, encoding="utf-8")
    cfg = Config()
    cfg.set_main_option("script_location", str(script))
    cfg.set_main_option("sqlalchemy.url", empty_db_url.replace("%", "%%"))

    def tables() -> set[str]:
        with psycopg.connect(_plain(empty_db_url)) as conn:
            rows = conn.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables"
                " WHERE table_schema IN ('public', 'ledger') AND table_type = 'BASE TABLE'"
            ).fetchall()
        return {r[0] for r in rows}

    command.upgrade(cfg, "head")
    assert current_revision(empty_db_url) == head_revision()
    assert {"public.orders", "public.alembic_version", "ledger.tenants"} <= tables()
    command.downgrade(cfg, "base")
    assert current_revision(empty_db_url) is None
    assert tables() == {"public.alembic_version", "ledger.alembic_version"}
    command.upgrade(cfg, "head")
    assert current_revision(empty_db_url) == head_revision()


# ------------------------------------------------------------- other pages


def test_other_pages_python_blocks_run_in_order(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any page but integration.md: its blocks run in order, in one namespace per page."""
    pages = [(page, python_blocks(page)) for page in other_pages()]
    pages = [(page, blocks) for page, blocks in pages if blocks]
    if not pages:
        return  # today every other page's examples are SQL or shell (audit.md has its own test)
    monkeypatch.setenv("DATABASE_URL", sqlalchemy_url(request.getfixturevalue("db_url")))
    for page, blocks in pages:
        namespace: dict[str, Any] = {"__name__": "docs_example"}
        for index, block in enumerate(blocks):
            run_block(block, f"{page}: block {index + 1}", namespace)
