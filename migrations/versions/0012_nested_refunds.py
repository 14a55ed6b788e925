"""Refunds of a nested commit at every level it settled at.

Issue 24 (docs/nested.md "Refunds", docs/corrections.md): a commit of a nested
hold wrote a ``commit`` entry, with the hold's reservation id, in the chain of
every level it settled at (``nested_settle``, revision 0010). Those entries are
the record of the commit's levels: they are written once, by the commit's own
transaction, and never change (the journal is append-only), so they stay what
they were when the tree moves later. A refund of such a commit now gives back
at exactly those levels.

- ``nested_refund`` (PL/pgSQL, ``SECURITY INVOKER``, fixed search_path): reads
  the levels from the commit's entries, without locks; a commit with one
  entry (every flat commit) is handed to ``refund_commit`` unchanged, so flat
  refunds behave exactly as before. Otherwise it locks every level in tenant id
  order (the order of ``nested_reserve`` and ``nested_settle``; docs/design.md
  "The locking order"), renews the levels that are due, then, with every lock
  held, reads each level's commit and earlier refunds with new snapshots, and
  refunds only if the amount fits at every level: the refunds of one commit
  never add up to more than it at any level, and no level's ``committed``
  goes below zero. Each level gets its own ``refund`` entry, in its own chain,
  with that level's period of the commit.

Nothing else changes: no table, column or index. The function is new, so the
downgrade only drops it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = "text, bigint, bigint, text, text"


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def upgrade() -> None:
    migrator.locked(_expand)


def _expand() -> None:
    q = f'"{_schema()}"'
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.nested_refund(
            p_tenant text, p_reservation bigint, p_amount bigint, p_reason text, p_ikey text
        ) RETURNS TABLE (
            status text, remaining bigint, committed bigint, left_microcents bigint
        )
        LANGUAGE plpgsql VOLATILE SECURITY INVOKER
        SET search_path = pg_catalog, pg_temp
        AS $$
        DECLARE
            levels text[];
            level text;
            seen integer;
            tenant {q}.tenants%ROWTYPE;
            can_refund bigint;
            stamp timestamptz := now();
        BEGIN
            -- 1. The levels the commit settled at: its commit entries, one per
            --    level, all written by the commit's transaction and never changed.
            --    Read without locks (a commit not yet visible is not refundable yet).
            SELECT array_agg(j.tenant_id ORDER BY j.tenant_id) INTO levels
            FROM {q}.journal AS j
            WHERE j.reservation_id = p_reservation AND j.op = 'commit';
            -- A role that cannot see the tenant's parent (row-level security) may
            -- see only part of a commit's levels: refuse rather than refund at part
            -- of them. Without row-level security the parent is always there.
            IF EXISTS (
                SELECT 1 FROM {q}.tenants AS t
                WHERE t.tenant_id = p_tenant AND t.parent_id IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM {q}.tenants AS p WHERE p.tenant_id = t.parent_id)
            ) THEN
                RAISE EXCEPTION 'tenant % has an ancestor this role cannot see',
                    quote_literal(p_tenant) USING ERRCODE = '42501';
            END IF;
            IF levels IS NULL OR cardinality(levels) < 2 OR NOT (p_tenant = ANY(levels)) THEN
                -- A flat commit (or none of this tenant): revision 0007's refund, unchanged.
                RETURN QUERY SELECT r.status, r.remaining, r.committed, r.left_microcents
                FROM {q}.refund_commit(p_tenant, p_reservation, p_amount, p_reason, p_ikey)
                    AS r;
                RETURN;
            END IF;

            -- 2. Every level, in tenant id order: the order nested holds lock in.
            PERFORM 1 FROM {q}.tenants AS t WHERE t.tenant_id = ANY(levels)
            ORDER BY t.tenant_id FOR NO KEY UPDATE;
            GET DIAGNOSTICS seen = ROW_COUNT;
            -- Levels due for renewal are renewed first (their rows are locked
            -- already, renew_tenant locks nothing else), as refund_commit does.
            FOREACH level IN ARRAY levels LOOP
                PERFORM {q}.renew_tenant(level);
            END LOOP;
            SELECT * INTO tenant FROM {q}.tenants AS t WHERE t.tenant_id = p_tenant;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'missing_tenant', NULL::bigint, NULL::bigint, NULL::bigint;
                RETURN;
            END IF;

            -- 3. With every lock held, new snapshots. A commit that a restore or
            --    a removal undid at any level is history only, as for a flat one.
            IF EXISTS (
                SELECT 1 FROM {q}.journal AS c JOIN {q}.journal AS x
                    ON x.tenant_id = c.tenant_id AND x.seq > c.seq
                WHERE c.reservation_id = p_reservation AND c.op = 'commit'
                  AND x.op IN ('restore', 'remove')
            ) THEN
                RETURN QUERY SELECT 'unknown_commit', tenant.remaining_microcents,
                                    tenant.committed_microcents, NULL::bigint;
                RETURN;
            END IF;
            IF seen <> cardinality(levels) THEN
                RAISE EXCEPTION 'commit of hold % settled at a level this role cannot see',
                    p_reservation USING ERRCODE = '42501';
            END IF;
            -- What the commit has left at each level; the least of them is the
            -- most this refund may give back (never below zero committed either).
            SELECT min(least(c.amount_microcents - COALESCE(r.refunded, 0),
                             t.committed_microcents))
            INTO can_refund
            FROM {q}.journal AS c
            JOIN {q}.tenants AS t ON t.tenant_id = c.tenant_id
            LEFT JOIN LATERAL (
                SELECT sum(f.amount_microcents) AS refunded FROM {q}.journal AS f
                WHERE f.reservation_id = p_reservation AND f.tenant_id = c.tenant_id
                  AND f.op = 'refund'
            ) AS r ON true
            WHERE c.reservation_id = p_reservation AND c.op = 'commit';
            IF p_amount > can_refund THEN
                RETURN QUERY SELECT 'refund_exceeds_commit', tenant.remaining_microcents,
                                    tenant.committed_microcents, can_refund;
                RETURN;
            END IF;

            -- 4. Apply at every level (rows this transaction has locked), each
            --    with its own chain and the commit's period at that level. The
            --    key goes on the named tenant's entry, as settlements do.
            WITH c AS (
                SELECT j.tenant_id, j.period_index FROM {q}.journal AS j
                WHERE j.reservation_id = p_reservation AND j.op = 'commit'
            ), applied AS (
                UPDATE {q}.tenants AS t
                SET remaining_microcents = t.remaining_microcents + p_amount,
                    committed_microcents = t.committed_microcents - p_amount,
                    journal_seq = t.journal_seq + 1,
                    journal_head = {q}.journal_hash(
                        t.journal_head, t.tenant_id, t.journal_seq + 1, 'refund', p_reservation,
                        p_amount, NULL, t.initial_microcents, t.remaining_microcents + p_amount,
                        t.reserved_microcents, t.committed_microcents - p_amount,
                        t.max_reserved_microcents, stamp,
                        CASE WHEN t.tenant_id = p_tenant THEN p_ikey END, c.period_index,
                        p_reason)
                FROM c
                WHERE t.tenant_id = c.tenant_id
                RETURNING t.*, c.period_index AS commit_period
            ), logged AS (
                INSERT INTO {q}.journal (
                    tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
                    initial_microcents, remaining_microcents, reserved_microcents,
                    committed_microcents, max_reserved_microcents, idempotency_key,
                    created_at, entry_hash, period_index, reason)
                SELECT a.tenant_id, a.journal_seq, 'refund', p_reservation, p_amount, NULL,
                       a.initial_microcents, a.remaining_microcents, a.reserved_microcents,
                       a.committed_microcents, a.max_reserved_microcents,
                       CASE WHEN a.tenant_id = p_tenant THEN p_ikey END, stamp,
                       a.journal_head, a.commit_period, p_reason
                FROM applied AS a
            )
            SELECT count(*), max(a.remaining_microcents) FILTER (WHERE a.tenant_id = p_tenant),
                   max(a.committed_microcents) FILTER (WHERE a.tenant_id = p_tenant)
            INTO seen, tenant.remaining_microcents, tenant.committed_microcents
            FROM applied AS a;
            IF seen <> cardinality(levels) THEN
                PERFORM {q}.invariant_failed('a nested refund missed one of its levels');
            END IF;
            RETURN QUERY SELECT 'refunded', tenant.remaining_microcents,
                                tenant.committed_microcents, can_refund - p_amount;
        END
        $$
    """)
    )


def downgrade() -> None:
    migrator.locked(_contract)


def _contract() -> None:
    q = f'"{_schema()}"'
    op.execute(sa.text(f"DROP FUNCTION {q}.nested_refund({SIGNATURE})"))
