"""The ``ledger`` command line, through click's runner and through real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from ledger import cli
from ledger._money import format_units, parse_units
from ledger.migrator import head_revision
from tests.conftest import _plain


def invoke(url: str, *args: str, as_json: bool = True) -> Result:
    argv = ["--database-url", url, *(["--json"] if as_json else []), *args]
    return CliRunner().invoke(cli.main, argv, catch_exceptions=False)


def data(result: Result) -> Any:
    return json.loads(result.output.strip().splitlines()[-1])


# ------------------------------------------------------------------ money


@pytest.mark.parametrize(
    ("microcents", "text"),
    [
        (0, "0.00"),
        (1, "0.00000001"),
        (150_000_000, "1.50"),
        (-123_456_789, "-1.23456789"),
        (2**63 - 1, "92,233,720,368.54775807"),
    ],
)
def test_format_units_is_exact(microcents: int, text: str) -> None:
    assert format_units(microcents) == text
    assert parse_units(text) == microcents


@pytest.mark.parametrize("bad", ["", ".", "1.123456789", "1e5", "abc", "1.2.3", "--1"])
def test_parse_units_refuses_junk(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_units(bad)


# ---------------------------------------------------------------- commands


def test_tenant_lifecycle_and_spend(db_url: str) -> None:
    assert data(invoke(db_url, "tenant", "create", "acme", "1000000", "--cap", "600000"))["created"]
    assert not data(invoke(db_url, "tenant", "create", "acme", "5"))["created"]
    topped = invoke(db_url, "tenant", "top-up", "acme", "0.01", "--units")
    assert topped.exit_code == 0 and data(topped)["added_microcents"] == 1_000_000
    hold = data(invoke(db_url, "reserve", "acme", "500000"))
    assert hold["status"] == "reserved"
    done = invoke(db_url, "commit", str(hold["reservation_id"]), "400000", "--tenant", "acme")
    assert done.exit_code == 0 and data(done)["remaining_microcents"] == 1_600_000
    hold2 = data(invoke(db_url, "reserve", "acme", "100"))
    rel = invoke(db_url, "release", str(hold2["reservation_id"]))
    assert data(rel)["returned_microcents"] == 100
    shown = data(invoke(db_url, "tenant", "show", "acme"))
    assert shown["max_reserved_microcents"] == 600_000 and shown["committed_microcents"] == 400_000
    assert data(invoke(db_url, "tenant", "limit", "acme", "0"))["max_reserved_microcents"] == 0
    listed = data(invoke(db_url, "tenant", "list"))
    assert [t["tenant_id"] for t in listed["tenants"]] == ["acme"]
    assert data(invoke(db_url, "verify"))["conservation"] == {"status": "balanced"}
    cert = data(invoke(db_url, "certify"))
    assert cert["conservation_balanced"] and cert["committed_since_last_certificate"] == 400_000


def test_human_output_shows_microcents_and_units(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "acme", "123456789")
    out = invoke(db_url, "tenant", "show", "acme", as_json=False).output
    assert "123,456,789" in out and "1.23456789" in out
    refused = invoke(db_url, "reserve", "acme", "999999999999", as_json=False)
    assert refused.exit_code == cli.EXIT_REFUSED
    assert "insufficient" in refused.output and "Traceback" not in refused.output


@pytest.mark.parametrize(
    ("setup", "args", "status"),
    [
        ([], ["reserve", "ghost", "5"], "missing_tenant"),
        ([["tenant", "create", "t", "10"]], ["reserve", "t", "11"], "insufficient"),
        (
            [["tenant", "create", "t", "100", "--cap", "5"]],
            ["reserve", "t", "6"],
            "exposure_limit_exceeded",
        ),
        ([], ["commit", "12345", "5"], "missing_reservation"),
        ([], ["release", "12345"], "missing_reservation"),
        ([["tenant", "create", "t", "10"]], ["tenant", "top-up", "t", "0"], "invalid_amount"),
        ([["tenant", "create", "t", str(2**63 - 1)]], ["tenant", "top-up", "t", "1"], "overflow"),
    ],
)
def test_refusals_exit_1(db_url: str, setup: list[list[str]], args: list[str], status: str) -> None:
    for step in setup:
        assert invoke(db_url, *step).exit_code == 0
    result = invoke(db_url, *args)
    assert result.exit_code == cli.EXIT_REFUSED
    assert data(result)["status"] == status


def test_overrun_exits_1_and_keeps_the_hold(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "t", "10")
    rid = data(invoke(db_url, "reserve", "t", "7"))["reservation_id"]
    result = invoke(db_url, "commit", str(rid), "11")
    assert result.exit_code == cli.EXIT_REFUSED and data(result)["status"] == "overrun"
    assert data(invoke(db_url, "tenant", "show", "t"))["reserved_microcents"] == 7


@pytest.mark.parametrize(
    "args",
    [
        ["tenant", "create", "t", "1.5"],
        ["tenant", "create", "t", "abc"],
        ["tenant", "create", "t", "-1"],
        ["tenant", "create", "x" * 300, "1"],
        ["tenant", "create", "t", str(2**63)],
        ["tenant", "top-up", "t", "1.123456789", "--units"],
        ["tenant", "limit", "nobody", "5"],
        ["tenant", "show", "nobody"],
        ["commit", "notanumber", "5"],
        ["commit", "-1", "5"],
        ["reserve", "t"],
        ["no-such-command"],
    ],
)
def test_bad_input_exits_2_with_one_line(db_url: str, args: list[str]) -> None:
    result = invoke(db_url, *args, as_json=False)
    assert result.exit_code == cli.EXIT_BAD_INPUT, result.output
    assert "Traceback" not in result.output
    assert result.output.strip()


def test_snapshot_restore_round_trip(db_url: str, tmp_path: Path) -> None:
    invoke(db_url, "tenant", "create", "a", "100")
    rid = data(invoke(db_url, "reserve", "a", "40"))["reservation_id"]
    invoke(db_url, "commit", str(rid), "30")
    file = tmp_path / "snap.json"
    written = data(invoke(db_url, "snapshot", "-o", str(file)))
    assert written["tenants"] == 1
    invoke(db_url, "tenant", "create", "b", "5")
    invoke(db_url, "tenant", "top-up", "a", "1000")
    restored = invoke(db_url, "restore", str(file), "--yes")
    assert restored.exit_code == 0
    tenants = data(invoke(db_url, "tenant", "list"))["tenants"]
    assert tenants == json.loads(file.read_text())["tenants"]
    # the plain form prints the JSON itself
    assert json.loads(invoke(db_url, "snapshot", as_json=False).output)["tenants"] == tenants


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"version": 1}',
        '{"version": 1, "active_reservations": 0, "tenants": [{"tenant_id": "a", "initial_microcents": 1.5,'
        ' "remaining_microcents": 0, "reserved_microcents": 0, "committed_microcents": 0}]}',
        '{"version": 1, "active_reservations": 2, "tenants": []}',
        '{"version": 1, "active_reservations": 0, "tenants": [{"tenant_id": "a", "initial_microcents": 5,'
        ' "remaining_microcents": 4, "reserved_microcents": 0, "committed_microcents": 0}]}',
    ],
)
def test_restore_bad_files_exit_2_and_change_nothing(
    db_url: str, tmp_path: Path, content: str
) -> None:
    invoke(db_url, "tenant", "create", "keep", "9")
    before = data(invoke(db_url, "tenant", "list"))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = invoke(db_url, "restore", str(bad))
    assert result.exit_code == cli.EXIT_BAD_INPUT
    assert "error" in data(result)
    assert data(invoke(db_url, "tenant", "list")) == before


def test_binary_restore_file_exits_2(db_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    assert invoke(db_url, "restore", str(bad), as_json=False).exit_code == cli.EXIT_BAD_INPUT


def test_database_errors_exit_3(empty_db_url: str) -> None:
    unmigrated = invoke(empty_db_url, "tenant", "list", as_json=False)
    assert unmigrated.exit_code == cli.EXIT_DATABASE
    assert "ledger migrate" in unmigrated.output and "Traceback" not in unmigrated.output
    nowhere = invoke("postgresql://nobody@127.0.0.1:1/none", "tenant", "list", as_json=False)
    assert nowhere.exit_code == cli.EXIT_DATABASE


def test_verify_exits_4_on_imbalance(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "t", "10")
    with psycopg.connect(_plain(db_url), autocommit=True) as conn:
        conn.execute("ALTER TABLE ledger.tenants DROP CONSTRAINT tenants_conservation")
        conn.execute("UPDATE ledger.tenants SET remaining_microcents = 3")
    result = invoke(db_url, "verify")
    assert result.exit_code == cli.EXIT_UNBALANCED
    assert data(result)["conservation"] == {
        "status": "violation",
        "tenant_id": "t",
        "delta_microcents": -7,
    }


def test_migrate_commands(empty_db_url: str) -> None:
    assert data(invoke(empty_db_url, "migrate", "current"))["revision"] is None
    head = head_revision()
    assert data(invoke(empty_db_url, "migrate"))["revision"] == head
    assert data(invoke(empty_db_url, "migrate", "downgrade", "0001", "--yes"))["revision"] == "0001"
    assert data(invoke(empty_db_url, "migrate", "downgrade", "base", "--yes"))["revision"] is None
    assert data(invoke(empty_db_url, "migrate", "upgrade", "head"))["revision"] == head
    assert invoke(empty_db_url, "--schema", "other", "migrate").exit_code == 0


def test_demo_against_a_url(db_url: str) -> None:
    result = invoke(db_url, "demo", "--workers", "4", "--operations", "20")
    assert result.exit_code == 0
    out = data(result)
    assert out["operations"] == 80
    assert out["conservation"] == {"status": "balanced"}
    assert len(out["certificate"]["ledger_digest_hex"]) == 64
    assert sum(t["committed_microcents"] for t in out["tenants"]) == out["committed_microcents"]


# ------------------------------------------------------- real entry points


def run_ledger(
    exe: list[str], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=300, env=env)


def test_module_entry_point_in_a_subprocess(db_url: str) -> None:
    exe = [sys.executable, "-m", "ledger", "--database-url", db_url, "--json"]
    assert run_ledger(exe, "tenant", "create", "p", "5").returncode == 0
    refused = run_ledger(exe, "reserve", "p", "6")
    assert refused.returncode == cli.EXIT_REFUSED
    assert json.loads(refused.stdout)["status"] == "insufficient"
    bad = run_ledger(
        [sys.executable, "-m", "ledger", "--database-url", db_url], "reserve", "p", "x"
    )
    assert bad.returncode == cli.EXIT_BAD_INPUT and "Traceback" not in bad.stderr
    demo = run_ledger(exe, "demo", "--workers", "2", "--operations", "5")
    assert demo.returncode == 0
    assert json.loads(demo.stdout)["conservation"]["status"] == "balanced"
    assert "\r" not in demo.stderr  # no progress bar when not on a terminal


def test_verify_replays_the_journal_and_exits_4_on_tampering(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "t", "100")
    cert = data(invoke(db_url, "certify"))
    invoke(db_url, "reserve", "t", "10")
    clean = data(invoke(db_url, "verify"))
    assert clean["journal"]["ok"] and clean["journal"]["entries_checked"] == 2
    since = data(invoke(db_url, "verify", "--since-certificate", str(cert["certificate_id"])))
    assert since["journal"]["entries_checked"] == 1
    with psycopg.connect(_plain(db_url), autocommit=True) as conn:
        conn.execute("UPDATE ledger.tenants SET journal_head = sha256('x')")
    result = invoke(db_url, "verify")
    assert result.exit_code == cli.EXIT_UNBALANCED
    assert data(result)["journal"]["discrepancies"][0]["kind"] == "head_mismatch"
    human = invoke(db_url, "verify", as_json=False)
    assert "head_mismatch" in human.output and human.exit_code == cli.EXIT_UNBALANCED
    assert invoke(db_url, "verify", "--no-journal").exit_code == 0


def test_ttl_expire_keys_and_prune(db_url: str) -> None:
    invoke(db_url, "tenant", "create", "t", "100")
    first = data(invoke(db_url, "reserve", "t", "10", "--ttl", "3600", "--idempotency-key", "a"))
    assert (
        data(invoke(db_url, "reserve", "t", "10", "--ttl", "3600", "--idempotency-key", "a"))
        == first
    )
    clash = invoke(db_url, "reserve", "t", "11", "--idempotency-key", "a")
    assert clash.exit_code == cli.EXIT_BAD_INPUT and "different request" in data(clash)["error"]
    assert invoke(db_url, "reserve", "t", "1", "--ttl", "0").exit_code == cli.EXIT_BAD_INPUT
    with psycopg.connect(_plain(db_url), autocommit=True) as conn:
        conn.execute("UPDATE ledger.reservations SET expires_at = now() - interval '1 second'")
    assert data(invoke(db_url, "expire")) == {"expired": 1}
    assert data(invoke(db_url, "tenant", "show", "t"))["remaining_microcents"] == 100
    assert data(invoke(db_url, "prune-keys", "--older-than-hours", "0"))["pruned"] == 1
    top = ["tenant", "top-up", "t", "5", "--idempotency-key", "f"]
    assert data(invoke(db_url, *top)) == data(invoke(db_url, *top))
    rid = data(invoke(db_url, "reserve", "t", "7"))["reservation_id"]
    once = ["commit", str(rid), "7", "--tenant", "t", "--idempotency-key", "c"]
    assert data(invoke(db_url, *once)) == data(invoke(db_url, *once))
    assert data(invoke(db_url, "tenant", "show", "t"))["initial_microcents"] == 105
