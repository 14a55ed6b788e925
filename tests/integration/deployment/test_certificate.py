"""A certificate kept outside the database, checked against it (ledger/_certificate_check.py).

The restore-to-an-earlier-point scenario itself is in test_deployment_backup.py
(point-in-time recovery); these are the checks' other answers and the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

import ledger
from ledger import errors


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", "--database-url", url, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_later_database_passes_and_a_missing_certificate_is_a_rollback(
    book: ledger.Ledger,
) -> None:
    book.ensure_tenant("a", 100)
    book.try_reserve("a", 10)
    first = book.certify()
    book.try_reserve("a", 5)
    book.certify()
    assert book.check_against_certificate(first).ok
    later = {**first.to_dict(), "certificate_id": 99}
    check = book.check_against_certificate(later)
    assert not check.ok and check.latest_certificate_id == 2
    assert check.problems[0].startswith("rollback: the database has no certificate 99")


def test_a_rewritten_history_is_caught(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    book.ensure_tenant("a", 100)
    book.try_reserve("a", 10)
    cert = book.certify()
    other = {**cert.to_dict(), "ledger_digest_hex": "00" * 32}
    assert "different digest" in book.check_against_certificate(other).problems[0]
    # another chain behind the same certificate id: the certified head is gone
    raw.execute("ALTER TABLE ledger.journal DISABLE TRIGGER USER")
    raw.execute("UPDATE ledger.journal SET entry_hash = sha256(entry_hash) WHERE tenant_id = 'a'")
    raw.execute("ALTER TABLE ledger.journal ENABLE TRIGGER USER")
    check = book.check_against_certificate(cert)
    assert not check.ok and "no longer passes through the certified head" in check.problems[0]


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", json.dumps({"certificate_id": 1}), json.dumps(
        {"certificate_id": 1, "snapshot_version": 1, "ledger_digest_hex": "zz",
         "journal_root_hex": "00"})],
)  # fmt: skip
def test_unreadable_certificates_are_input_errors(
    book: ledger.Ledger, tmp_path: Path, content: str
) -> None:
    file = tmp_path / "cert.json"
    file.write_text(content)
    with pytest.raises(errors.InputError):
        book.check_against_certificate(file)
    with pytest.raises(errors.InputError):
        book.check_against_certificate(tmp_path / "missing.json")


def test_cli_certify_to_a_file_and_verify_against_it(db_url: str, tmp_path: Path) -> None:
    with ledger.Ledger(db_url) as book:
        book.ensure_tenant("a", 100)
    out = tmp_path / "cert.json"
    done = _cli(db_url, "certify", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["certificate_id"] == 1
    again = _cli(db_url, "certify", "-o", str(out))  # never overwritten
    assert again.returncode == 2 and json.loads(out.read_text())["certificate_id"] == 1
    ok = _cli(db_url, "--json", "verify", "--certificate", str(out))
    assert ok.returncode == 0 and json.loads(ok.stdout)["certificate"]["ok"] is True
    gone = tmp_path / "later.json"
    gone.write_text(json.dumps({**json.loads(out.read_text()), "certificate_id": 7}))
    bad = _cli(db_url, "verify", "--certificate", str(gone))
    assert bad.returncode == 4 and "rollback" in bad.stdout
