"""Audit views: plain SQL answers to "does every tenant balance?" and friends.

Views run with their owner's rights, so an auditor role can be granted SELECT
on these views alone (``ledger grant-auditor ROLE``) and see nothing else.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = (
    "balances",
    "conservation_violations",
    "open_holds",
    "reserved_mismatches",
    "certificate_history",
    "journal_entries",
)


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def upgrade() -> None:
    migrator.locked(_upgrade)


def _upgrade() -> None:
    q = f'"{_schema()}"'
    op.execute(
        sa.text(f"""
        CREATE VIEW {q}.balances AS
        SELECT t.tenant_id, t.initial_microcents, t.remaining_microcents,
               t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents,
               (SELECT count(*) FROM {q}.reservations AS r WHERE r.tenant_id = t.tenant_id)
                   AS open_holds,
               t.remaining_microcents::numeric + t.reserved_microcents
                   + t.committed_microcents = t.initial_microcents AS balanced,
               t.journal_seq AS journal_entries, t.created_at
        FROM {q}.tenants AS t
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE VIEW {q}.conservation_violations AS
        SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
               committed_microcents,
               remaining_microcents::numeric + reserved_microcents + committed_microcents
                   - initial_microcents AS delta_microcents
        FROM {q}.tenants
        WHERE remaining_microcents::numeric + reserved_microcents + committed_microcents
                  <> initial_microcents
           OR least(initial_microcents, remaining_microcents, reserved_microcents,
                    committed_microcents) < 0
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE VIEW {q}.open_holds AS
        SELECT tenant_id, reservation_id, amount_microcents, created_at, expires_at,
               now() - created_at AS age,
               COALESCE(expires_at <= now(), false) AS lapsed
        FROM {q}.reservations
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE VIEW {q}.reserved_mismatches AS
        SELECT t.tenant_id, t.reserved_microcents,
               COALESCE(h.total, 0) AS open_holds_microcents,
               t.reserved_microcents - COALESCE(h.total, 0) AS difference_microcents
        FROM {q}.tenants AS t
        LEFT JOIN (SELECT tenant_id, sum(amount_microcents) AS total
                   FROM {q}.reservations GROUP BY tenant_id) AS h USING (tenant_id)
        WHERE t.reserved_microcents <> COALESCE(h.total, 0)
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE VIEW {q}.certificate_history AS
        SELECT certificate_id, created_at, snapshot_version,
               encode(ledger_digest, 'hex') AS ledger_digest_hex, tenant_count,
               active_reservations, conservation_balanced, total_initial_microcents,
               total_committed_microcents, aggregate_totals_representable,
               committed_since_last_certificate, baseline_before_microcents,
               baseline_after_microcents, encode(journal_root, 'hex') AS journal_root_hex
        FROM {q}.certificates
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE VIEW {q}.journal_entries AS
        SELECT tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
               initial_microcents, remaining_microcents, reserved_microcents,
               committed_microcents, max_reserved_microcents,
               remaining_microcents - lag(remaining_microcents, 1, 0::bigint) OVER w
                   AS remaining_change_microcents,
               sum(CASE WHEN op = 'top_up' THEN amount_microcents ELSE 0 END) OVER w
                   AS topped_up_total_microcents,
               sum(CASE WHEN op = 'commit' THEN amount_microcents ELSE 0 END) OVER w
                   AS spent_total_microcents,
               idempotency_key, created_at, encode(entry_hash, 'hex') AS entry_hash_hex
        FROM {q}.journal
        WINDOW w AS (PARTITION BY tenant_id ORDER BY seq)
    """)
    )


def downgrade() -> None:
    migrator.locked(_downgrade)


def _downgrade() -> None:
    q = f'"{_schema()}"'
    for view in reversed(VIEWS):
        op.execute(sa.text(f"DROP VIEW {q}.{view}"))
