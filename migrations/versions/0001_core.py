"""Core ledger: tenants, open holds, certificates, version sequences.

The database itself enforces the money rules, so that even raw SQL written by
an operator cannot break them:

- every amount is a non-negative ``bigint`` of microcents;
- ``remaining + reserved + committed = initial`` per tenant, summed as
  ``numeric`` so the check itself cannot overflow;
- a hold is strictly positive and belongs to an existing tenant.

Every tenant-scoped table carries ``tenant_id`` so the schema can later be
distributed by it (Citus); certificates and their baseline are ledger-wide
and would be reference tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

I64_AMOUNT = sa.BigInteger()


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def _tenant_id(*args: object, **kw: object) -> sa.Column:  # type: ignore[type-arg]
    # "C" collation: ORDER BY tenant_id is UTF-8 byte order, as the seed sorts.
    return sa.Column("tenant_id", sa.Text(collation="C"), *args, nullable=False, **kw)  # type: ignore[arg-type]


def upgrade() -> None:
    migrator.locked(_upgrade)


def _upgrade() -> None:
    s = _schema()
    op.execute(sa.text(f'CREATE SEQUENCE "{s}".reservation_id_seq AS bigint START WITH 1'))
    op.execute(
        sa.text(f'CREATE SEQUENCE "{s}".snapshot_version_seq AS bigint MINVALUE 0 START WITH 1')
    )

    op.create_table(
        "tenants",
        _tenant_id(primary_key=True),
        sa.Column("initial_microcents", I64_AMOUNT, nullable=False),
        sa.Column("remaining_microcents", I64_AMOUNT, nullable=False),
        sa.Column("reserved_microcents", I64_AMOUNT, nullable=False),
        sa.Column("committed_microcents", I64_AMOUNT, nullable=False),
        sa.Column(
            "max_reserved_microcents", I64_AMOUNT, nullable=False, server_default=sa.text("0")
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "octet_length(tenant_id) BETWEEN 1 AND 255", name="tenants_tenant_id_length"
        ),
        sa.CheckConstraint("initial_microcents >= 0", name="tenants_initial_nonnegative"),
        sa.CheckConstraint("remaining_microcents >= 0", name="tenants_remaining_nonnegative"),
        sa.CheckConstraint("reserved_microcents >= 0", name="tenants_reserved_nonnegative"),
        sa.CheckConstraint("committed_microcents >= 0", name="tenants_committed_nonnegative"),
        sa.CheckConstraint("max_reserved_microcents >= 0", name="tenants_max_reserved_nonnegative"),
        sa.CheckConstraint(
            "remaining_microcents::numeric + reserved_microcents::numeric"
            " + committed_microcents::numeric = initial_microcents::numeric",
            name="tenants_conservation",
        ),
        schema=s,
    )

    op.create_table(
        "reservations",
        _tenant_id(),
        sa.Column("reservation_id", sa.BigInteger(), nullable=False),
        sa.Column("amount_microcents", I64_AMOUNT, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("tenant_id", "reservation_id", name="reservations_pkey"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            [f"{s}.tenants.tenant_id"],
            name="reservations_tenant_fkey",
            ondelete="RESTRICT",
        ),
        sa.CheckConstraint("amount_microcents > 0", name="reservations_amount_positive"),
        schema=s,
    )
    # Lookup by id alone (commit/release without a tenant hint). Not unique so
    # the table stays distributable; the sequence already makes ids unique.
    op.create_index("reservations_reservation_id_idx", "reservations", ["reservation_id"], schema=s)

    op.create_table(
        "detached_caps",
        _tenant_id(primary_key=True),
        sa.Column("max_reserved_microcents", I64_AMOUNT, nullable=False),
        sa.CheckConstraint("max_reserved_microcents > 0", name="detached_caps_positive"),
        schema=s,
    )

    op.create_table(
        "certificate_baseline",
        sa.Column("id", sa.SmallInteger(), primary_key=True),
        sa.Column("committed_microcents", I64_AMOUNT, nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("id = 1", name="certificate_baseline_singleton"),
        sa.CheckConstraint("committed_microcents >= 0", name="certificate_baseline_nonnegative"),
        schema=s,
    )
    op.execute(
        sa.text(f'INSERT INTO "{s}".certificate_baseline (id, committed_microcents) VALUES (1, 0)')
    )

    op.create_table(
        "certificates",
        sa.Column("certificate_id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("snapshot_version", sa.BigInteger(), nullable=False),
        sa.Column("ledger_digest", sa.LargeBinary(), nullable=False),
        sa.Column("tenant_count", sa.BigInteger(), nullable=False),
        sa.Column("active_reservations", sa.BigInteger(), nullable=False),
        sa.Column("conservation_balanced", sa.Boolean(), nullable=False),
        sa.Column("total_initial_microcents", I64_AMOUNT, nullable=False),
        sa.Column("total_committed_microcents", I64_AMOUNT, nullable=False),
        sa.Column("aggregate_totals_representable", sa.Boolean(), nullable=False),
        sa.Column("committed_since_last_certificate", I64_AMOUNT, nullable=False),
        sa.Column("baseline_before_microcents", I64_AMOUNT, nullable=False),
        sa.Column("baseline_after_microcents", I64_AMOUNT, nullable=False),
        sa.CheckConstraint("octet_length(ledger_digest) = 32", name="certificates_digest_length"),
        sa.CheckConstraint(
            "committed_since_last_certificate >= 0", name="certificates_since_nonnegative"
        ),
        sa.CheckConstraint(
            "baseline_after_microcents >= baseline_before_microcents",
            name="certificates_baseline_monotonic",
        ),
        schema=s,
    )

    # Called only when a statement's own consistency guard trips; raising
    # aborts the whole statement, so a half-applied settlement cannot commit.
    op.execute(
        sa.text(
            f"""
            CREATE FUNCTION "{s}".invariant_failed(message text) RETURNS text
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'sql-ledger invariant failed: %', message
                    USING ERRCODE = 'LG001';
            END
            $$
            """
        )
    )


def downgrade() -> None:
    migrator.locked(_downgrade)


def _downgrade() -> None:
    s = _schema()
    op.execute(sa.text(f'DROP FUNCTION "{s}".invariant_failed(text)'))
    op.drop_table("certificates", schema=s)
    op.drop_table("certificate_baseline", schema=s)
    op.drop_table("detached_caps", schema=s)
    op.drop_table("reservations", schema=s)
    op.drop_table("tenants", schema=s)
    op.execute(sa.text(f'DROP SEQUENCE "{s}".snapshot_version_seq'))
    op.execute(sa.text(f'DROP SEQUENCE "{s}".reservation_id_seq'))
