"""Thresholds and alerts (issue 26, docs/alerts.md): an outbox written by the crossing write.

- ``tenants.has_thresholds`` (boolean, NOT NULL DEFAULT false): true while the
  tenant has at least one threshold. The trigger below is declared ``WHEN
  (NEW.has_thresholds)``, a condition PostgreSQL evaluates in C before it
  would call the function, so the write path of a tenant without thresholds
  never enters PL/pgSQL. The column is not part of a snapshot, a digest or a
  journal entry (those name their columns).
- ``thresholds (tenant_id, name, spent_microcents | spent_percent |
  remaining_below_microcents, created_at)``: exactly one of the three levels.
- ``threshold_spend (tenant_id, period_index, spent_microcents)``: the spend
  of a periodic tenant's current period, as ``period_spend()`` defines it
  (commits of holds opened in the period less their refunds), kept by the
  trigger from the journal entries each write appends, so the check never
  scans a tenant's journal (it is filled once from the journal when the
  first threshold is set).
- ``alerts``: the outbox, keyed ``(tenant_id, alert_id)`` like every
  tenant-scoped table (docs/design.md, "Tables"); claims and acknowledgements
  find rows by ``alert_id`` through the partial index of undelivered alerts.
  ``UNIQUE NULLS NOT DISTINCT (tenant_id, threshold, period_index)`` makes a
  threshold fire at most once per period (a tenant without an allowance has
  one period, NULL). Claimed with a lease
  (``claimed_until``), acknowledged with ``delivered_at``; ``attempts`` counts
  claims, ``last_error`` keeps the deliverer's last failure.
- ``check_thresholds()``: the AFTER UPDATE trigger function. It runs at the
  end of the writing statement, inside its transaction, so the alert commits
  or rolls back with the write that crossed the threshold, on every path
  (single statements, batches, renewals, corrections, restore, set_threshold
  itself). SECURITY DEFINER, so a tenant-scoped or application role needs no
  grant to write the outbox or the spend counter; ``search_path`` pinned.
  ``pg_notify`` wakes listeners when the transaction commits.

Zero-downtime: ADD COLUMN with a constant default is metadata only (an
instant ACCESS EXCLUSIVE lock on ``tenants``, under ``lock_timeout``); new
tables and the trigger commit together.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def channel(schema: str) -> str:
    """The NOTIFY channel of a schema's alerts (ledger/_alerts.py listens on it)."""
    return f"{schema}.alerts"


def upgrade() -> None:
    migrator.locked(_expand)


def _on_citus(setting: str, value: str) -> None:
    """``SET LOCAL setting = value`` on a Citus coordinator only (a DO block, so the
    offline script decides when it runs); no-op on plain PostgreSQL.

    On a distributed schema this revision alters ``tenants``' shards and then
    creates a function, which Citus allows over one connection per node only
    (``citus.multi_shard_modify_mode = sequential``, as revisions 0006 and
    0007 do), and adds a trigger to a distributed table, which Citus allows
    with ``citus.enable_unsafe_triggers`` (as ``ledger distribute`` sets it for
    the journal's).
    """
    op.execute(
        sa.text(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
                PERFORM set_config('{setting}', '{value}', true);
            END IF;
        END
        $$
    """)
    )


def _expand() -> None:
    schema = _schema()
    q = f'"{schema}"'
    notify_channel = "'" + channel(schema).replace("'", "''") + "'"
    _on_citus("citus.multi_shard_modify_mode", "sequential")
    _on_citus("citus.enable_unsafe_triggers", "on")
    op.execute(
        sa.text(f"ALTER TABLE {q}.tenants ADD COLUMN has_thresholds boolean NOT NULL DEFAULT false")
    )
    op.execute(
        sa.text(f"""
        CREATE TABLE {q}.thresholds (
            tenant_id text COLLATE "C" NOT NULL,
            name text NOT NULL,
            spent_microcents bigint,
            spent_percent numeric,
            remaining_below_microcents bigint,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT thresholds_pkey PRIMARY KEY (tenant_id, name),
            CONSTRAINT thresholds_tenant_fkey FOREIGN KEY (tenant_id)
                REFERENCES {q}.tenants (tenant_id) ON DELETE CASCADE,
            CONSTRAINT thresholds_name_length CHECK (octet_length(name) BETWEEN 1 AND 200),
            CONSTRAINT thresholds_one_level CHECK (
                num_nonnulls(spent_microcents, spent_percent, remaining_below_microcents) = 1),
            CONSTRAINT thresholds_spent_positive CHECK (spent_microcents > 0),
            CONSTRAINT thresholds_percent_range CHECK (
                spent_percent > 0 AND spent_percent <= 10000),
            CONSTRAINT thresholds_remaining_positive CHECK (remaining_below_microcents > 0)
        )
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE TABLE {q}.threshold_spend (
            tenant_id text COLLATE "C" NOT NULL,
            period_index bigint NOT NULL,
            spent_microcents bigint NOT NULL,
            CONSTRAINT threshold_spend_pkey PRIMARY KEY (tenant_id),
            CONSTRAINT threshold_spend_tenant_fkey FOREIGN KEY (tenant_id)
                REFERENCES {q}.tenants (tenant_id) ON DELETE CASCADE
        )
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE TABLE {q}.alerts (
            alert_id bigint GENERATED ALWAYS AS IDENTITY,
            tenant_id text COLLATE "C" NOT NULL,
            threshold text NOT NULL,
            period_index bigint,
            kind text NOT NULL,
            level_microcents bigint NOT NULL,
            spent_microcents bigint NOT NULL,
            initial_microcents bigint NOT NULL,
            remaining_microcents bigint NOT NULL,
            reserved_microcents bigint NOT NULL,
            committed_microcents bigint NOT NULL,
            journal_seq bigint NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            claimed_until timestamptz,
            claimed_by text,
            attempts bigint NOT NULL DEFAULT 0,
            last_error text,
            delivered_at timestamptz,
            CONSTRAINT alerts_pkey PRIMARY KEY (tenant_id, alert_id),
            CONSTRAINT alerts_once_per_period
                UNIQUE NULLS NOT DISTINCT (tenant_id, threshold, period_index),
            CONSTRAINT alerts_kind CHECK (kind IN ('spent', 'spent_percent', 'remaining_below'))
        )
    """)
    )
    op.execute(
        sa.text(
            f"CREATE INDEX alerts_undelivered_idx ON {q}.alerts (alert_id) "
            "WHERE delivered_at IS NULL"
        )
    )
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.check_thresholds() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
        AS $fn$
        DECLARE
            spent bigint;
            base numeric;
            counted_period bigint;
            delta bigint := 0;
            fired bigint;
        BEGIN
            IF NEW.journal_seq > OLD.journal_seq
               AND NEW.committed_microcents = OLD.committed_microcents
               AND NEW.initial_microcents = OLD.initial_microcents
               AND NEW.period_index IS NOT DISTINCT FROM OLD.period_index THEN
                -- A write that spent nothing (a reserve, a release, an expiry, a
                -- top-up): spend and the percent base are unchanged, so only a
                -- remaining_below threshold can cross, and only if remaining fell.
                -- (Spend moves only with commit and refund entries, which move
                -- committed; set_threshold's own update appends no entry, so it
                -- always takes the full check below.)
                IF NEW.remaining_microcents < OLD.remaining_microcents THEN
                    spent := NEW.committed_microcents;
                    IF NEW.period_index IS NOT NULL THEN
                        SELECT s.spent_microcents INTO spent FROM {q}.threshold_spend AS s
                        WHERE s.tenant_id = NEW.tenant_id AND s.period_index = NEW.period_index;
                        spent := COALESCE(spent, 0);
                    END IF;
                    INSERT INTO {q}.alerts (
                        tenant_id, threshold, period_index, kind, level_microcents,
                        spent_microcents, initial_microcents, remaining_microcents,
                        reserved_microcents, committed_microcents, journal_seq)
                    SELECT th.tenant_id, th.name, NEW.period_index, 'remaining_below',
                           th.remaining_below_microcents, spent, NEW.initial_microcents,
                           NEW.remaining_microcents, NEW.reserved_microcents,
                           NEW.committed_microcents, NEW.journal_seq
                    FROM {q}.thresholds AS th
                    WHERE th.tenant_id = NEW.tenant_id
                      AND th.remaining_below_microcents > NEW.remaining_microcents
                      AND NOT EXISTS (
                          SELECT 1 FROM {q}.alerts AS a
                          WHERE a.tenant_id = th.tenant_id AND a.threshold = th.name
                            AND (a.period_index = NEW.period_index
                                 OR (a.period_index IS NULL AND NEW.period_index IS NULL)))
                    ON CONFLICT ON CONSTRAINT alerts_once_per_period DO NOTHING;
                    GET DIAGNOSTICS fired = ROW_COUNT;
                    IF fired > 0 THEN
                        PERFORM pg_notify({notify_channel}, NEW.tenant_id);
                    END IF;
                END IF;
                RETURN NULL;
            END IF;
            IF NEW.period_index IS NULL THEN
                -- No periods: spend is lifetime commits (refunds lower it).
                spent := NEW.committed_microcents;
                base := NEW.initial_microcents;
            ELSE
                SELECT s.period_index, s.spent_microcents INTO counted_period, spent
                FROM {q}.threshold_spend AS s WHERE s.tenant_id = NEW.tenant_id;
                IF NOT FOUND THEN
                    -- First check of this tenant (or after its thresholds were
                    -- cleared): period_spend's sum, once.
                    SELECT COALESCE(sum(CASE j.op WHEN 'refund' THEN -j.amount_microcents
                                                  ELSE j.amount_microcents END), 0)
                    INTO spent
                    FROM {q}.journal AS j
                    WHERE j.tenant_id = NEW.tenant_id AND j.op IN ('commit', 'refund')
                      AND j.period_index = NEW.period_index;
                    INSERT INTO {q}.threshold_spend (tenant_id, period_index, spent_microcents)
                    VALUES (NEW.tenant_id, NEW.period_index, spent);
                ELSE
                    IF NEW.journal_seq > OLD.journal_seq THEN
                        -- Only the entries this statement appended: a primary-key range.
                        SELECT COALESCE(sum(CASE j.op WHEN 'refund' THEN -j.amount_microcents
                                                      ELSE j.amount_microcents END), 0)
                        INTO delta
                        FROM {q}.journal AS j
                        WHERE j.tenant_id = NEW.tenant_id
                          AND j.seq > OLD.journal_seq AND j.seq <= NEW.journal_seq
                          AND j.op IN ('commit', 'refund')
                          AND j.period_index = NEW.period_index;
                    END IF;
                    IF counted_period <> NEW.period_index THEN
                        -- A new period: nothing of it can predate the tenant entering it
                        -- (period indexes only increase, docs/periods.md).
                        spent := delta;
                        UPDATE {q}.threshold_spend
                        SET period_index = NEW.period_index, spent_microcents = spent
                        WHERE tenant_id = NEW.tenant_id;
                    ELSIF delta <> 0 THEN
                        spent := spent + delta;
                        UPDATE {q}.threshold_spend SET spent_microcents = spent
                        WHERE tenant_id = NEW.tenant_id;
                    END IF;
                END IF;
                SELECT a.allowance_microcents INTO base
                FROM {q}.allowances AS a WHERE a.tenant_id = NEW.tenant_id;
            END IF;
            INSERT INTO {q}.alerts (
                tenant_id, threshold, period_index, kind, level_microcents, spent_microcents,
                initial_microcents, remaining_microcents, reserved_microcents,
                committed_microcents, journal_seq)
            SELECT l.tenant_id, l.name, NEW.period_index, l.kind, l.level, spent,
                   NEW.initial_microcents, NEW.remaining_microcents, NEW.reserved_microcents,
                   NEW.committed_microcents, NEW.journal_seq
            FROM (
                SELECT th.tenant_id, th.name,
                       CASE WHEN th.spent_microcents IS NOT NULL THEN 'spent'
                            WHEN th.spent_percent IS NOT NULL THEN 'spent_percent'
                            ELSE 'remaining_below' END AS kind,
                       CASE WHEN th.spent_microcents IS NOT NULL THEN th.spent_microcents
                            WHEN th.spent_percent IS NOT NULL THEN
                                CAST(LEAST(ceil(th.spent_percent * base / 100),
                                           9223372036854775807) AS bigint)
                            ELSE th.remaining_below_microcents END AS level
                FROM {q}.thresholds AS th
                WHERE th.tenant_id = NEW.tenant_id
            ) AS l
            WHERE CASE l.kind
                      WHEN 'remaining_below' THEN NEW.remaining_microcents < l.level
                      WHEN 'spent_percent' THEN base > 0 AND spent >= l.level
                      ELSE spent >= l.level END
              AND NOT EXISTS (
                  SELECT 1 FROM {q}.alerts AS a
                  WHERE a.tenant_id = l.tenant_id AND a.threshold = l.name
                    AND (a.period_index = NEW.period_index
                         OR (a.period_index IS NULL AND NEW.period_index IS NULL)))
            ON CONFLICT ON CONSTRAINT alerts_once_per_period DO NOTHING;
            GET DIAGNOSTICS fired = ROW_COUNT;
            IF fired > 0 THEN
                PERFORM pg_notify({notify_channel}, NEW.tenant_id);
            END IF;
            RETURN NULL;
        END
        $fn$
    """)
    )
    op.execute(sa.text(f"REVOKE ALL ON FUNCTION {q}.check_thresholds() FROM PUBLIC"))
    op.execute(
        sa.text(f"""
        CREATE TRIGGER tenants_check_thresholds AFTER UPDATE ON {q}.tenants
        FOR EACH ROW WHEN (NEW.has_thresholds)
        EXECUTE FUNCTION {q}.check_thresholds()
    """)
    )


def downgrade() -> None:
    migrator.locked(_contract)


def _contract() -> None:
    q = f'"{_schema()}"'
    _on_citus("citus.multi_shard_modify_mode", "sequential")
    _on_citus("citus.enable_unsafe_triggers", "on")
    op.execute(sa.text(f"DROP TRIGGER tenants_check_thresholds ON {q}.tenants"))
    op.execute(sa.text(f"DROP FUNCTION {q}.check_thresholds()"))
    op.execute(sa.text(f"DROP TABLE {q}.alerts"))
    op.execute(sa.text(f"DROP TABLE {q}.threshold_spend"))
    op.execute(sa.text(f"DROP TABLE {q}.thresholds"))
    op.execute(sa.text(f"ALTER TABLE {q}.tenants DROP COLUMN has_thresholds"))
