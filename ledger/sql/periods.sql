-- Recurring allowances (docs/periods.md). The renewal itself is the PL/pgSQL
-- function renew_tenant (revision 0006): it locks the tenant row and appends
-- one 'renew' entry per period that has begun, so racing callers renew each
-- period exactly once. The hot statements (spend.sql, tenants.sql,
-- expiry.sql) never apply to a tenant whose renews_at has passed: they answer
-- 'renew', the operation runs renew_tenant and then the statement again.

-- name: renew_tenant
SELECT {schema}.renew_tenant(CAST(%(tenant_id)s AS text)) AS renewed

-- name: renew_tenants
-- A batch found some of its (locked) tenants due: renew them, in id order.
SELECT count({schema}.renew_tenant(id)) AS renewed
FROM unnest(CAST(%(ids)b AS text[])) AS id

-- name: renew_due
-- The sweeper: up to %(limit)s due tenants, SKIP LOCKED so that many sweepers
-- (and lazy renewals) share the work instead of queueing on one row.
WITH due AS MATERIALIZED (
    SELECT tenant_id FROM {schema}.tenants
    WHERE renews_at <= now()
    ORDER BY renews_at, tenant_id
    LIMIT CAST(%(limit)s AS bigint)
    FOR NO KEY UPDATE SKIP LOCKED
), renewed AS MATERIALIZED (
    SELECT {schema}.renew_tenant(tenant_id) AS periods FROM due
)
SELECT count(*) FILTER (WHERE periods > 0) AS tenants, COALESCE(sum(periods), 0) AS periods
FROM renewed

-- name: set_allowance
SELECT status, period_index, remaining
FROM {schema}.set_allowance(
    CAST(%(tenant_id)s AS text), CAST(%(allowance)s AS bigint), CAST(%(months)s AS bigint),
    CAST(%(days)s AS bigint), CAST(%(anchor)s AS timestamptz), CAST(%(time_zone)s AS text),
    CAST(%(min_rollover)s AS bigint), CAST(%(max_rollover)s AS bigint), CAST(%(ikey)s AS text))

-- name: clear_allowance
SELECT status, period_index, remaining
FROM {schema}.clear_allowance(CAST(%(tenant_id)s AS text), CAST(%(ikey)s AS text))

-- name: period_spend
-- One period of one tenant: its bounds on the current schedule, what was
-- credited at its start, what holds opened in it have spent (commit entries
-- carry their hold's period; refunds carry their commit's and are netted,
-- docs/corrections.md) and what they still hold. Without %(period)s,
-- the period the clock is in (which may not be renewed yet: then nothing is
-- spent in it and the allowance shown is the one it will credit).
WITH t AS MATERIALIZED (
    SELECT t.tenant_id, t.period_index AS renewed_to, t.remaining_microcents,
           a.allowance_microcents, a.anchor, a.time_zone, a.period_months, a.period_days,
           a.min_rollover_microcents, a.max_rollover_microcents
    FROM {schema}.tenants AS t
    LEFT JOIN {schema}.allowances AS a ON a.tenant_id = t.tenant_id
    WHERE t.tenant_id = %(tenant_id)s
), k AS MATERIALIZED (
    SELECT t.*, {schema}.period_index_at(t.anchor, t.time_zone, t.period_months,
                                         t.period_days, now()) AS current
    FROM t WHERE t.allowance_microcents IS NOT NULL
), p AS MATERIALIZED (
    SELECT k.*, COALESCE(CAST(%(period)s AS bigint), k.current) AS period FROM k
)
SELECT t.tenant_id, t.allowance_microcents IS NOT NULL AS has_allowance, p.current, p.period,
       p.renewed_to, p.allowance_microcents AS allowance_now,
       p.min_rollover_microcents, p.max_rollover_microcents,
       {schema}.period_start(p.anchor, p.time_zone, p.period_months, p.period_days, p.period)
           AS starts_at,
       {schema}.period_start(p.anchor, p.time_zone, p.period_months, p.period_days, p.period + 1)
           AS ends_at,
       (SELECT COALESCE(sum(CASE j.op WHEN 'refund' THEN -j.amount_microcents
                                       ELSE j.amount_microcents END), 0)
        FROM {schema}.journal AS j
        WHERE j.tenant_id = p.tenant_id AND j.op IN ('commit', 'refund')
          AND j.period_index = p.period)
           AS spent,
       (SELECT j.amount_microcents FROM {schema}.journal AS j
        WHERE j.tenant_id = p.tenant_id AND j.op = 'renew' AND j.period_index = p.period
        ORDER BY j.seq DESC LIMIT 1) AS credited,
       (SELECT COALESCE(sum(r.amount_microcents), 0) FROM {schema}.reservations AS r
        WHERE r.tenant_id = p.tenant_id AND r.period_index = p.period) AS held,
       CASE WHEN p.period = p.renewed_to THEN t.remaining_microcents END AS remaining
FROM t LEFT JOIN p ON true
