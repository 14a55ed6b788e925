-- Certificates: the certified snapshot with its checkpoint, then the stored certificate.

-- name: certify_snapshot
-- The certified snapshot and its checkpoint rows come from the same statement,
-- so the checkpoint (chain heads, balances, open holds) is exactly the state
-- the certificate's digest covers.
WITH v AS MATERIALIZED (
    SELECT nextval('{schema}.snapshot_version_seq') AS version,
           nextval('{schema}.checkpoint_id_seq') AS checkpoint_id
), a AS MATERIALIZED (
    SELECT count(*) AS active FROM {schema}.reservations
), held AS MATERIALIZED (
    -- Each tenant's open holds: its own, and (nested budgets) those that reserved
    -- at it as an ancestor, which are open in its chain too. Grouped once, so the
    -- cost is one pass over the holds whatever the number of tenants.
    SELECT x.level, array_agg(x.rid ORDER BY x.rid) AS ids,
           array_agg(x.amount ORDER BY x.rid) AS amounts
    FROM (
        SELECT r.tenant_id AS level, r.reservation_id AS rid, r.amount_microcents AS amount
        FROM {schema}.reservations AS r
        UNION ALL
        SELECT l.level, r.reservation_id, r.amount_microcents
        FROM {schema}.reservations AS r CROSS JOIN LATERAL unnest(r.ancestor_ids) AS l(level)
        WHERE r.ancestor_ids IS NOT NULL
    ) AS x
    GROUP BY x.level
), checkpoint AS (
    INSERT INTO {schema}.certificate_checkpoints (
        checkpoint_id, tenant_id, journal_seq, journal_head, initial_microcents,
        remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, hold_ids, hold_amounts, period_index)
    SELECT v.checkpoint_id, t.tenant_id, t.journal_seq, t.journal_head, t.initial_microcents,
           t.remaining_microcents, t.reserved_microcents, t.committed_microcents,
           t.max_reserved_microcents, COALESCE(h.ids, '{}'), COALESCE(h.amounts, '{}'),
           t.period_index
    FROM v CROSS JOIN {schema}.tenants AS t
    LEFT JOIN held AS h ON h.level = t.tenant_id
    RETURNING tenant_id, journal_seq, journal_head, initial_microcents, remaining_microcents,
              reserved_microcents, committed_microcents
)
SELECT v.version, v.checkpoint_id, a.active, c.*
FROM v CROSS JOIN a LEFT JOIN checkpoint AS c ON true
ORDER BY c.tenant_id

-- name: certify
-- The baseline row is the lock that serialises concurrent certifiers; it only
-- ever moves forward, so no spend is counted by two certificates.
WITH b AS MATERIALIZED (
    SELECT committed_microcents AS baseline FROM {schema}.certificate_baseline WHERE id = 1
    FOR UPDATE
), rotated AS (
    UPDATE {schema}.certificate_baseline AS c
    SET committed_microcents = GREATEST(b.baseline, CAST(%(total_committed)s AS bigint)),
        updated_at = now()
    FROM b
    WHERE c.id = 1 AND CAST(%(representable)s AS boolean)
    RETURNING c.committed_microcents
), stored AS (
    INSERT INTO {schema}.certificates (
        snapshot_version, ledger_digest, tenant_count, active_reservations,
        conservation_balanced, total_initial_microcents, total_committed_microcents,
        aggregate_totals_representable, committed_since_last_certificate,
        baseline_before_microcents, baseline_after_microcents, journal_root, checkpoint_id)
    SELECT CAST(%(version)s AS bigint), CAST(%(digest)s AS bytea), CAST(%(tenant_count)s AS bigint),
           CAST(%(active)s AS bigint), CAST(%(balanced)s AS boolean),
           CAST(%(total_initial)s AS bigint), CAST(%(total_committed)s AS bigint),
           CAST(%(representable)s AS boolean),
           CASE WHEN CAST(%(representable)s AS boolean)
                     AND CAST(%(total_committed)s AS bigint) > b.baseline
                THEN CAST(%(total_committed)s AS bigint) - b.baseline ELSE 0 END,
           b.baseline,
           COALESCE((SELECT committed_microcents FROM rotated), b.baseline),
           CAST(%(journal_root)s AS bytea), CAST(%(checkpoint_id)s AS bigint)
    FROM b
    RETURNING certificate_id, committed_since_last_certificate
)
SELECT certificate_id, committed_since_last_certificate FROM stored

-- name: certificate_checkpoint
SELECT checkpoint_id FROM {schema}.certificates WHERE certificate_id = CAST(%(certificate_id)s AS bigint)

-- name: outside_latest
-- For checking a database against a certificate kept outside it (ledger/_certificate_check.py).
SELECT max(certificate_id) AS latest FROM {schema}.certificates

-- name: outside_certificate
SELECT certificate_id, snapshot_version, ledger_digest, journal_root, checkpoint_id,
       total_committed_microcents, tenant_count
FROM {schema}.certificates WHERE certificate_id = CAST(%(certificate_id)s AS bigint)

-- name: outside_chain
-- Each checkpoint row next to the journal entry it names (none for an empty chain),
-- in tenant byte order, as the journal root folds them.
SELECT c.tenant_id, c.journal_seq, c.journal_head, j.entry_hash
FROM {schema}.certificate_checkpoints AS c
LEFT JOIN {schema}.journal AS j ON j.tenant_id = c.tenant_id AND j.seq = c.journal_seq
WHERE c.checkpoint_id = CAST(%(checkpoint_id)s AS bigint)
ORDER BY convert_to(c.tenant_id, 'UTF8')
