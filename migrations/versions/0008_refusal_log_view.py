"""The audit view ``refusal_log``: the refused spends, for the auditor role.

``refusals`` (revision 0006) logs every refused spend, but the auditor role
reads the audit views only, so it could not see them: the dashboard's
"refusals over time" needed a grant on the table itself. This view is the
table's columns, ``security_barrier`` and filtered by ``tenant_visible()``
like every audit view since revision 0007 (a tenant-scoped role sees its own
tenant's refusals only); ``ledger grant-auditor`` grants SELECT on it.

Zero-downtime: a new view takes no lock on the table beyond the catalog's.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def upgrade() -> None:
    migrator.locked(_expand)


def _expand() -> None:
    q = f'"{_schema()}"'
    op.execute(
        sa.text(f"""
        CREATE VIEW {q}.refusal_log WITH (security_barrier) AS
        SELECT tenant_id, op, status, amount_microcents, created_at
        FROM {q}.refusals
        WHERE {q}.tenant_visible(tenant_id)
    """)
    )


def downgrade() -> None:
    migrator.locked(_contract)


def _contract() -> None:
    op.execute(sa.text(f'DROP VIEW "{_schema()}".refusal_log'))
