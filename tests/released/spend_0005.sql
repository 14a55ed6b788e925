-- The previous release's (revision 0005) try_reserve and commit_for_tenant, verbatim from
-- ledger/sql/spend.sql at d0f3236: the writer of tests/test_migrations_lock_probe.py runs
-- them while the ledger upgrades to head, as the application deployed before it would.

-- name: try_reserve
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
            t.initial_microcents, t.remaining_microcents - CAST(%(amount)s AS bigint), t.reserved_microcents + CAST(%(amount)s AS bigint), t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text))
    WHERE t.tenant_id = %(tenant_id)s
      AND t.remaining_microcents >= CAST(%(amount)s AS bigint)
      AND t.reserved_microcents <= 9223372036854775807 - CAST(%(amount)s AS bigint)
      AND (t.max_reserved_microcents = 0
           OR t.reserved_microcents <= t.max_reserved_microcents - CAST(%(amount)s AS bigint))
    RETURNING t.*
), hold AS (
    INSERT INTO {schema}.reservations (tenant_id, reservation_id, amount_microcents, expires_at)
    SELECT a.tenant_id, (SELECT id FROM rid), CAST(%(amount)s AS bigint),
           CASE WHEN CAST(%(ttl_us)s AS bigint) IS NOT NULL
                THEN now() + CAST(%(ttl_us)s AS bigint) * interval '1 microsecond'
                ELSE CAST(%(expires_at)s AS timestamptz) END
    FROM applied AS a
    RETURNING reservation_id
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'reserve', (SELECT id FROM rid), CAST(%(amount)s AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT remaining_microcents AS remaining, reserved_microcents AS reserved,
           max_reserved_microcents AS cap, CASE
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
)
SELECT 'reserved' AS status, a.remaining_microcents AS remaining, NULL::bigint AS reserved,
       NULL::bigint AS cap, h.reservation_id, false AS lapsed_holds
FROM applied AS a CROSS JOIN hold AS h
UNION ALL
SELECT p.status, p.remaining, p.reserved, p.cap, NULL,
       p.status <> 'retry' AND EXISTS (
           SELECT 1 FROM {schema}.reservations
           WHERE tenant_id = %(tenant_id)s AND expires_at <= now())
FROM probe AS p

-- name: commit_for_tenant
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount,
           COALESCE(expires_at <= now(), false) AS lapsed
    FROM {schema}.reservations
    WHERE reservation_id = CAST(%(reservation_id)s AS bigint) AND tenant_id = %(tenant_id)s
    FOR UPDATE
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents - (CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents + CAST(%(actual)s AS bigint),
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'commit', CAST(%(reservation_id)s AS bigint), CAST(%(actual)s AS bigint), (SELECT amount FROM hold),
            t.initial_microcents, t.remaining_microcents - (CAST(%(actual)s AS bigint) - (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents + CAST(%(actual)s AS bigint), t.max_reserved_microcents, now(), CAST(%(ikey)s AS text))
    WHERE t.tenant_id = (SELECT tenant_id FROM hold)
      AND NOT (SELECT lapsed FROM hold)
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
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'commit', CAST(%(reservation_id)s AS bigint), CAST(%(actual)s AS bigint), (SELECT amount FROM hold),
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT t.remaining_microcents AS remaining, CASE
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
)
SELECT 'committed' AS status, a.remaining_microcents AS remaining, NULL::bigint AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {schema}.invariant_failed('commit settled a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
SELECT p.status, p.remaining, NULL, NULL FROM probe AS p
