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
-- The sweeper (renew_due, revision 0007): up to %(limit)s due tenants renewed,
-- SKIP LOCKED so that many sweepers (and lazy renewals) share the work. A tenant
-- that cannot be renewed is reported with its error and passed over.
SELECT tenant_id, periods, error FROM {schema}.renew_due(CAST(%(limit)s AS bigint))

-- name: try_renew_tenant
-- renew_tenant for a sweeper: the error, if any, as a value.
SELECT periods, error FROM {schema}.try_renew_tenant(CAST(%(tenant_id)s AS text))

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
-- spent in it and the allowance shown is the one it will credit). The tenant's
-- period k is period k - index_offset of its schedule (docs/periods.md). Bounds
-- beyond what the schedule arithmetic or a Python datetime can hold (years 1 to
-- 9999) are not computed: `representable` is false and the caller says so.
WITH t AS MATERIALIZED (
    SELECT t.tenant_id, t.period_index AS renewed_to, t.remaining_microcents,
           a.allowance_microcents, a.anchor, a.time_zone, a.period_months, a.period_days,
           a.min_rollover_microcents, a.max_rollover_microcents, a.index_offset
    FROM {schema}.tenants AS t
    LEFT JOIN {schema}.allowances AS a ON a.tenant_id = t.tenant_id
    WHERE t.tenant_id = %(tenant_id)s
), k AS MATERIALIZED (
    SELECT t.*, {schema}.period_index_at(t.anchor, t.time_zone, t.period_months,
                                         t.period_days, now()) + t.index_offset AS current
    FROM t WHERE t.allowance_microcents IS NOT NULL
), p AS MATERIALIZED (
    SELECT k.*, COALESCE(CAST(%(period)s AS bigint), k.current) AS period,
           abs(COALESCE(CAST(%(period)s AS numeric), k.current) - k.index_offset) + 1
               <= 3000000 / (k.period_months * 31 + k.period_days) AS computable
    FROM k
), b AS MATERIALIZED (
    SELECT p.*,
           CASE WHEN p.computable THEN {schema}.period_start(
               p.anchor, p.time_zone, p.period_months, p.period_days, p.period - p.index_offset)
           END AS starts_at,
           CASE WHEN p.computable THEN {schema}.period_start(
               p.anchor, p.time_zone, p.period_months, p.period_days,
               p.period - p.index_offset + 1)
           END AS ends_at
    FROM p
), r AS MATERIALIZED (
    SELECT b.*, COALESCE(b.starts_at >= TIMESTAMPTZ '0001-01-02 00:00:00+00'
                         AND b.ends_at < TIMESTAMPTZ '9999-12-30 00:00:00+00', false)
               AS representable
    FROM b
)
SELECT t.tenant_id, t.allowance_microcents IS NOT NULL AS has_allowance, r.current, r.period,
       r.renewed_to, r.allowance_microcents AS allowance_now,
       r.min_rollover_microcents, r.max_rollover_microcents, r.representable,
       CASE WHEN r.representable THEN r.starts_at END AS starts_at,
       CASE WHEN r.representable THEN r.ends_at END AS ends_at,
       (SELECT COALESCE(sum(CASE j.op WHEN 'refund' THEN -j.amount_microcents
                                       ELSE j.amount_microcents END), 0)
        FROM {schema}.journal AS j
        WHERE j.tenant_id = r.tenant_id AND j.op IN ('commit', 'refund')
          AND j.period_index = r.period)
           AS spent,
       (SELECT j.amount_microcents FROM {schema}.journal AS j
        WHERE j.tenant_id = r.tenant_id AND j.op = 'renew' AND j.period_index = r.period
        ORDER BY j.seq DESC LIMIT 1) AS credited,
       (SELECT COALESCE(sum(x.amount_microcents), 0) FROM {schema}.reservations AS x
        WHERE x.tenant_id = r.tenant_id AND x.period_index = r.period) AS held,
       CASE WHEN r.period = r.renewed_to THEN t.remaining_microcents END AS remaining
FROM t LEFT JOIN r ON true
