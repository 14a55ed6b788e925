"""journal_hash is STABLE, so PostgreSQL inlines it into every write.

Declared IMMUTABLE, the SQL function was never inlined: its body calls
``convert_to``, which is only STABLE, and the planner refuses to inline a
function whose body is more volatile than its declaration. Every journaled
write therefore paid a full SQL-function call per hash (seen in
``EXPLAIN VERBOSE``: ``ledger.journal_hash(...)`` instead of the
``sha256(...)`` expression). STABLE is the truthful label, nothing depends
on IMMUTABLE (no index or generated column uses the function), and the bytes
it computes do not change. Measured with ``python -m bench.journal_cost``
(docs/benchmarks.md).

On a Citus coordinator the function stays IMMUTABLE: Citus refuses STABLE
functions called with column references in UPDATEs, which is how every
journaled write calls it (``ledger.distribute`` enforces the same).

Zero-downtime: ALTER FUNCTION takes no lock on any table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = (
    "bytea, text, bigint, text, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, "
    "timestamptz, text"
)


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def _volatility(label: str) -> None:
    op.execute(sa.text(f'ALTER FUNCTION "{_schema()}".journal_hash({SIGNATURE}) {label}'))


def _stable_unless_citus() -> None:
    # A DO block, so the offline script makes the same choice when it runs.
    op.execute(
        sa.text(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
                ALTER FUNCTION "{_schema()}".journal_hash({SIGNATURE}) STABLE;
            END IF;
        END
        $$
        """)
    )


def upgrade() -> None:
    migrator.locked(_stable_unless_citus)


def downgrade() -> None:
    migrator.locked(lambda: _volatility("IMMUTABLE"))
