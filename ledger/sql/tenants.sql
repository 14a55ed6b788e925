-- Tenant writes: create, cap, top up. Each is one statement that also appends its
-- journal entry (see spend.sql for the shape every write shares). Cap and
-- top-up never apply to a tenant due for renewal: they answer 'renew' first.

-- name: ensure_tenant
-- With a parent (nested budgets, docs/nested.md), revision 0010's tree_guard
-- trigger refuses an unknown parent or a tree too deep, and nothing is created.
-- The parent gives the child nothing: its budget caps the sum of its children's spend.
WITH parked AS (
    DELETE FROM {schema}.detached_tenants WHERE tenant_id = %(tenant_id)s
    RETURNING max_reserved_microcents, journal_seq, journal_head
), created AS (
    INSERT INTO {schema}.tenants AS t (
        tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
        committed_microcents, max_reserved_microcents, journal_seq, journal_head, parent_id)
    SELECT %(tenant_id)s, CAST(%(budget)s AS bigint), CAST(%(budget)s AS bigint), 0, 0,
           COALESCE(p.max_reserved_microcents, 0), COALESCE(p.journal_seq, 0) + 1,
           {schema}.journal_hash(
               COALESCE(p.journal_head, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea), %(tenant_id)s, COALESCE(p.journal_seq, 0) + 1,
               'create', NULL, CAST(%(budget)s AS bigint), NULL,
               CAST(%(budget)s AS bigint), CAST(%(budget)s AS bigint), 0, 0,
               COALESCE(p.max_reserved_microcents, 0), now(), CAST(%(ikey)s AS text)),
           CAST(%(parent)s AS text)
    FROM (SELECT 1) AS one LEFT JOIN parked AS p ON true
    ON CONFLICT (tenant_id) DO NOTHING
    RETURNING *
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'create', NULL, CAST(%(budget)s AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head
    FROM created AS j
)
SELECT count(*) AS created FROM created

-- name: set_cap
WITH applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents,
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = CAST(%(cap)s AS bigint),
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'cap', NULL, CAST(%(cap)s AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents, t.reserved_microcents, t.committed_microcents, CAST(%(cap)s AS bigint), now(), CAST(%(ikey)s AS text))
    WHERE t.tenant_id = %(tenant_id)s
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'cap', NULL, CAST(%(cap)s AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head
    FROM applied AS j
)
SELECT 'capped' AS status, tenant_id FROM applied
UNION ALL
-- Not applied to an existing tenant: it is due for renewal (renew, then run again).
SELECT 'renew', tenant_id FROM {schema}.tenants
WHERE tenant_id = %(tenant_id)s AND renews_at <= now() AND NOT EXISTS (SELECT 1 FROM applied)

-- name: top_up
WITH applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents + CAST(%(amount)s AS bigint),
        remaining_microcents = t.remaining_microcents + CAST(%(amount)s AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'top_up', NULL, CAST(%(amount)s AS bigint), NULL,
            t.initial_microcents + CAST(%(amount)s AS bigint), t.remaining_microcents + CAST(%(amount)s AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text))
    WHERE t.tenant_id = %(tenant_id)s
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.initial_microcents <= 9223372036854775807 - CAST(%(amount)s AS bigint)
      AND t.remaining_microcents <= 9223372036854775807 - CAST(%(amount)s AS bigint)
    RETURNING t.*
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'top_up', NULL, CAST(%(amount)s AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - CAST(%(amount)s AS bigint) THEN 'overflow'
        WHEN remaining_microcents > 9223372036854775807 - CAST(%(amount)s AS bigint) THEN 'overflow'
        ELSE 'retry'
    END AS status
    FROM {schema}.tenants
    WHERE tenant_id = %(tenant_id)s AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'topped_up' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS new_remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, NULL, p.tenant_id FROM probe AS p

-- name: set_parent
-- Move a tenant (and its subtree) under another parent, or make it a root (NULL).
-- No money moves and no entry is written: open holds keep the levels they
-- reserved at. tree_guard refuses a cycle, a tree too deep or an unknown parent.
UPDATE {schema}.tenants SET parent_id = CAST(%(parent)s AS text)
WHERE tenant_id = %(tenant_id)s
RETURNING tenant_id

-- name: children
-- One row with a NULL child when the tenant has none; no row when it does not exist.
SELECT c.tenant_id AS child
FROM {schema}.tenants AS t LEFT JOIN {schema}.tenants AS c ON c.parent_id = t.tenant_id
WHERE t.tenant_id = %(tenant_id)s
ORDER BY c.tenant_id

-- name: subtree
-- The tenant and everything below it, level by level, in byte order within a level.
WITH RECURSIVE down(tenant_id, parent_id, depth) AS (
    SELECT tenant_id, parent_id, 0 FROM {schema}.tenants WHERE tenant_id = %(tenant_id)s
    UNION ALL
    SELECT t.tenant_id, t.parent_id, d.depth + 1
    FROM down AS d JOIN {schema}.tenants AS t ON t.parent_id = d.tenant_id
)
SELECT tenant_id, parent_id, depth FROM down ORDER BY depth, tenant_id
