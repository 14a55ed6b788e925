"""The operator's side of the ``ledger`` command (issue 27): tables, confirmations, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

import ledger
from ledger import cli
from tests.conftest import _plain

MAX = 2**63 - 1


def invoke(url: str, *args: str, as_json: bool = False, stdin: str | None = None) -> Result:
    argv = ["--database-url", url, *(["--json"] if as_json else []), *args]
    return CliRunner().invoke(cli.main, argv, input=stdin, catch_exceptions=False)


def data(result: Result) -> Any:
    return json.loads(result.output.strip().splitlines()[-1])


def tables(url: str) -> set[str]:
    with psycopg.connect(_plain(url)) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'ledger'"
        ).fetchall()
    return {r[0] for r in rows}


# ------------------------------------------------------------ 2: tables


def test_tables_show_every_digit_when_piped(db_url: str) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("billion", 1_000_000_000_000_000)
        book.ensure_tenant("max", MAX)
        book.ensure_tenant("two\nlines", 5)
    for args in (["tenant", "list"], ["tenant", "show", "max"]):
        out = invoke(db_url, *args).output
        assert "9,223,372,036,854,775,807" in out, out
        assert "92,233,720,368.54775807" in out, out
        assert "…" not in out
    listed = invoke(db_url, "tenant", "list").output
    assert "1,000,000,000,000,000" in listed
    # the newline is shown escaped, on the tenant's own line
    assert any("two\\nlines" in line for line in listed.splitlines()), listed
    assert not any(line.strip() == "lines" for line in listed.splitlines())
    at = invoke(db_url, "balances", "--at", "2100-01-01T00:00:00Z").output
    assert "9,223,372,036,854,775,807" in at and "…" not in at, at


def test_tables_show_every_digit_on_an_80_column_terminal(db_url: str) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("max", MAX)
    env = {"COLUMNS": "80", "FORCE_COLOR": "0", "TTY_COMPATIBLE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "--database-url", db_url, "tenant", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "9,223,372,036,854,775,807" in result.stdout and "…" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


# -------------------------------------------- 4: destructive commands ask


def test_downgrade_base_without_yes_off_a_terminal_changes_nothing(db_url: str) -> None:
    before = tables(db_url)
    refused = invoke(db_url, "migrate", "downgrade", "base")
    assert refused.exit_code == cli.EXIT_BAD_INPUT
    assert "--yes" in refused.output
    assert tables(db_url) == before
    done = invoke(db_url, "migrate", "downgrade", "base", "--yes", as_json=True)
    assert done.exit_code == 0 and data(done)["revision"] is None


def test_restore_without_yes_off_a_terminal_changes_nothing(db_url: str, tmp_path: Path) -> None:
    invoke(db_url, "tenant", "create", "a", "100")
    file = tmp_path / "snap.json"
    assert invoke(db_url, "snapshot", "-o", str(file)).exit_code == 0
    invoke(db_url, "tenant", "top-up", "a", "50")
    refused = invoke(db_url, "restore", str(file))
    assert refused.exit_code == cli.EXIT_BAD_INPUT and "--yes" in refused.output
    assert data(invoke(db_url, "tenant", "show", "a", as_json=True))["initial_microcents"] == 150
    assert invoke(db_url, "restore", str(file), "--yes").exit_code == 0
    assert data(invoke(db_url, "tenant", "show", "a", as_json=True))["initial_microcents"] == 100


# ------------------------------------------------------ 5, 8, 9: errors


def test_an_empty_database_url_is_an_error() -> None:
    result = CliRunner().invoke(cli.main, ["--database-url", "", "tenant", "list"])
    assert result.exit_code == cli.EXIT_BAD_INPUT
    assert "--database-url" in result.output and "empty" in result.output


def test_a_refused_connection_is_not_called_lost(db_url: str) -> None:
    known = make_url(db_url)
    for url, hint in (
        ("postgresql://nobody@127.0.0.1:1/none", "Connection refused"),
        (known.set(database="no_such_database_27"), "no_such_database_27"),
        (known.set(username="no_such_role_27"), "no_such_role_27"),
    ):
        if not isinstance(url, str):
            url = url.render_as_string(hide_password=False)
        result = invoke(url, "tenant", "list")
        assert result.exit_code == cli.EXIT_DATABASE
        assert "lost the connection" not in result.output, result.output
        assert "could not connect" in result.output and hint in result.output, result.output
        assert "check the URL" in result.output


def test_an_unknown_revision_is_bad_input(empty_db_url: str) -> None:
    result = invoke(empty_db_url, "migrate", "upgrade", "nosuchrev")
    assert result.exit_code == cli.EXIT_BAD_INPUT, result.output
    assert "nosuchrev" in result.output
    assert "please report" not in result.output and "internal error" not in result.output


# ------------------------------------------------- 6: certify at 2^63 - 1


def test_certify_explains_totals_it_cannot_represent(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "max", str(MAX))
    invoke(db_url, "tenant", "create", "one", "1")
    assert data(invoke(db_url, "verify", "--no-journal", as_json=True))["conservation"] == {
        "status": "balanced"
    }
    out = invoke(db_url, "certify").output
    assert "conservation_balanced: False" not in out
    assert "2^63" in out and "verify" in out, out


# ---------------------------------------------- 10, 11: amounts and flags


def test_negative_amounts_get_a_clear_message(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "alice", "100")
    for args in (["reserve", "alice", "-5"], ["tenant", "create", "bob", "-100"]):
        result = invoke(db_url, *args)
        assert result.exit_code == cli.EXIT_BAD_INPUT, result.output
        assert "No such option" not in result.output
        assert "negative" in result.output and "-100" not in result.output.replace(args[-1], ""), (
            result.output
        )
    assert invoke(db_url, "tenant", "show", "bob").exit_code == cli.EXIT_BAD_INPUT


def test_json_is_accepted_after_the_subcommand(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "alice", "100")
    result = invoke(db_url, "reserve", "alice", "5", "--json")
    assert result.exit_code == 0, result.output
    assert data(result)["status"] == "reserved"


def test_reserve_quiet_prints_the_id_alone(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "alice", "100")
    result = invoke(db_url, "reserve", "alice", "5", "-q")
    assert result.exit_code == 0
    rid = int(result.output.strip())
    assert invoke(db_url, "release", str(rid)).exit_code == 0


# ------------------------------------------------------------ 12: smaller


def test_cli_words_in_errors(db_url: str) -> None:
    result = invoke(db_url, "tenant", "limit", "nobody", "5")
    assert result.exit_code == cli.EXIT_BAD_INPUT
    assert "ensure_tenant()" not in result.output and "ledger tenant create" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--workers", "-1"],
        ["demo", "--operations", "0"],
        ["tenant", "create", "c", "10", "--cap", "-1"],
        ["tenant", "create", " spaced ", "10"],
        ["tenant", "create", "tab\there", "10"],
    ],
)
def test_bad_options_and_ids_are_refused(db_url: str, args: list[str]) -> None:
    result = invoke(db_url, *args)
    assert result.exit_code == cli.EXIT_BAD_INPUT, result.output
    assert data(invoke(db_url, "tenant", "list", as_json=True))["tenants"] == []


# ------------------------------------------------- 3: ledger embedded reset


def test_embedded_reset_asks_then_wipes_the_data() -> None:
    # outside pytest's temp root: the server may run as another user (see test_faults)
    root = Path(tempfile.mkdtemp(prefix="ledger-reset-"))
    data_dir = root / "pg"

    def run(*args: str) -> Result:
        argv = ["--data-dir", str(data_dir), *args]
        return CliRunner().invoke(cli.main, argv, catch_exceptions=False)

    try:
        assert run("tenant", "create", "acme", "10").exit_code == 0
        assert (data_dir / "PG_VERSION").exists()
        refused = run("embedded", "reset")
        assert refused.exit_code == cli.EXIT_BAD_INPUT and "--yes" in refused.output
        assert "acme" in run("tenant", "list").output
        done = run("--json", "embedded", "reset", "--yes")
        assert done.exit_code == 0, done.output
        assert data(done)["deleted"] and not data_dir.exists()
        assert run("--json", "tenant", "list").output.strip().endswith('{"tenants": []}')
    finally:
        ledger.embedded.stop(data_dir)
        shutil.rmtree(root, ignore_errors=True)


def test_embedded_reset_refuses_a_directory_that_is_not_postgres(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(
        cli.main, ["--data-dir", str(tmp_path), "embedded", "reset", "--yes"]
    )
    assert result.exit_code == cli.EXIT_BAD_INPUT and "PG_VERSION" in result.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_downgrade_asks_on_a_terminal_and_no_keeps_everything(db_url: str) -> None:
    import os
    import pty

    before = tables(db_url)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledger",
                "--database-url",
                db_url,
                "migrate",
                "downgrade",
                "base",
            ],
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(leader, b"n\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == cli.EXIT_BAD_INPUT, (out, err)
    assert "Continue?" in err and "aborted" in err
    assert tables(db_url) == before
