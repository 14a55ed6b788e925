"""Tamper-evident journal, idempotency keys, hold expiry, certificate checkpoints.

- ``journal``: one row per state change, appended by the same statement as the
  change, chained per tenant with SHA-256 (layout: docs/journal.md). The
  current chain head and sequence number live on the tenant row, so chaining
  costs no extra round trip and no ledger-wide lock. UPDATE, DELETE and
  TRUNCATE on the journal are refused by triggers.
- ``detached_caps`` becomes ``detached_tenants``: a tenant dropped by a
  restore also parks its chain head, so re-creating it continues its chain.
- ``reservations.expires_at``: optional hold deadline.
- ``idempotency_keys``: per-tenant request keys with the original outcome.
- ``certificates.journal_root`` and ``certificate_checkpoints``: each
  certificate pins every tenant's chain head (and balances and open holds,
  so replay can start there).

Existing tenants get an ``open`` entry (and one ``open_hold`` entry per open
hold, chained in id order), so a ledger upgraded with data in it replays
cleanly. Every entry carries one timestamp, taken when the backfill starts.

How (changed after release; what it produces is not, see
tests/test_migrations_upgrade.py): the DDL is metadata-only and commits at
once; the opening entries are then written in batches of tenants, each its
own short transaction that locks only its own tenants; the journal-head CHECK
is added NOT VALID and validated last, without blocking reads or writes. It
used to run all of it under the ALTER's exclusive lock on ``tenants``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from ledger import migrator

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
    # A run whose backfill was interrupted committed the DDL but not the
    # revision stamp: it resumes with the backfill.
    if not _expanded():
        migrator.locked(_expand)
    migrator.backfill(_opening_entries(f'"{_schema()}"'), declare=OPENING_DECLARE)
    migrator.online_step(
        lambda: op.execute(
            f'ALTER TABLE "{_schema()}".tenants VALIDATE CONSTRAINT tenants_journal_head_length'
        )
    )


def _expanded() -> bool:
    if context.is_offline_mode():
        return False
    found = op.get_bind().execute(
        sa.text("SELECT to_regclass(:journal) IS NOT NULL"), {"journal": f'"{_schema()}".journal'}
    )
    return bool(found.scalar())


def _expand() -> None:
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
    # Validated after the backfill (a scan under this lock would block traffic).
    op.create_check_constraint(
        "tenants_journal_head_length",
        "tenants",
        "octet_length(journal_head) = 32",
        schema=s,
        postgresql_not_valid=True,
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


OPENING_DECLARE = """at constant timestamptz := now();
    last text COLLATE "C" := '';
    last_seen text COLLATE "C";
    got int;"""


def _opening_entries(q: str) -> str:
    """One batch of opening entries: ``open``, then ``open_hold`` per hold in id order.

    The hold chain of each tenant is a recursive CTE (entry n+1 hashes entry
    n); tenants are taken in key order, locked first, and skipped once they
    have entries, so the backfill can be run again after an interruption.
    """
    balances = (
        "t.initial_microcents, t.remaining_microcents, t.reserved_microcents,"
        " t.committed_microcents, t.max_reserved_microcents"
    )
    return f"""WITH RECURSIVE batch AS (
                SELECT tenant_id FROM {q}.tenants
                WHERE tenant_id > last AND journal_seq = 0
                ORDER BY tenant_id LIMIT batch_size
                FOR UPDATE
            ), holds AS (
                SELECT r.tenant_id, r.reservation_id, r.amount_microcents,
                       row_number() OVER (PARTITION BY r.tenant_id ORDER BY r.reservation_id) AS n
                FROM {q}.reservations AS r JOIN batch USING (tenant_id)
            ), chain AS (
                SELECT t.tenant_id, 1::bigint AS seq, 'open'::text AS op,
                       NULL::bigint AS reservation_id, NULL::bigint AS amount_microcents,
                       {q}.journal_hash(t.journal_head, t.tenant_id, 1, 'open', NULL, NULL, NULL,
                           {balances}, at, NULL) AS head
                FROM {q}.tenants AS t JOIN batch USING (tenant_id)
                UNION ALL
                SELECT c.tenant_id, c.seq + 1, 'open_hold'::text, h.reservation_id,
                       h.amount_microcents,
                       {q}.journal_hash(c.head, c.tenant_id, c.seq + 1, 'open_hold',
                           h.reservation_id, h.amount_microcents, NULL, {balances}, at, NULL)
                FROM chain AS c
                JOIN holds AS h ON h.tenant_id = c.tenant_id AND h.n = c.seq
                JOIN {q}.tenants AS t ON t.tenant_id = c.tenant_id
            ), written AS (
                INSERT INTO {q}.journal (tenant_id, seq, op, reservation_id, amount_microcents,
                    initial_microcents, remaining_microcents, reserved_microcents,
                    committed_microcents, max_reserved_microcents, created_at, entry_hash)
                SELECT c.tenant_id, c.seq, c.op, c.reservation_id, c.amount_microcents,
                       {balances}, at, c.head
                FROM chain AS c JOIN {q}.tenants AS t USING (tenant_id)
            ), heads AS (
                UPDATE {q}.tenants AS t SET journal_seq = l.seq, journal_head = l.head
                FROM (SELECT DISTINCT ON (tenant_id) tenant_id, seq, head
                      FROM chain ORDER BY tenant_id, seq DESC) AS l
                WHERE t.tenant_id = l.tenant_id
            )
            SELECT count(*), max(tenant_id) INTO got, last_seen FROM batch;
            more := got = batch_size;
            last := coalesce(last_seen, last);"""


def downgrade() -> None:
    migrator.locked(_downgrade)


def _downgrade() -> None:
    s = _schema()
    q = f'"{s}"'
    op.drop_table("certificate_checkpoints", schema=s)
    op.drop_index("certificates_checkpoint_idx", "certificates", schema=s)
    op.drop_column("certificates", "checkpoint_id", schema=s)
    op.execute(sa.text(f"DROP SEQUENCE {q}.checkpoint_id_seq"))
    op.drop_column("certificates", "journal_root", schema=s)
    op.drop_table("idempotency_keys", schema=s)
    op.execute(sa.text(f"DROP TABLE {q}.journal"))
    op.execute(sa.text(f"DROP FUNCTION {q}.journal_is_append_only()"))
    op.drop_index("reservations_expires_at_idx", "reservations", schema=s)
    op.drop_column("reservations", "expires_at", schema=s)
    op.drop_column("detached_tenants", "journal_head", schema=s)
    op.drop_column("detached_tenants", "journal_seq", schema=s)
    op.execute(sa.text(f"ALTER INDEX {q}.detached_tenants_pkey RENAME TO detached_caps_pkey"))
    op.execute(
        sa.text(
            f"ALTER TABLE {q}.detached_tenants DROP CONSTRAINT detached_tenants_cap_nonnegative"
        )
    )
    op.execute(sa.text(f"DELETE FROM {q}.detached_tenants WHERE max_reserved_microcents = 0"))
    op.create_check_constraint(
        "detached_caps_positive", "detached_tenants", "max_reserved_microcents > 0", schema=s
    )
    op.rename_table("detached_tenants", "detached_caps", schema=s)
    op.drop_constraint("tenants_journal_head_length", "tenants", schema=s)
    op.drop_column("tenants", "journal_head", schema=s)
    op.drop_column("tenants", "journal_seq", schema=s)
    op.execute(
        sa.text(
            f"DROP FUNCTION {q}.journal_hash(bytea, text, bigint, text, bigint, bigint,"
            " bigint, bigint, bigint, bigint, bigint, bigint, timestamptz, text)"
        )
    )
