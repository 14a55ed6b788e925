"""A small index for "did this hold expire, and what did it return?".

Commit and release look up the ``expire`` entry of a hold that lapsed
(the ``expired_hold`` and ``expired_holds`` statements). The general
``journal_reservation_id_idx`` finds every entry of the hold and filters;
this partial index holds only ``expire`` entries and carries the returned
amount, so the lookup is an index-only scan of a tiny index.

Zero-downtime: built with ``CREATE INDEX CONCURRENTLY`` outside the revision's
transaction, so appends to the journal never wait for it (docs/migrations.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from ledger import migrator

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "journal_expired_holds_idx"


def upgrade() -> None:
    migrator.create_index(
        INDEX, "journal", "(reservation_id) INCLUDE (amount_microcents) WHERE op = 'expire'"
    )


def downgrade() -> None:
    migrator.drop_index(INDEX)
