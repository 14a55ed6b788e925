"""docs/journal.md's tamper-evidence table, row by row: who catches which tampering.

Each attack is run by the table owner (past the append-only triggers) on a
ledger with one certificate, whose JSON is kept "outside" (here: in the test).
Two detectors are compared: the replay with what the database itself holds,
certificates included (``verify_journal``), and ``ledger verify
--certificate FILE`` (the replay plus ``check_against_certificate``). The
strongest attacker also fixes up every certificate row the database holds,
which only a certificate kept outside can expose; and nothing exposes the
loss of entries written after the newest certificate kept outside.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import ledger
from ledger.journal import RootHasher, entry_hash

pytestmark = pytest.mark.pg_versions

OWNED = ("journal", "certificates", "certificate_checkpoints")


def owner(raw: psycopg.Connection, *statements: str, params: Any = None) -> None:
    for table in OWNED:
        raw.execute(f"ALTER TABLE ledger.{table} DISABLE TRIGGER USER")
    try:
        for statement in statements:
            raw.execute(statement, params)
    finally:
        for table in OWNED:
            raw.execute(f"ALTER TABLE ledger.{table} ENABLE TRIGGER USER")


def rechain(raw: psycopg.Connection, tenant: str) -> None:
    """Recompute every hash of the tenant's chain and its head: a consistent forgery."""
    cur = raw.execute("SELECT * FROM ledger.journal WHERE tenant_id = %s ORDER BY seq", (tenant,))
    cols = [c.name for c in cur.description or ()]
    head = bytes(32)
    for row in cur.fetchall():
        e = dict(zip(cols, row, strict=True))
        head = entry_hash(
            head, tenant, e["seq"], e["op"], e["reservation_id"], e["amount_microcents"],
            e["hold_microcents"], e["initial_microcents"], e["remaining_microcents"],
            e["reserved_microcents"], e["committed_microcents"], e["max_reserved_microcents"],
            e["created_at"], e["idempotency_key"], e["period_index"], e["reason"],
            entry_format=e["entry_format"],
        )  # fmt: skip
        owner(
            raw,
            "UPDATE ledger.journal SET entry_hash = %s WHERE tenant_id = %s AND seq = %s",
            params=(head, tenant, e["seq"]),
        )
    raw.execute("UPDATE ledger.tenants SET journal_head = %s WHERE tenant_id = %s", (head, tenant))


def fix_certificates(raw: psycopg.Connection) -> None:
    """Point every checkpoint at the chain as it now is, and fold the roots again."""
    owner(
        raw,
        "DELETE FROM ledger.certificate_checkpoints AS c WHERE NOT EXISTS"
        " (SELECT 1 FROM ledger.tenants AS t WHERE t.tenant_id = c.tenant_id)",
        # a checkpoint past a truncated chain moves back to the chain's end
        "UPDATE ledger.certificate_checkpoints AS c SET journal_seq = t.journal_seq"
        " FROM ledger.tenants AS t WHERE t.tenant_id = c.tenant_id"
        " AND c.journal_seq > t.journal_seq",
        "UPDATE ledger.certificate_checkpoints AS c SET journal_head = j.entry_hash"
        " FROM ledger.journal AS j WHERE j.tenant_id = c.tenant_id AND j.seq = c.journal_seq",
    )
    for cid, checkpoint in raw.execute(
        "SELECT certificate_id, checkpoint_id FROM ledger.certificates"
    ).fetchall():
        root = RootHasher()
        for tenant, seq, head in raw.execute(
            "SELECT tenant_id, journal_seq, journal_head FROM ledger.certificate_checkpoints"
            " WHERE checkpoint_id = %s ORDER BY convert_to(tenant_id, 'UTF8')",
            (checkpoint,),
        ).fetchall():
            root.update(tenant, seq, bytes(head))
        owner(
            raw,
            "UPDATE ledger.certificates SET journal_root = %s WHERE certificate_id = %s",
            params=(root.digest(), cid),
        )


def truncate(raw: psycopg.Connection, tenant: str, keep: int) -> None:
    """Drop the tenant's entries after ``keep`` and put its row back as entry ``keep`` left it."""
    owner(
        raw,
        "DELETE FROM ledger.journal WHERE tenant_id = %s AND seq > %s",
        params=(tenant, keep),
    )
    raw.execute(
        "UPDATE ledger.tenants AS t SET journal_seq = j.seq, journal_head = j.entry_hash,"
        " initial_microcents = j.initial_microcents, remaining_microcents = j.remaining_microcents,"
        " reserved_microcents = j.reserved_microcents,"
        " committed_microcents = j.committed_microcents"
        " FROM ledger.journal AS j WHERE t.tenant_id = %s AND j.tenant_id = t.tenant_id"
        " AND j.seq = %s",
        (tenant, keep),
    )


def delete_tenant(raw: psycopg.Connection, tenant: str) -> None:
    for table in ("reservations", "refusals", "idempotency_keys", "journal", "tenants"):
        owner(raw, f"DELETE FROM ledger.{table} WHERE tenant_id = %s", params=(tenant,))


# The ledger: "a" has entries 1-4 when certified, 5-6 after; "b" has 1-2, one hold open.
CERTIFIED_SEQ = 4


def edit_field(raw: psycopg.Connection) -> None:
    owner(raw, "UPDATE ledger.journal SET amount_microcents = 61 WHERE tenant_id = 'a' AND seq = 3")


def delete_middle(raw: psycopg.Connection) -> None:
    owner(raw, "DELETE FROM ledger.journal WHERE tenant_id = 'a' AND seq = 2")


def reorder(raw: psycopg.Connection) -> None:
    owner(
        raw,
        "UPDATE ledger.journal SET seq = seq + 100 WHERE tenant_id = 'a' AND seq IN (5, 6)",
        "UPDATE ledger.journal SET seq = 5 WHERE tenant_id = 'a' AND seq = 106",
        "UPDATE ledger.journal SET seq = 6 WHERE tenant_id = 'a' AND seq = 105",
    )


def insert(raw: psycopg.Connection) -> None:
    owner(
        raw,
        "INSERT INTO ledger.journal SELECT tenant_id, 7, op, reservation_id, amount_microcents,"
        " hold_microcents, initial_microcents + 5, remaining_microcents + 5, reserved_microcents,"
        " committed_microcents, max_reserved_microcents, idempotency_key, created_at, entry_hash,"
        " period_index, reason, entry_format FROM ledger.journal WHERE tenant_id = 'a' AND seq = 6",
    )
    raw.execute(
        "UPDATE ledger.tenants SET journal_seq = 7, initial_microcents = initial_microcents + 5,"
        " remaining_microcents = remaining_microcents + 5 WHERE tenant_id = 'a'"
    )


def edit_balances(raw: psycopg.Connection) -> None:
    raw.execute(
        "UPDATE ledger.tenants SET initial_microcents = initial_microcents + 500,"
        " remaining_microcents = remaining_microcents + 500 WHERE tenant_id = 'a'"
    )


def truncate_tail(raw: psycopg.Connection) -> None:
    truncate(raw, "a", CERTIFIED_SEQ)  # what came after the certificate


def truncate_certified(raw: psycopg.Connection) -> None:
    truncate(raw, "a", CERTIFIED_SEQ - 1)
    fix_certificates(raw)


def delete_whole_tenant(raw: psycopg.Connection) -> None:
    delete_tenant(raw, "b")
    fix_certificates(raw)


def rewrite_chain(raw: psycopg.Connection) -> None:
    owner(
        raw,
        "UPDATE ledger.journal SET created_at = created_at - interval '1 day'"
        " WHERE tenant_id = 'a' AND seq = 1",
    )
    rechain(raw, "a")


def rewrite_chain_and_certificates(raw: psycopg.Connection) -> None:
    rewrite_chain(raw)
    fix_certificates(raw)


def forge_checkpoint(raw: psycopg.Connection) -> None:
    owner(
        raw,
        "UPDATE ledger.certificate_checkpoints SET journal_head = sha256(journal_head)"
        " WHERE tenant_id = 'a'",
    )


def forge_checkpoint_balances(raw: psycopg.Connection) -> None:
    """Balances in a checkpoint are not in the root; only ``--since-certificate`` reads them."""
    owner(
        raw,
        "UPDATE ledger.certificate_checkpoints SET remaining_microcents = remaining_microcents + 1,"
        " initial_microcents = initial_microcents + 1 WHERE tenant_id = 'a'",
    )


def forge_checkpoint_and_root(raw: psycopg.Connection) -> None:
    forge_checkpoint(raw)
    for cid, checkpoint in raw.execute(
        "SELECT certificate_id, checkpoint_id FROM ledger.certificates"
    ).fetchall():
        root = RootHasher()
        for tenant, seq, head in raw.execute(
            "SELECT tenant_id, journal_seq, journal_head FROM ledger.certificate_checkpoints"
            " WHERE checkpoint_id = %s ORDER BY convert_to(tenant_id, 'UTF8')",
            (checkpoint,),
        ).fetchall():
            root.update(tenant, seq, bytes(head))
        owner(
            raw,
            "UPDATE ledger.certificates SET journal_root = %s WHERE certificate_id = %s",
            params=(root.digest(), cid),
        )


#: attack -> (caught by verify_journal with the database's own certificates,
#:            caught by `ledger verify --certificate FILE`)
TABLE: list[tuple[Callable[[psycopg.Connection], None], bool, bool]] = [
    (edit_field, True, True),
    (delete_middle, True, True),
    (reorder, True, True),
    (insert, True, True),
    (edit_balances, True, True),
    (truncate_tail, False, False),  # after the newest certificate: nobody
    (truncate_certified, False, True),
    (delete_whole_tenant, False, True),
    (rewrite_chain, True, True),  # crosses the certified head
    (rewrite_chain_and_certificates, False, True),
    (forge_checkpoint, True, True),  # root_mismatch, and the chain misses the head
    (forge_checkpoint_and_root, True, True),  # the chain still misses the forged head
    (forge_checkpoint_balances, False, False),  # a replay from genesis never reads them
]


@pytest.mark.parametrize(("attack", "in_db", "outside"), TABLE, ids=[a.__name__ for a, *_ in TABLE])
def test_the_tamper_evidence_table(
    book: ledger.Ledger,
    raw: psycopg.Connection,
    db_url: str,
    tmp_path: Path,
    attack: Callable[[psycopg.Connection], None],
    in_db: bool,
    outside: bool,
) -> None:
    book.ensure_tenant("a", 1_000)
    held = book.try_reserve("a", 100).raise_for_status()
    book.commit(held.reservation_id, 60, tenant_id="a")
    book.top_up_tenant("a", 5)
    book.ensure_tenant("b", 50)
    book.try_reserve("b", 10).raise_for_status()
    kept = tmp_path / "certificate.json"
    kept.write_text(json.dumps(book.certify().to_dict()))
    book.top_up_tenant("a", 6)
    book.top_up_tenant("a", 7)
    assert book.verify_journal().ok

    attack(raw)
    assert (not book.verify_journal().ok) == in_db
    cli = subprocess.run(
        [sys.executable, "-m", "ledger", "--database-url", db_url, "--json", "verify",
         "--certificate", str(kept)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode in (0, 4), cli.stderr
    assert (cli.returncode == 4) == outside, cli.stdout
    if attack is forge_checkpoint_balances:  # the replay that starts from them sees it
        assert not book.verify_journal(since_certificate=1).ok
