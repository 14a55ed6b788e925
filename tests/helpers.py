"""Shared test helpers: raw-SQL views of the database, a cheap reset, a reference digest."""

from __future__ import annotations

import hashlib
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)


_FENCE = re.compile(r"^([ \t]*)```([^`\n]*)\n(.*?)^\1```[ \t]*$", re.S | re.M)
_PYTHON_ALIASES = {"py", "py3", "python3", "pycon", "ipython", "python-repl"}


def python_block_matches(text: str, name: str) -> list[tuple[int, str]]:
    """(offset, dedented source) of every ```python block of a Markdown text, in order.

    A block fenced as ``py``, ``python3``, ``pycon`` and the like fails here
    rather than being left out: the docs tests run every Python example, so an
    example must be tagged exactly ``python`` to be found.
    """
    blocks = []
    for match in _FENCE.finditer(text):
        info = match.group(2)
        tag = (info.split() or [""])[0].lower()
        if tag == "python":
            blocks.append((match.start(), textwrap.dedent(match.group(3))))
        elif tag in _PYTHON_ALIASES:
            raise AssertionError(
                f"{name}: a ```{info} block; fence Python examples as ```python so they run"
            )
    return blocks


def python_blocks(path: Path) -> list[str]:
    """The source of every ```python block of a Markdown file, in order."""
    return [block for _, block in python_block_matches(path.read_text(encoding="utf-8"), path.name)]


def reference_digest(
    version: int, tenants: Iterable[tuple[str, int, int, int, int]], active_reservations: int
) -> bytes:
    """The ``calyldg1`` digest written from docs/digest.md alone, independently of ledger.certificates.

    ``tenants`` are (id, initial, remaining, reserved, committed) rows in any
    order; they are sorted by the UTF-8 bytes of the id, as the format says.
    Raises OverflowError for a value that does not fit its field.
    """
    rows = sorted(tenants, key=lambda row: row[0].encode("utf-8"))
    message = b"calyldg1\x00"
    for header in (version, len(rows), active_reservations):
        message += header.to_bytes(8, "little", signed=False)
    for tenant_id, *amounts in rows:
        raw = tenant_id.encode("utf-8")
        message += len(raw).to_bytes(4, "little") + raw
        for value in amounts:
            message += value.to_bytes(8, "little", signed=True)
    return hashlib.sha256(message).digest()


def state(conn: psycopg.Connection, schema: str = "ledger") -> dict[str, Any]:
    """Everything a ledger operation could change, for "nothing changed" checks."""
    s = f'"{schema}"'
    return {
        "tenants": conn.execute(
            f"SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,"
            f" committed_microcents, max_reserved_microcents FROM {s}.tenants ORDER BY tenant_id"
        ).fetchall(),
        "holds": conn.execute(
            f"SELECT tenant_id, reservation_id, amount_microcents FROM {s}.reservations"
            " ORDER BY reservation_id"
        ).fetchall(),
        "parked": conn.execute(f"SELECT * FROM {s}.detached_tenants ORDER BY tenant_id").fetchall(),
        "journal": conn.execute(f"SELECT count(*), max(seq) FROM {s}.journal").fetchone(),
        "heads": conn.execute(
            f"SELECT tenant_id, journal_seq, journal_head FROM {s}.tenants ORDER BY tenant_id"
        ).fetchall(),
        "keys": conn.execute(f"SELECT count(*) FROM {s}.idempotency_keys").fetchone(),
        "certificates": conn.execute(f"SELECT count(*) FROM {s}.certificates").fetchone(),
        "baseline": conn.execute(
            f"SELECT committed_microcents FROM {s}.certificate_baseline"
        ).fetchone(),
        "reservation_seq": conn.execute(
            f"SELECT last_value, is_called FROM {s}.reservation_id_seq"
        ).fetchone(),
    }


def holds_match_reserved(conn: psycopg.Connection, schema: str = "ledger") -> list[Any]:
    """Tenants whose reserved total differs from the sum of their open holds (should be none)."""
    s = f'"{schema}"'
    return conn.execute(
        f"""SELECT t.tenant_id, t.reserved_microcents, COALESCE(sum(r.amount_microcents), 0)
            FROM {s}.tenants t LEFT JOIN {s}.reservations r USING (tenant_id)
            GROUP BY t.tenant_id, t.reserved_microcents
            HAVING t.reserved_microcents <> COALESCE(sum(r.amount_microcents), 0)"""
    ).fetchall()


def reset(conn: psycopg.Connection, schema: str = "ledger") -> None:
    """Return a migrated database to its freshly migrated state in a few milliseconds."""
    s = f'"{schema}"'
    # The journal refuses TRUNCATE by trigger; a test reset is the one place allowed past it.
    conn.execute(f"ALTER TABLE {s}.journal DISABLE TRIGGER journal_no_truncate")
    # Revision 0010's thresholds reference tenants; older schemas have none of them.
    alerts = conn.execute(f"SELECT to_regclass('{s}.thresholds') IS NOT NULL").fetchone()
    extra = f", {s}.thresholds, {s}.threshold_spend, {s}.alerts" if alerts and alerts[0] else ""
    conn.execute(
        f"TRUNCATE {s}.reservations, {s}.tenants, {s}.detached_tenants, {s}.certificates,"
        f" {s}.journal, {s}.idempotency_keys, {s}.certificate_checkpoints{extra} RESTART IDENTITY"
    )
    conn.execute(f"ALTER TABLE {s}.journal ENABLE TRIGGER journal_no_truncate")
    conn.execute(f"UPDATE {s}.certificate_baseline SET committed_microcents = 0")
    conn.execute(f"ALTER SEQUENCE {s}.reservation_id_seq RESTART WITH 1")
    conn.execute(f"ALTER SEQUENCE {s}.snapshot_version_seq RESTART WITH 1")
