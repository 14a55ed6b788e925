-- Hold expiry: each statement expires one lapsed hold and journals it.
-- The expire entry carries the hold's period; a hold from a closed period
-- forfeits its amount (docs/periods.md). A tenant due for renewal answers
-- 'renew' instead, and the caller renews it and runs the statement again.

-- name: expire_any
-- Expire one lapsed hold and return its amount. {pick} narrows the choice: any
-- lapsed hold (the sweeper, with SKIP LOCKED so many sweepers share the work),
-- one tenant's (lazily, before a reserve is refused), or one hold by id.
-- This one: any lapsed hold, SKIP LOCKED (the sweeper), except the holds of the
-- tenants in %(skip)s (the sweep could not renew them: ledger._operations.expire_holds).
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM {schema}.reservations
    WHERE expires_at <= now() AND NOT (tenant_id = ANY(CAST(%(skip)b AS text[])))
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = (SELECT tenant_id FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM {schema}.reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {schema}.invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied)

-- name: expire_for_tenant
-- As expire_any, for one tenant's lapsed holds (lazily, before a reserve is refused).
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM {schema}.reservations
    WHERE expires_at <= now() AND tenant_id = %(tenant_id)s
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = %(tenant_id)s AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM {schema}.reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = %(tenant_id)s AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {schema}.invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied)

-- name: expire_hold
-- As expire_any, for one hold by id, waiting for its lock (a settlement found it lapsed).
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM {schema}.reservations
    WHERE expires_at <= now() AND reservation_id = CAST(%(reservation_id)s AS bigint)
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = (SELECT tenant_id FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM {schema}.reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {schema}.invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied)

-- name: expire_hold_for_tenant
-- As expire_hold, with the tenant the settlement found the hold under: every read
-- and write filters by it (what Citus routes to the tenant's shard).
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM {schema}.reservations
    WHERE expires_at <= now() AND reservation_id = CAST(%(reservation_id)s AS bigint)
      AND tenant_id = %(tenant_id)s
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = %(tenant_id)s AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM {schema}.reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = %(tenant_id)s AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {schema}.invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied)

-- name: expire_through
-- One lapsed hold through a level (its own, or one that reserved at it as an
-- ancestor), for a nested reserve that this level refused. The caller expires
-- it with nested_settle, which locks it and settles every level it reserved at.
SELECT 'nested' AS status, r.tenant_id, r.reservation_id
FROM {schema}.reservations AS r
WHERE r.expires_at <= now()
  AND (r.tenant_id = %(level)s OR %(level)s = ANY(r.ancestor_ids))
ORDER BY r.expires_at, r.reservation_id
LIMIT 1
