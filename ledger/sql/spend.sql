-- Two-phase spend: reserve, then commit or release.
--
-- Each hot-path operation is a single statement (a data-modifying CTE), so it
-- costs one round trip: the conditional UPDATE ... WHERE remaining >= %(amount)s
-- compare-and-swap, the hold insert or delete, the journal entry and, only on
-- refusal, a locked re-read that names the reason.
--
-- The shape of every write:
--
--  1. applied: the conditional UPDATE is the first thing to touch the tenant
--     row. Its WHERE clause is the compare-and-swap; under READ COMMITTED,
-- PostgreSQL waits for any concurrent writer and re-checks the WHERE against
-- the newest row version, so two statements can never both see "enough".
-- The same UPDATE advances the tenant's journal sequence and chain head.
-- 2. Dependent writes (hold insert/delete, journal entry) run from applied's
-- RETURNING row, so they happen exactly when the UPDATE did.
-- 3. probe: only when nothing was applied, the row is read again under a
-- lock to say *why*, with the seed's checks in the seed's order. If the
-- probe finds the operation would now succeed (the row changed between the
-- CAS and the probe), it answers 'retry' and the caller runs the statement
-- again: the seed's CAS loop, in SQL.
--
-- Never lock a row in one CTE and update it in another CTE of the same
-- statement: under contention READ COMMITTED's re-check can then skip the
-- update silently (docs/design.md tells the story). Values from other CTEs
-- reach each UPDATE/DELETE through scalar subqueries, not joins.
--
-- Amounts are bound through CAST(%(x)s AS bigint) so each statement keeps one
-- parameter type and psycopg's prepared-statement cache can reuse it.

-- name: try_reserve
-- A reservation id is drawn before the UPDATE because the chain hash covers it;
-- a refused reserve therefore leaves a gap in the ids (they stay unique).
-- A tenant due for renewal is never spent from: the probe answers 'renew' and
-- the operation renews it first (ledger/sql/periods.sql). The hold and its
-- entry carry the tenant's period. A final refusal is also logged in refusals.
WITH rid AS MATERIALIZED (
    SELECT nextval('{schema}.reservation_id_seq') AS id
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents - CAST(%(amount)s AS bigint),
        reserved_microcents = t.reserved_microcents + CAST(%(amount)s AS bigint),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'reserve', (SELECT id FROM rid), CAST(%(amount)s AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents - CAST(%(amount)s AS bigint), t.reserved_microcents + CAST(%(amount)s AS bigint), t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            t.period_index, NULL)
    WHERE t.tenant_id = %(tenant_id)s
      AND t.parent_id IS NULL
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.remaining_microcents >= CAST(%(amount)s AS bigint)
      AND t.reserved_microcents <= 9223372036854775807 - CAST(%(amount)s AS bigint)
      AND (t.max_reserved_microcents = 0
           OR t.reserved_microcents <= t.max_reserved_microcents - CAST(%(amount)s AS bigint))
    RETURNING t.*
), hold AS (
    INSERT INTO {schema}.reservations (tenant_id, reservation_id, amount_microcents, expires_at,
                                       period_index)
    SELECT a.tenant_id, (SELECT id FROM rid), CAST(%(amount)s AS bigint),
           CASE WHEN CAST(%(ttl_us)s AS bigint) IS NOT NULL
                THEN now() + CAST(%(ttl_us)s AS bigint) * interval '1 microsecond'
                ELSE CAST(%(expires_at)s AS timestamptz) END,
           a.period_index
    FROM applied AS a
    RETURNING reservation_id
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'reserve', (SELECT id FROM rid), CAST(%(amount)s AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, j.period_index
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, reserved_microcents AS reserved,
           max_reserved_microcents AS cap, CASE
        WHEN parent_id IS NOT NULL THEN 'nested'
        WHEN renews_at <= now() THEN 'renew'
        WHEN reserved_microcents > 9223372036854775807 - CAST(%(amount)s AS bigint) THEN 'overflow'
        WHEN max_reserved_microcents > 0
             AND reserved_microcents > max_reserved_microcents - CAST(%(amount)s AS bigint)
            THEN 'exposure_limit_exceeded'
        WHEN remaining_microcents < CAST(%(amount)s AS bigint) THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM {schema}.tenants
    WHERE tenant_id = %(tenant_id)s AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), decided AS MATERIALIZED (
    SELECT p.*, p.status NOT IN ('retry', 'renew', 'nested') AND EXISTS (
               SELECT 1 FROM {schema}.reservations
               WHERE tenant_id = %(tenant_id)s AND expires_at <= now()) AS lapsed_holds
    FROM probe AS p
), refused AS (
    -- Lapsed holds are expired and the reserve decided again: not final yet.
    INSERT INTO {schema}.refusals (tenant_id, op, status, amount_microcents)
    SELECT d.tenant_id, 'reserve', d.status, CAST(%(amount)s AS bigint)
    FROM decided AS d WHERE d.status NOT IN ('retry', 'renew', 'nested') AND NOT d.lapsed_holds
)
SELECT 'reserved' AS status, a.remaining_microcents AS remaining, NULL::bigint AS reserved,
       NULL::bigint AS cap, h.reservation_id, false AS lapsed_holds, a.tenant_id
FROM applied AS a CROSS JOIN hold AS h
UNION ALL
SELECT d.status, d.remaining, d.reserved, d.cap, NULL, d.lapsed_holds, d.tenant_id
FROM decided AS d

-- name: commit
-- Settlements lock the hold row first (holds are only ever inserted and
-- deleted, never updated, so locking one and then deleting it in the same
-- statement is safe). A second settlement of the same hold waits here, then
-- finds it gone. A hold past its deadline is not settled: the caller expires
-- it instead ('lapsed'). When the hold is gone, the caller asks the journal
-- (EXPIRED_HOLD, a fresh snapshot) whether it expired.
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM {schema}.reservations
    WHERE reservation_id = CAST(%(reservation_id)s AS bigint)
    FOR UPDATE
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST(%(actual)s AS bigint)),
        remaining_microcents = t.remaining_microcents - (CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST(%(actual)s AS bigint)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents + CAST(%(actual)s AS bigint),
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'commit', CAST(%(reservation_id)s AS bigint), CAST(%(actual)s AS bigint), (SELECT amount FROM hold),
            t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST(%(actual)s AS bigint)), t.remaining_microcents - (CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST(%(actual)s AS bigint)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents + CAST(%(actual)s AS bigint), t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = (SELECT tenant_id FROM hold)
      AND NOT (SELECT lapsed FROM hold) AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.committed_microcents <= 9223372036854775807 - CAST(%(actual)s AS bigint)
      AND t.remaining_microcents >= CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)
    RETURNING t.*
), gone AS (
    DELETE FROM {schema}.reservations AS r
    WHERE r.reservation_id = CAST(%(reservation_id)s AS bigint)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'commit', CAST(%(reservation_id)s AS bigint), CAST(%(actual)s AS bigint), (SELECT amount FROM hold),
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT t.tenant_id, t.remaining_microcents AS remaining, CASE
        WHEN (SELECT nested FROM hold) THEN 'nested'
        WHEN t.renews_at <= now() THEN 'renew'
        WHEN (SELECT lapsed FROM hold) THEN 'lapsed'
        WHEN t.committed_microcents > 9223372036854775807 - CAST(%(actual)s AS bigint) THEN 'overflow'
        WHEN CAST(%(actual)s AS bigint) > (SELECT amount FROM hold)
             AND t.remaining_microcents < CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)
            THEN 'overrun'
        ELSE 'retry'
    END AS status
    FROM {schema}.tenants AS t
    WHERE t.tenant_id = (SELECT tenant_id FROM hold) AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), refused AS (
    INSERT INTO {schema}.refusals (tenant_id, op, status, amount_microcents)
    SELECT p.tenant_id, 'commit', p.status, CAST(%(actual)s AS bigint)
    FROM probe AS p WHERE p.status IN ('overflow', 'overrun')
)
SELECT 'committed' AS status, a.remaining_microcents AS remaining, NULL::bigint AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {schema}.invariant_failed('commit settled a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, p.remaining, NULL, NULL, p.tenant_id FROM probe AS p

-- name: commit_for_tenant
-- As commit, with the tenant named by the caller: the hold lookup uses the tenant key.
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM {schema}.reservations
    WHERE reservation_id = CAST(%(reservation_id)s AS bigint) AND tenant_id = %(tenant_id)s
    FOR UPDATE
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST(%(actual)s AS bigint)),
        remaining_microcents = t.remaining_microcents - (CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST(%(actual)s AS bigint)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents + CAST(%(actual)s AS bigint),
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'commit', CAST(%(reservation_id)s AS bigint), CAST(%(actual)s AS bigint), (SELECT amount FROM hold),
            t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST(%(actual)s AS bigint)), t.remaining_microcents - (CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST(%(actual)s AS bigint)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents + CAST(%(actual)s AS bigint), t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = %(tenant_id)s AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT lapsed FROM hold) AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.committed_microcents <= 9223372036854775807 - CAST(%(actual)s AS bigint)
      AND t.remaining_microcents >= CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)
    RETURNING t.*
), gone AS (
    DELETE FROM {schema}.reservations AS r
    WHERE r.reservation_id = CAST(%(reservation_id)s AS bigint)
      AND r.tenant_id = %(tenant_id)s AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'commit', CAST(%(reservation_id)s AS bigint), CAST(%(actual)s AS bigint), (SELECT amount FROM hold),
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT t.tenant_id, t.remaining_microcents AS remaining, CASE
        WHEN (SELECT nested FROM hold) THEN 'nested'
        WHEN t.renews_at <= now() THEN 'renew'
        WHEN (SELECT lapsed FROM hold) THEN 'lapsed'
        WHEN t.committed_microcents > 9223372036854775807 - CAST(%(actual)s AS bigint) THEN 'overflow'
        WHEN CAST(%(actual)s AS bigint) > (SELECT amount FROM hold)
             AND t.remaining_microcents < CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)
            THEN 'overrun'
        ELSE 'retry'
    END AS status
    FROM {schema}.tenants AS t
    -- The caller's tenant (the hold was found under it), not the hold's: a locking read
    -- filtered by a constant is what Citus can route to one shard.
    WHERE t.tenant_id = %(tenant_id)s AND EXISTS (SELECT 1 FROM hold)
      AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), refused AS (
    INSERT INTO {schema}.refusals (tenant_id, op, status, amount_microcents)
    SELECT p.tenant_id, 'commit', p.status, CAST(%(actual)s AS bigint)
    FROM probe AS p WHERE p.status IN ('overflow', 'overrun')
)
SELECT 'committed' AS status, a.remaining_microcents AS remaining, NULL::bigint AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {schema}.invariant_failed('commit settled a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, p.remaining, NULL, NULL, p.tenant_id FROM probe AS p

-- name: release
-- Settlements lock the hold row first (holds are only ever inserted and
-- deleted, never updated, so locking one and then deleting it in the same
-- statement is safe). A second settlement of the same hold waits here, then
-- finds it gone. A hold past its deadline is not settled: the caller expires
-- it instead ('lapsed'). When the hold is gone, the caller asks the journal
-- (EXPIRED_HOLD, a fresh snapshot) whether it expired.
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM {schema}.reservations
    WHERE reservation_id = CAST(%(reservation_id)s AS bigint)
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
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'release', CAST(%(reservation_id)s AS bigint), (SELECT amount FROM hold), NULL,
            t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = (SELECT tenant_id FROM hold) AND NOT (SELECT lapsed FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM {schema}.reservations AS r
    WHERE r.reservation_id = CAST(%(reservation_id)s AS bigint)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING r.amount_microcents
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'release', CAST(%(reservation_id)s AS bigint), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'released' AS status, a.remaining_microcents AS remaining,
       (SELECT amount FROM hold) AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {schema}.invariant_failed('release refunded a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT 'lapsed', NULL, NULL, NULL, tenant_id FROM hold WHERE lapsed
UNION ALL
-- The hold is live and not lapsed, so only a due renewal stopped the UPDATE,
-- or the hold is nested (the caller settles it with nested_settle).
SELECT CASE WHEN nested THEN 'nested' ELSE 'renew' END, NULL, NULL, NULL, tenant_id FROM hold
WHERE NOT lapsed AND NOT EXISTS (SELECT 1 FROM applied)

-- name: release_for_tenant
-- As release, with the tenant named by the caller.
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM {schema}.reservations
    WHERE reservation_id = CAST(%(reservation_id)s AS bigint) AND tenant_id = %(tenant_id)s
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
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'release', CAST(%(reservation_id)s AS bigint), (SELECT amount FROM hold), NULL,
            t.initial_microcents - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - {schema}.forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = %(tenant_id)s AND EXISTS (SELECT 1 FROM hold) AND NOT (SELECT lapsed FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM {schema}.reservations AS r
    WHERE r.reservation_id = CAST(%(reservation_id)s AS bigint)
      AND r.tenant_id = %(tenant_id)s AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.amount_microcents
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'release', CAST(%(reservation_id)s AS bigint), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'released' AS status, a.remaining_microcents AS remaining,
       (SELECT amount FROM hold) AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {schema}.invariant_failed('release refunded a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT 'lapsed', NULL, NULL, NULL, tenant_id FROM hold WHERE lapsed
UNION ALL
-- The hold is live and not lapsed, so only a due renewal stopped the UPDATE,
-- or the hold is nested (the caller settles it with nested_settle).
SELECT CASE WHEN nested THEN 'nested' ELSE 'renew' END, NULL, NULL, NULL, tenant_id FROM hold
WHERE NOT lapsed AND NOT EXISTS (SELECT 1 FROM applied)

-- name: nested_reserve
-- A tenant with a parent: reserve at it and every ancestor, or nowhere
-- (revision 0010's nested_reserve; docs/design.md "Nested budgets").
SELECT * FROM {schema}.nested_reserve(%(tenant_id)s, CAST(%(amount)s AS bigint),
    CAST(%(ttl_us)s AS bigint), CAST(%(expires_at)s AS timestamptz), CAST(%(ikey)s AS text))

-- name: nested_settle
-- A nested hold: commit, release or expire it at exactly the levels it reserved at.
SELECT * FROM {schema}.nested_settle(CAST(%(kind)s AS text), CAST(%(reservation_id)s AS bigint),
    CAST(%(actual)s AS bigint), CAST(%(tenant_id)s AS text), CAST(%(ikey)s AS text))

-- name: expired_hold
SELECT amount_microcents AS returned FROM {schema}.journal
WHERE reservation_id = CAST(%(reservation_id)s AS bigint) AND op = 'expire'
LIMIT 1
