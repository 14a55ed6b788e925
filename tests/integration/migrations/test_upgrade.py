"""Upgrade paths: from every earlier revision, with data in it, to head.

Balances, holds and the journal must survive every step, and verify_journal()
must be clean after each one. Revision 0002 was released before it learnt to
backfill in batches; a copy of the released file is kept here, and a test
proves the batched one produces the same schema and the same data.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

import ledger
from ledger import errors, migrator
from ledger.journal import entry_hash
from ledger.migrator import current_revision, head_revision, script_location
from tests.conftest import _database_url, _plain, drop_database, make_database
from tests.integration.migrations.test_revisions import schema_dump, steps

pytestmark = pytest.mark.pg_versions

ZERO = bytes(32)

# ------------------------------------------------------------------ data


def load_0001(url: str, *, bulk: int = 0) -> None:
    """A ledger as revision 0001 knew it: raw SQL (the library needs a newer schema)."""
    with psycopg.connect(_plain(url)) as conn:
        conn.execute(
            """
            INSERT INTO ledger.tenants (tenant_id, initial_microcents, remaining_microcents,
                reserved_microcents, committed_microcents, max_reserved_microcents, created_at)
            VALUES ('acme', 1000, 550, 350, 100, 0, '2026-01-01T00:00:00Z'),
                   ('B', 50, 50, 0, 0, 0, '2026-01-02T00:00:00Z'),
                   ('a', 0, 0, 0, 0, 0, '2026-01-03T00:00:00Z'),
                   ('ünïcødé', 900, 0, 600, 300, 1000, '2026-01-04T00:00:00Z'),
                   ('many', 100000, 99000, 1000, 0, 0, '2026-01-05T00:00:00Z')
            """
        )
        holds = [("acme", 100), ("acme", 250), ("ünïcødé", 600)] + [("many", 25)] * 40
        for tenant, amount in holds:
            conn.execute(
                "INSERT INTO ledger.reservations (tenant_id, reservation_id, amount_microcents,"
                " created_at) VALUES (%s, nextval('ledger.reservation_id_seq'), %s,"
                " '2026-01-06T00:00:00Z')",
                (tenant, amount),
            )
        conn.execute("INSERT INTO ledger.detached_caps VALUES ('parked', 70)")
        if bulk:
            # Enough tenants for several backfill batches, every third with two holds.
            conn.execute(
                """
                INSERT INTO ledger.tenants (tenant_id, initial_microcents, remaining_microcents,
                    reserved_microcents, committed_microcents, created_at)
                SELECT 'bulk-' || lpad(g::text, 7, '0'), 1000,
                       CASE WHEN g %% 3 = 0 THEN 960 ELSE 1000 END,
                       CASE WHEN g %% 3 = 0 THEN 30 ELSE 0 END,
                       CASE WHEN g %% 3 = 0 THEN 10 ELSE 0 END, '2026-01-07T00:00:00Z'
                FROM generate_series(1, %s) AS g
                """,
                (bulk,),
            )
            conn.execute(
                """
                INSERT INTO ledger.reservations (tenant_id, reservation_id, amount_microcents,
                    created_at)
                SELECT 'bulk-' || lpad(g::text, 7, '0'), nextval('ledger.reservation_id_seq'),
                       amount, '2026-01-07T00:00:00Z'
                FROM generate_series(3, %s, 3) AS g, (VALUES (10), (20)) AS a(amount)
                ORDER BY g, amount
                """,
                (bulk,),
            )


def load_with_the_library(url: str, tag: str) -> list[int]:
    """Data written by the library itself (revision 0002 on), holds left open."""
    with ledger.Ledger(url) as book:
        book.ensure_tenant(f"{tag}-x", 10_000)
        book.ensure_tenant(f"{tag}-y", 500)
        kept = book.try_reserve(f"{tag}-x", 700).raise_for_status()
        spent = book.try_reserve(f"{tag}-x", 300).raise_for_status()
        book.commit(spent.reservation_id, 120, tenant_id=f"{tag}-x")
        dropped = book.try_reserve(f"{tag}-y", 50).raise_for_status()
        book.release(dropped.reservation_id, tenant_id=f"{tag}-y")
        book.top_up_tenant(f"{tag}-y", 25)
        other = book.try_reserve(f"{tag}-y", 40).raise_for_status()
        book.certify()
        return [kept.reservation_id, other.reservation_id]


def snapshot(url: str) -> dict[str, Any]:
    with psycopg.connect(_plain(url)) as conn:
        has_journal = conn.execute("SELECT to_regclass('ledger.journal') IS NOT NULL").fetchone()
        return {
            "tenants": conn.execute(
                "SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,"
                " committed_microcents, max_reserved_microcents, created_at"
                " FROM ledger.tenants ORDER BY tenant_id"
            ).fetchall(),
            "holds": conn.execute(
                "SELECT tenant_id, reservation_id, amount_microcents, created_at"
                " FROM ledger.reservations ORDER BY reservation_id"
            ).fetchall(),
            "journal": conn.execute(  # the columns every revision since 0002 has
                "SELECT tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,"
                " initial_microcents, remaining_microcents, reserved_microcents,"
                " committed_microcents, max_reserved_microcents, idempotency_key, created_at,"
                " entry_hash FROM ledger.journal ORDER BY tenant_id, seq"
            ).fetchall()
            if has_journal and has_journal[0]
            else [],
        }


def journal_is_clean(url: str) -> None:
    with ledger.Ledger(url) as book:
        report = book.verify_journal()
        assert report.ok, report
        assert book.verify_conservation().status == "balanced"


@pytest.fixture
def fresh(server_url: str) -> Iterator[Any]:
    made: list[str] = []

    def new() -> str:
        made.append(make_database(server_url, None))
        return _database_url(server_url, made[-1])

    try:
        yield new
    finally:
        for name in made:
            drop_database(server_url, name)


# --------------------------------------------------------------- upgrade paths


@pytest.mark.parametrize("start", [before for before, _ in steps() if before != "base"])
def test_upgrade_from_an_earlier_revision_with_data_keeps_every_balance(
    fresh: Any, start: str
) -> None:
    """Data as revision ``start`` holds it, upgraded step by step: nothing changes.

    The library speaks only the head schema (revision 0006 added columns its
    statements use), so the data is written at 0001 with plain SQL and brought
    to ``start`` by the migrations; the journal is verified at head. Entries
    the library wrote before 0006 hash as they did: tests/unit/test_journal_encoding.py
    pins the v1 bytes.
    """
    url = fresh()
    ledger.migrate(url, "0001")
    load_0001(url, bulk=2_500)  # more tenants than one backfill batch
    ledger.migrate(url, start)
    before = snapshot(url)
    revisions = [after for _, after in steps()]
    for target in revisions[revisions.index(start) + 1 :]:
        ledger.migrate(url, target)
        assert current_revision(url) == target
        after = snapshot(url)
        assert after["tenants"] == before["tenants"], f"balances changed at {target}"
        assert after["holds"] == before["holds"], f"holds changed at {target}"
        if before["journal"]:
            assert after["journal"] == before["journal"], f"journal changed at {target}"
        else:
            assert len(after["journal"]) == len(after["tenants"]) + len(after["holds"])
        before = after
    assert current_revision(url) == head_revision()
    journal_is_clean(url)

    # The upgraded ledger keeps working: settle what was open before, open more.
    with ledger.Ledger(url) as book:
        for tenant, reservation_id, amount, _ in before["holds"][:3]:
            book.commit(reservation_id, amount // 2, tenant_id=tenant)
        for tenant, reservation_id, _, _ in before["holds"][3:6]:
            book.release(reservation_id, tenant_id=tenant)
        load_with_the_library(url, "late")
    journal_is_clean(url)


# ------------------------------------------------ 0002: same result, batched

DEPLOYED_0002 = r'''"""Revision 0002 as released (its upgrade; the shipped file now backfills in batches).

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPS = (
    "open",
    "open_hold",
    "create",
    "top_up",
    "cap",
    "reserve",
    "commit",
    "release",
    "expire",
    "restore",
    "remove",
)


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def upgrade() -> None:
    s = _schema()
    q = f'"{s}"'

    # The canonical entry encoding, hashed. Big-endian because that is what
    # PostgreSQL's int*send functions produce; Python mirrors it exactly.
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.journal_hash(
            prev bytea, tenant text, seq bigint, op text, reservation bigint,
            amount bigint, hold bigint, initial bigint, remaining bigint,
            reserved bigint, committed bigint, cap bigint, at timestamptz, ikey text
        ) RETURNS bytea
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT sha256(
                '\\x73716c6c65646765722f6a6f75726e616c2f763100'::bytea
                || prev
                || int4send(octet_length(convert_to(tenant, 'UTF8'))) || convert_to(tenant, 'UTF8')
                || int8send(seq)
                || int2send(octet_length(op)::smallint) || convert_to(op, 'UTF8')
                || int8send(coalesce(reservation, 0))
                || int8send(coalesce(amount, 0))
                || int8send(coalesce(hold, 0))
                || int8send(initial) || int8send(remaining) || int8send(reserved)
                || int8send(committed) || int8send(cap)
                || int8send((extract(epoch FROM at) * 1000000)::bigint)
                || int4send(octet_length(convert_to(coalesce(ikey, ''), 'UTF8')))
                || convert_to(coalesce(ikey, ''), 'UTF8')
            )
        $$
    """)
    )

    op.add_column(
        "tenants",
        sa.Column("journal_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        schema=s,
    )
    op.add_column(
        "tenants",
        sa.Column(
            "journal_head",
            sa.LargeBinary(),
            nullable=False,
            server_default=sa.text("'\\x" + "00" * 32 + "'::bytea"),
        ),
        schema=s,
    )
    op.create_check_constraint(
        "tenants_journal_head_length", "tenants", "octet_length(journal_head) = 32", schema=s
    )

    op.rename_table("detached_caps", "detached_tenants", schema=s)
    op.execute(sa.text(f"ALTER TABLE {q}.detached_tenants DROP CONSTRAINT detached_caps_positive"))
    op.create_check_constraint(
        "detached_tenants_cap_nonnegative",
        "detached_tenants",
        "max_reserved_microcents >= 0",
        schema=s,
    )
    op.execute(sa.text(f"ALTER INDEX {q}.detached_caps_pkey RENAME TO detached_tenants_pkey"))
    op.add_column(
        "detached_tenants",
        sa.Column("journal_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        schema=s,
    )
    op.add_column(
        "detached_tenants",
        sa.Column(
            "journal_head",
            sa.LargeBinary(),
            nullable=False,
            server_default=sa.text("'\\x" + "00" * 32 + "'::bytea"),
        ),
        schema=s,
    )

    op.add_column(
        "reservations", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True), schema=s
    )
    op.create_index(
        "reservations_expires_at_idx",
        "reservations",
        ["expires_at"],
        schema=s,
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )

    op.create_table(
        "journal",
        sa.Column("tenant_id", sa.Text(collation="C"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.Text(), nullable=False),
        sa.Column("reservation_id", sa.BigInteger(), nullable=True),
        sa.Column("amount_microcents", sa.BigInteger(), nullable=True),
        sa.Column("hold_microcents", sa.BigInteger(), nullable=True),
        sa.Column("initial_microcents", sa.BigInteger(), nullable=False),
        sa.Column("remaining_microcents", sa.BigInteger(), nullable=False),
        sa.Column("reserved_microcents", sa.BigInteger(), nullable=False),
        sa.Column("committed_microcents", sa.BigInteger(), nullable=False),
        sa.Column("max_reserved_microcents", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name="journal_pkey"),
        sa.CheckConstraint("seq > 0", name="journal_seq_positive"),
        sa.CheckConstraint(
            "op IN (" + ", ".join(f"'{o}'" for o in OPS) + ")", name="journal_op_known"
        ),
        sa.CheckConstraint("octet_length(entry_hash) = 32", name="journal_hash_length"),
        schema=s,
    )
    op.create_index(
        "journal_reservation_id_idx",
        "journal",
        ["reservation_id"],
        schema=s,
        postgresql_where=sa.text("reservation_id IS NOT NULL"),
    )
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.journal_is_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the sql-ledger journal is append-only (% refused)', TG_OP
                USING ERRCODE = 'LG002',
                      HINT = 'corrections are new entries; see docs/journal.md';
        END
        $$
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE TRIGGER journal_no_update_or_delete BEFORE UPDATE OR DELETE ON {q}.journal
        FOR EACH ROW EXECUTE FUNCTION {q}.journal_is_append_only()
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON {q}.journal
        FOR EACH STATEMENT EXECUTE FUNCTION {q}.journal_is_append_only()
    """)
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Text(collation="C"), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("outcome", postgresql.JSONB(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("tenant_id", "idempotency_key", name="idempotency_keys_pkey"),
        sa.CheckConstraint(
            "octet_length(idempotency_key) BETWEEN 1 AND 255", name="idempotency_keys_length"
        ),
        schema=s,
    )
    op.create_index("idempotency_keys_created_at_idx", "idempotency_keys", ["created_at"], schema=s)

    op.add_column(
        "certificates", sa.Column("journal_root", sa.LargeBinary(), nullable=True), schema=s
    )
    op.add_column(
        "certificates", sa.Column("checkpoint_id", sa.BigInteger(), nullable=True), schema=s
    )
    op.execute(sa.text(f"CREATE SEQUENCE {q}.checkpoint_id_seq AS bigint START WITH 1"))
    # Written by the same statement that reads the certified snapshot, so a
    # checkpoint is exactly the state the certificate's digest covers. Keyed by
    # its own id (snapshot versions repeat after a restore), which the
    # certificate row then records.
    op.create_table(
        "certificate_checkpoints",
        sa.Column("checkpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.Text(collation="C"), nullable=False),
        sa.Column("journal_seq", sa.BigInteger(), nullable=False),
        sa.Column("journal_head", sa.LargeBinary(), nullable=False),
        sa.Column("initial_microcents", sa.BigInteger(), nullable=False),
        sa.Column("remaining_microcents", sa.BigInteger(), nullable=False),
        sa.Column("reserved_microcents", sa.BigInteger(), nullable=False),
        sa.Column("committed_microcents", sa.BigInteger(), nullable=False),
        sa.Column("max_reserved_microcents", sa.BigInteger(), nullable=False),
        sa.Column("hold_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("hold_amounts", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "checkpoint_id", name="certificate_checkpoints_pkey"),
        schema=s,
    )
    op.create_index(
        "certificate_checkpoints_checkpoint_idx",
        "certificate_checkpoints",
        ["checkpoint_id"],
        schema=s,
    )
    op.create_index("certificates_checkpoint_idx", "certificates", ["checkpoint_id"], schema=s)

    # Opening entries for a ledger that already holds data.
    op.execute(
        sa.text(f"""
        WITH opened AS (
            UPDATE {q}.tenants AS t
            SET journal_seq = 1,
                journal_head = {q}.journal_hash(
                    t.journal_head, t.tenant_id, 1, 'open', NULL, NULL, NULL,
                    t.initial_microcents, t.remaining_microcents, t.reserved_microcents,
                    t.committed_microcents, t.max_reserved_microcents, now(), NULL)
            RETURNING t.*
        )
        INSERT INTO {q}.journal (tenant_id, seq, op, initial_microcents, remaining_microcents,
            reserved_microcents, committed_microcents, max_reserved_microcents, created_at,
            entry_hash)
        SELECT tenant_id, 1, 'open', initial_microcents, remaining_microcents,
               reserved_microcents, committed_microcents, max_reserved_microcents, now(),
               journal_head
        FROM opened
    """)
    )
    # One entry per hold that was open at upgrade time, chained in id order.
    op.execute(
        sa.text(f"""
        DO $$
        DECLARE h record;
        BEGIN
            FOR h IN SELECT r.tenant_id, r.reservation_id, r.amount_microcents
                     FROM {q}.reservations r ORDER BY r.tenant_id, r.reservation_id
            LOOP
                WITH bumped AS (
                    UPDATE {q}.tenants AS t
                    SET journal_seq = t.journal_seq + 1,
                        journal_head = {q}.journal_hash(
                            t.journal_head, t.tenant_id, t.journal_seq + 1, 'open_hold',
                            h.reservation_id, h.amount_microcents, NULL,
                            t.initial_microcents, t.remaining_microcents,
                            t.reserved_microcents, t.committed_microcents,
                            t.max_reserved_microcents, now(), NULL)
                    WHERE t.tenant_id = h.tenant_id
                    RETURNING t.*
                )
                INSERT INTO {q}.journal (tenant_id, seq, op, reservation_id, amount_microcents,
                    initial_microcents, remaining_microcents, reserved_microcents,
                    committed_microcents, max_reserved_microcents, created_at, entry_hash)
                SELECT tenant_id, journal_seq, 'open_hold', h.reservation_id,
                       h.amount_microcents, initial_microcents, remaining_microcents,
                       reserved_microcents, committed_microcents, max_reserved_microcents,
                       now(), journal_head
                FROM bumped;
            END LOOP;
        END
        $$
    """)
    )




def downgrade() -> None:
    raise NotImplementedError
'''


def deployed_config(tmp_path: Path, url: str) -> Config:
    """A script directory with revision 0001 as shipped and 0002 as released."""
    shipped = script_location()
    (tmp_path / "versions").mkdir()
    shutil.copy(shipped / "env.py", tmp_path / "env.py")
    shutil.copy(shipped / "versions" / "0001_core.py", tmp_path / "versions")
    (tmp_path / "versions" / "0002_journal.py").write_text(DEPLOYED_0002)
    cfg = Config()
    cfg.set_main_option("script_location", str(tmp_path))
    cfg.attributes["schema"] = "ledger"
    cfg.attributes["connection"] = create_engine(url)
    return cfg


def journal_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(_plain(url)) as conn:
        return conn.execute(
            "SELECT tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,"
            " initial_microcents, remaining_microcents, reserved_microcents,"
            " committed_microcents, max_reserved_microcents, idempotency_key, created_at,"
            " entry_hash FROM ledger.journal ORDER BY tenant_id, seq"
        ).fetchall()


def rechained(rows: list[tuple[Any, ...]], at: datetime) -> list[bytes]:
    """The entry hashes of ``rows`` had they been written at ``at``."""
    hashes, prev, tenant = [], ZERO, None
    for row in rows:
        if row[0] != tenant:
            prev, tenant = ZERO, row[0]
        prev = entry_hash(prev, *row[:11], at, row[11])
        hashes.append(prev)
    return hashes


def test_batched_0002_builds_what_the_released_0002_built(
    fresh: Any, tmp_path: Path, server_version: int
) -> None:
    released, batched = fresh(), fresh()
    for url in (released, batched):
        ledger.migrate(url, "0001")
        load_0001(url, bulk=60)

    cfg = deployed_config(tmp_path, released)
    command.upgrade(cfg, "0002")
    cfg.attributes["connection"].dispose()
    engine = create_engine(batched)
    ours = migrator._config("ledger")
    ours.attributes.update(connection=engine, batch_size="7")  # many batches, some split holds
    command.upgrade(ours, "0002")
    engine.dispose()

    assert schema_dump(released, server_version) == schema_dump(batched, server_version)
    old, new = journal_rows(released), journal_rows(batched)
    assert len(new) == 65 + 83  # an open entry per tenant, one per hold
    # Everything but the upgrade's own timestamp (and the hashes that cover it) is equal.
    assert [r[:12] for r in old] == [r[:12] for r in new]
    (old_at,) = {r[12] for r in old}
    (new_at,) = {r[12] for r in new}
    # And the hashes are the same function of the same entries: each chain, rebuilt.
    assert rechained(old, old_at) == [r[13] for r in old]
    assert rechained(new, new_at) == [r[13] for r in new]
    assert rechained(old, new_at) == [r[13] for r in new]
    for url in (released, batched):
        with psycopg.connect(_plain(url)) as conn:
            heads = conn.execute(
                "SELECT t.tenant_id, t.journal_seq, t.journal_head = j.entry_hash"
                " FROM ledger.tenants t JOIN ledger.journal j"
                " ON j.tenant_id = t.tenant_id AND j.seq = t.journal_seq ORDER BY 1"
            ).fetchall()
            assert len(heads) == 65 and all(ok for _, _, ok in heads)
            parked = conn.execute("SELECT * FROM ledger.detached_tenants").fetchall()
            assert parked == [("parked", 70, 0, ZERO)]
    assert snapshot(released)["tenants"] == snapshot(batched)["tenants"]
    assert snapshot(released)["holds"] == snapshot(batched)["holds"]
    ledger.migrate(batched)
    journal_is_clean(batched)


def test_an_interrupted_0002_backfill_resumes_when_run_again(fresh: Any) -> None:
    """A long transaction stops the backfill part way; the next run finishes it, nothing twice."""
    url = fresh()
    ledger.migrate(url, "0001")
    load_0001(url, bulk=3_000)
    before = snapshot(url)
    locked, release = threading.Event(), threading.Event()

    def hold_the_last_tenant_once_the_ddl_is_in() -> None:
        with psycopg.connect(_plain(url)) as conn:
            ddl_in = "SELECT to_regclass('ledger.journal') IS NOT NULL"
            while not conn.execute(ddl_in).fetchone()[0]:  # type: ignore[index]
                conn.rollback()
                time.sleep(0.002)
            # 'ünïcødé' sorts last (UTF-8 bytes): the backfill reaches it after many batches.
            conn.execute("SELECT 1 FROM ledger.tenants WHERE tenant_id = 'ünïcødé' FOR UPDATE")
            locked.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_last_tenant_once_the_ddl_is_in, daemon=True)
    holder.start()
    engine = create_engine(url)
    cfg = migrator._config("ledger")
    cfg.attributes.update(connection=engine, batch_size="7", lock_timeout="50ms", lock_attempts="2")
    try:
        with pytest.raises(errors.LockTimeout, match="resumes"):
            command.upgrade(cfg, "0002")
    finally:
        release.set()
        holder.join(30)
        engine.dispose()
    assert locked.is_set()
    assert current_revision(url) == "0001"  # not stamped: the revision did not finish
    partial = journal_rows(url)
    assert 0 < len(partial) < len(before["tenants"]) + len(before["holds"])

    ledger.migrate(url)
    assert current_revision(url) == head_revision()
    done = journal_rows(url)
    assert len(done) == len(before["tenants"]) + len(before["holds"])
    assert set(partial) <= set(done)  # what the first run wrote stays, unchanged
    after = snapshot(url)
    assert (after["tenants"], after["holds"]) == (before["tenants"], before["holds"])
    journal_is_clean(url)
