"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Zero-downtime rules: docs/migrations.md. DDL goes through migrator.locked();
indexes on existing tables through migrator.create_index(); data through
migrator.backfill(). Mirror this revision in ledger/contrib/django/migrations/.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
${imports if imports else ""}
from ledger import migrator

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def upgrade() -> None:
    migrator.locked(_upgrade)


def _upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    migrator.locked(_downgrade)


def _downgrade() -> None:
    ${downgrades if downgrades else "pass"}
