-- restore_from_snapshot: these run in this order, in one transaction.

-- name: restore_lock
LOCK TABLE {schema}.tenants, {schema}.reservations IN ACCESS EXCLUSIVE MODE

-- name: restore_clear_holds
DELETE FROM {schema}.reservations

-- name: restore_clear_tree
-- The tree is rebuilt from the snapshot (restore_tree): first every tenant becomes
-- a root, so dropping a parent meets no child and no half-built tree is checked.
UPDATE {schema}.tenants SET parent_id = NULL WHERE parent_id IS NOT NULL

-- name: restore_drop_tenants
-- Tenants the snapshot drops get a 'remove' entry; their cap and chain head are
-- parked, so re-creating one continues its chain and gets its cap back (the
-- seed's cap map survives a restore). Their allowance goes with them
-- (docs/periods.md): a re-created tenant starts without periods.
WITH gone AS (
    DELETE FROM {schema}.tenants WHERE NOT (tenant_id = ANY(CAST(%(ids)s AS text[])))
    RETURNING *
), unallowed AS (
    DELETE FROM {schema}.allowances WHERE tenant_id IN (SELECT tenant_id FROM gone)
), removed AS MATERIALIZED (
    SELECT g.tenant_id, g.max_reserved_microcents, g.journal_seq + 1 AS journal_seq,
           0::bigint AS initial_microcents, 0::bigint AS remaining_microcents,
           0::bigint AS reserved_microcents, 0::bigint AS committed_microcents,
           {schema}.journal_hash(g.journal_head, g.tenant_id, g.journal_seq + 1, 'remove',
                              NULL, NULL, NULL, 0, 0, 0, 0, g.max_reserved_microcents, now(),
                              CAST(%(ikey)s AS text)) AS journal_head
    FROM gone AS g
), parked AS (
    INSERT INTO {schema}.detached_tenants (tenant_id, max_reserved_microcents, journal_seq,
                                        journal_head)
    SELECT tenant_id, max_reserved_microcents, journal_seq, journal_head FROM removed
    ON CONFLICT (tenant_id) DO UPDATE
    SET max_reserved_microcents = EXCLUDED.max_reserved_microcents,
        journal_seq = EXCLUDED.journal_seq, journal_head = EXCLUDED.journal_head
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'remove', NULL, NULL, NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head
    FROM removed AS j
)
SELECT count(*) AS removed FROM removed

-- name: restore_update
-- Tenants the snapshot keeps: their balances become the snapshot's, with a 'restore' entry.
-- Their allowance and period state are kept; the entry carries the period, so a
-- replay knows which period the restored tenant is in (docs/periods.md).
WITH u AS (
SELECT * FROM unnest(CAST(%(ids)s AS text[]), CAST(%(initials)s AS bigint[]),
                     CAST(%(remainings)s AS bigint[]), CAST(%(committeds)s AS bigint[]))
       AS u(tenant_id, initial, remaining, committed)
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = u.initial,
        remaining_microcents = u.remaining,
        reserved_microcents = 0::bigint,
        committed_microcents = u.committed,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'restore', NULL, NULL, NULL,
            u.initial, u.remaining, 0::bigint, u.committed, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            t.period_index, NULL)
    FROM u WHERE t.tenant_id = u.tenant_id
    RETURNING t.*
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'restore', NULL, NULL, NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, j.period_index
    FROM applied AS j
)
SELECT count(*) AS updated FROM applied

-- name: restore_insert
-- Tenants the snapshot adds: created with a 'restore' entry, continuing a parked chain.
WITH u AS (
SELECT * FROM unnest(CAST(%(ids)s AS text[]), CAST(%(initials)s AS bigint[]),
                     CAST(%(remainings)s AS bigint[]), CAST(%(committeds)s AS bigint[]))
       AS u(tenant_id, initial, remaining, committed)
), fresh AS (
    SELECT u.*, COALESCE(d.max_reserved_microcents, 0) AS cap,
           COALESCE(d.journal_seq, 0) + 1 AS seq, COALESCE(d.journal_head, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) AS prev
    FROM u LEFT JOIN {schema}.detached_tenants AS d ON d.tenant_id = u.tenant_id
    -- An anti-join rather than NOT EXISTS: Citus cannot plan a correlated subquery
    -- when the FROM clause holds a CTE (docs/scale-out.md); the rows are the same.
    LEFT JOIN {schema}.tenants AS t ON t.tenant_id = u.tenant_id
    WHERE t.tenant_id IS NULL
), created AS (
    INSERT INTO {schema}.tenants (tenant_id, initial_microcents, remaining_microcents,
                               reserved_microcents, committed_microcents,
                               max_reserved_microcents, journal_seq, journal_head)
    SELECT f.tenant_id, f.initial, f.remaining, 0, f.committed, f.cap, f.seq,
           {schema}.journal_hash(f.prev, f.tenant_id, f.seq, 'restore', NULL, NULL, NULL,
                              f.initial, f.remaining, 0, f.committed, f.cap, now(),
                              CAST(%(ikey)s AS text))
    FROM fresh AS f
    RETURNING *
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'restore', NULL, NULL, NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head
    FROM created AS j
), unparked AS (
    DELETE FROM {schema}.detached_tenants
    WHERE tenant_id IN (SELECT tenant_id FROM created)
)
SELECT count(*) AS created FROM created

-- name: restore_tree
-- The snapshot's tree (nested budgets). Each row meets revision 0010's tree_guard,
-- which sees the rows set before it: a snapshot with a cycle, a tree too deep or
-- a parent it does not hold is refused and the whole restore rolls back.
UPDATE {schema}.tenants AS t SET parent_id = u.parent
FROM unnest(CAST(%(ids)s AS text[]), CAST(%(parents)s AS text[])) AS u(tenant_id, parent)
WHERE t.tenant_id = u.tenant_id

-- name: restore_version
SELECT setval('{schema}.snapshot_version_seq', CAST(%(version)s AS bigint), true)
