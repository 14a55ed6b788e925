"""The ledger's tables as SQLAlchemy metadata.

The migrations are the source of truth for the database; this module declares
the same schema so tools can reason about it (alembic autogenerate in a host
app, documentation, introspection) and so a test can prove the two agree:
``alembic`` autogenerate against a migrated database must find nothing.
Statements never go through these objects; they live in ``ledger/sql/*.sql``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from . import _validate

_ZERO_HEAD = text("'\\x" + "00" * 32 + "'::bytea")


def _amount(name: str, **kw: object) -> Column[int]:
    return Column(name, BigInteger, nullable=False, **kw)  # type: ignore[arg-type]


def _tenant_id(**kw: object) -> Column[str]:
    return Column("tenant_id", Text(collation="C"), nullable=False, **kw)  # type: ignore[arg-type]


def _created_at(name: str = "created_at") -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=False, server_default=func.now())


def metadata(schema: str = "ledger") -> MetaData:
    """Fresh metadata for a ledger in ``schema``."""
    schema = _validate.schema_name(schema)
    md = MetaData(schema=schema)
    Table(
        "tenants",
        md,
        _tenant_id(primary_key=True),
        _amount("initial_microcents"),
        _amount("remaining_microcents"),
        _amount("reserved_microcents"),
        _amount("committed_microcents"),
        _amount("max_reserved_microcents", server_default=text("0")),
        _created_at(),
        _amount("journal_seq", server_default=text("0")),
        Column("journal_head", LargeBinary, nullable=False, server_default=_ZERO_HEAD),
        Column("period_index", BigInteger, nullable=True),  # revision 0006
        Column("renews_at", DateTime(timezone=True), nullable=True),
        Column("period_high", BigInteger, nullable=True),  # revision 0007
        Column("parent_id", Text(collation="C"), nullable=True),  # revision 0010
        Column(  # revision 0011: the thresholds trigger's WHEN (docs/alerts.md)
            "has_thresholds", Boolean, nullable=False, server_default=text("false")
        ),
        CheckConstraint(
            "octet_length(tenant_id) BETWEEN 1 AND 255", name="tenants_tenant_id_length"
        ),
        CheckConstraint("initial_microcents >= 0", name="tenants_initial_nonnegative"),
        CheckConstraint("remaining_microcents >= 0", name="tenants_remaining_nonnegative"),
        CheckConstraint("reserved_microcents >= 0", name="tenants_reserved_nonnegative"),
        CheckConstraint("committed_microcents >= 0", name="tenants_committed_nonnegative"),
        CheckConstraint("max_reserved_microcents >= 0", name="tenants_max_reserved_nonnegative"),
        CheckConstraint(
            "remaining_microcents::numeric + reserved_microcents::numeric"
            " + committed_microcents::numeric = initial_microcents::numeric",
            name="tenants_conservation",
        ),
        CheckConstraint("octet_length(journal_head) = 32", name="tenants_journal_head_length"),
        Index("tenants_renews_at_idx", "renews_at", postgresql_where=text("renews_at IS NOT NULL")),
        ForeignKeyConstraint(  # revision 0010: nested budgets
            ["parent_id"], [f"{schema}.tenants.tenant_id"], name="tenants_parent_fkey"
        ),
        Index("tenants_parent_id_idx", "parent_id", postgresql_where=text("parent_id IS NOT NULL")),
    )
    Table(
        "reservations",
        md,
        _tenant_id(),
        Column("reservation_id", BigInteger, nullable=False),
        _amount("amount_microcents"),
        _created_at(),
        Column("expires_at", DateTime(timezone=True), nullable=True),
        Column("period_index", BigInteger, nullable=True),  # revision 0006
        # revision 0010: the levels above the tenant the hold reserved at, nearest first
        Column("ancestor_ids", ARRAY(Text(collation="C")), nullable=True),
        Column("ancestor_periods", ARRAY(BigInteger), nullable=True),
        PrimaryKeyConstraint("tenant_id", "reservation_id", name="reservations_pkey"),
        ForeignKeyConstraint(
            ["tenant_id"],
            [f"{schema}.tenants.tenant_id"],
            name="reservations_tenant_fkey",
            ondelete="RESTRICT",
        ),
        CheckConstraint("amount_microcents > 0", name="reservations_amount_positive"),
        Index("reservations_reservation_id_idx", "reservation_id"),
        Index(
            "reservations_expires_at_idx",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL"),
        ),
    )
    Table(
        "detached_tenants",
        md,
        _tenant_id(primary_key=True),
        _amount("max_reserved_microcents"),
        _amount("journal_seq", server_default=text("0")),
        Column("journal_head", LargeBinary, nullable=False, server_default=_ZERO_HEAD),
        CheckConstraint("max_reserved_microcents >= 0", name="detached_tenants_cap_nonnegative"),
    )
    Table(
        "certificate_baseline",
        md,
        Column("id", SmallInteger, primary_key=True),  # revision 0001 made it a smallserial
        _amount("committed_microcents"),
        _created_at("updated_at"),
        CheckConstraint("id = 1", name="certificate_baseline_singleton"),
        CheckConstraint("committed_microcents >= 0", name="certificate_baseline_nonnegative"),
    )
    Table(
        "certificates",
        md,
        Column("certificate_id", BigInteger, Identity(always=True), primary_key=True),
        _created_at(),
        Column("snapshot_version", BigInteger, nullable=False),
        Column("ledger_digest", LargeBinary, nullable=False),
        Column("tenant_count", BigInteger, nullable=False),
        Column("active_reservations", BigInteger, nullable=False),
        Column("conservation_balanced", Boolean, nullable=False),
        _amount("total_initial_microcents"),
        _amount("total_committed_microcents"),
        Column("aggregate_totals_representable", Boolean, nullable=False),
        _amount("committed_since_last_certificate"),
        _amount("baseline_before_microcents"),
        _amount("baseline_after_microcents"),
        Column("journal_root", LargeBinary, nullable=True),
        Column("checkpoint_id", BigInteger, nullable=True),
        Index("certificates_checkpoint_idx", "checkpoint_id"),
    )
    Table(
        "certificate_checkpoints",
        md,
        Column("checkpoint_id", BigInteger, nullable=False),
        _tenant_id(),
        Column("journal_seq", BigInteger, nullable=False),
        Column("journal_head", LargeBinary, nullable=False),
        _amount("initial_microcents"),
        _amount("remaining_microcents"),
        _amount("reserved_microcents"),
        _amount("committed_microcents"),
        _amount("max_reserved_microcents"),
        Column("hold_ids", ARRAY(BigInteger), nullable=False),
        Column("hold_amounts", ARRAY(BigInteger), nullable=False),
        Column("period_index", BigInteger, nullable=True),  # revision 0006
        PrimaryKeyConstraint("tenant_id", "checkpoint_id", name="certificate_checkpoints_pkey"),
        Index("certificate_checkpoints_checkpoint_idx", "checkpoint_id"),
    )
    Table(
        "journal",
        md,
        _tenant_id(),
        Column("seq", BigInteger, nullable=False),
        Column("op", Text, nullable=False),
        Column("reservation_id", BigInteger, nullable=True),
        Column("amount_microcents", BigInteger, nullable=True),
        Column("hold_microcents", BigInteger, nullable=True),
        _amount("initial_microcents"),
        _amount("remaining_microcents"),
        _amount("reserved_microcents"),
        _amount("committed_microcents"),
        _amount("max_reserved_microcents"),
        Column("idempotency_key", Text, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("entry_hash", LargeBinary, nullable=False),
        Column("period_index", BigInteger, nullable=True),  # revision 0006
        Column("reason", Text, nullable=True),
        # revision 0009: NULL is format 1 (every row written before it), new rows get 2
        Column("entry_format", SmallInteger, nullable=True, server_default=text("2")),
        PrimaryKeyConstraint("tenant_id", "seq", name="journal_pkey"),
        Index(
            "journal_reservation_id_idx",
            "reservation_id",
            postgresql_where=text("reservation_id IS NOT NULL"),
        ),
        Index(  # revision 0004
            "journal_expired_holds_idx",
            "reservation_id",
            postgresql_include=["amount_microcents"],
            postgresql_where=text("op = 'expire'"),
        ),
    )
    Table(
        "idempotency_keys",
        md,
        _tenant_id(),
        Column("idempotency_key", Text, nullable=False),
        Column("request_hash", LargeBinary, nullable=False),
        Column("outcome", JSONB, nullable=True),
        _created_at(),
        PrimaryKeyConstraint("tenant_id", "idempotency_key", name="idempotency_keys_pkey"),
        Index("idempotency_keys_created_at_idx", "created_at"),
    )
    Table(  # revision 0006: docs/periods.md
        "allowances",
        md,
        _tenant_id(primary_key=True),
        _amount("allowance_microcents"),
        _amount("period_months", server_default=text("0")),
        _amount("period_days", server_default=text("0")),
        Column("anchor", DateTime(timezone=True), nullable=False),
        Column("time_zone", Text, nullable=False),
        _amount("min_rollover_microcents", server_default=text("0")),
        _amount("max_rollover_microcents", server_default=text("0")),
        _created_at(),
        _amount("index_offset", server_default=text("0")),  # revision 0007
        CheckConstraint("allowance_microcents >= 0", name="allowances_amount_nonnegative"),
        CheckConstraint(
            "period_months >= 0 AND period_days >= 0 AND (period_months > 0) <> (period_days > 0)",
            name="allowances_period_one_unit",
        ),
        CheckConstraint(
            "min_rollover_microcents >= 0 AND max_rollover_microcents >= min_rollover_microcents",
            name="allowances_rollover_range",
        ),
    )
    Table(  # revision 0006: as-of checkpoints, a cache (docs/asof.md)
        "asof_checkpoints",
        md,
        _tenant_id(),
        Column("journal_seq", BigInteger, nullable=False),
        Column("effective_at", DateTime(timezone=True), nullable=False),
        _amount("commits"),
        Column("committed_microcents", Numeric, nullable=False),
        _amount("refunds"),
        Column("refunded_microcents", Numeric, nullable=False),
        _created_at(),
        PrimaryKeyConstraint("tenant_id", "journal_seq", name="asof_checkpoints_pkey"),
        CheckConstraint("journal_seq > 0", name="asof_checkpoints_seq_positive"),
        Index("asof_checkpoints_effective_idx", "tenant_id", "effective_at", "journal_seq"),
    )
    Table(  # revision 0006: refused spend, for ``ledger stats``
        "refusals",
        md,
        _tenant_id(),
        Column("op", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("amount_microcents", BigInteger, nullable=True),
        _created_at(),
        Index("refusals_created_at_idx", "created_at"),
    )
    Table(  # revision 0011: docs/alerts.md
        "thresholds",
        md,
        _tenant_id(),
        Column("name", Text, nullable=False),
        Column("spent_microcents", BigInteger, nullable=True),
        Column("spent_percent", Numeric, nullable=True),
        Column("remaining_below_microcents", BigInteger, nullable=True),
        _created_at(),
        PrimaryKeyConstraint("tenant_id", "name", name="thresholds_pkey"),
        ForeignKeyConstraint(
            ["tenant_id"],
            [f"{schema}.tenants.tenant_id"],
            name="thresholds_tenant_fkey",
            ondelete="CASCADE",
        ),
        CheckConstraint("octet_length(name) BETWEEN 1 AND 200", name="thresholds_name_length"),
        CheckConstraint(
            "num_nonnulls(spent_microcents, spent_percent, remaining_below_microcents) = 1",
            name="thresholds_one_level",
        ),
        CheckConstraint("spent_microcents > 0", name="thresholds_spent_positive"),
        CheckConstraint(
            "spent_percent > 0 AND spent_percent <= 10000", name="thresholds_percent_range"
        ),
        CheckConstraint("remaining_below_microcents > 0", name="thresholds_remaining_positive"),
    )
    Table(  # revision 0011: the current period's spend, kept by the trigger
        "threshold_spend",
        md,
        _tenant_id(primary_key=True),
        Column("period_index", BigInteger, nullable=False),
        _amount("spent_microcents"),
        ForeignKeyConstraint(
            ["tenant_id"],
            [f"{schema}.tenants.tenant_id"],
            name="threshold_spend_tenant_fkey",
            ondelete="CASCADE",
        ),
    )
    Table(  # revision 0011: the alerts outbox
        "alerts",
        md,
        Column("alert_id", BigInteger, Identity(always=True), nullable=False),
        _tenant_id(),
        Column("threshold", Text, nullable=False),
        Column("period_index", BigInteger, nullable=True),
        Column("kind", Text, nullable=False),
        _amount("level_microcents"),
        _amount("spent_microcents"),
        _amount("initial_microcents"),
        _amount("remaining_microcents"),
        _amount("reserved_microcents"),
        _amount("committed_microcents"),
        _amount("journal_seq"),
        _created_at(),
        Column("claimed_until", DateTime(timezone=True), nullable=True),
        Column("claimed_by", Text, nullable=True),
        Column("attempts", BigInteger, nullable=False, server_default=text("0")),
        Column("last_error", Text, nullable=True),
        Column("delivered_at", DateTime(timezone=True), nullable=True),
        PrimaryKeyConstraint("tenant_id", "alert_id", name="alerts_pkey"),
        UniqueConstraint(
            "tenant_id",
            "threshold",
            "period_index",
            name="alerts_once_per_period",
            postgresql_nulls_not_distinct=True,
        ),
        CheckConstraint(
            "kind IN ('spent', 'spent_percent', 'remaining_below')", name="alerts_kind"
        ),
        Index("alerts_undelivered_idx", "alert_id", postgresql_where=text("delivered_at IS NULL")),
    )
    return md
