"""The host application's own table, referencing the ledger.

Revision ID: a1
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "a1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.Text(collation="C"), sa.ForeignKey("ledger.tenants.tenant_id")),
        sa.Column("reservation_id", sa.BigInteger),
    )


def downgrade() -> None:
    op.drop_table("orders")
