-- Thresholds and the alerts outbox (docs/alerts.md, revision 0010). The
-- crossing itself is recorded by the trigger check_thresholds() on tenants, in
-- the transaction of the write that crosses: nothing here is on the spend path.

-- name: lock_tenant_for_thresholds
-- set_threshold and clear_threshold first lock the tenant row, in a statement
-- of their own, so that the next statement (a fresh snapshot under READ
-- COMMITTED) sees every threshold committed before it: two of them racing on
-- one tenant can never leave has_thresholds false while a threshold exists.
SELECT t.tenant_id FROM {schema}.tenants AS t
WHERE t.tenant_id = %(tenant_id)s
FOR NO KEY UPDATE

-- name: set_threshold
-- Insert or replace the threshold, then mark the tenant: that UPDATE fires the
-- trigger at the end of this statement, which sees the new threshold, so a
-- threshold that is already crossed fires at once.
WITH upsert AS (
    INSERT INTO {schema}.thresholds AS th (
        tenant_id, name, spent_microcents, spent_percent, remaining_below_microcents)
    VALUES (%(tenant_id)s, %(name)s, CAST(%(spent)s AS bigint), CAST(%(percent)s AS numeric),
            CAST(%(remaining_below)s AS bigint))
    ON CONFLICT (tenant_id, name) DO UPDATE
    SET spent_microcents = excluded.spent_microcents,
        spent_percent = excluded.spent_percent,
        remaining_below_microcents = excluded.remaining_below_microcents
    RETURNING (xmax = 0) AS created
), marked AS (
    UPDATE {schema}.tenants SET has_thresholds = true
    WHERE tenant_id = %(tenant_id)s
    RETURNING tenant_id
)
SELECT (SELECT created FROM upsert) AS created, (SELECT count(*) FROM marked) AS marked

-- name: clear_threshold
-- Delete one threshold; the tenant keeps has_thresholds only while another
-- remains. Its spend counter goes with the last one (the next first threshold
-- fills it again from the journal).
WITH gone AS (
    DELETE FROM {schema}.thresholds
    WHERE tenant_id = %(tenant_id)s AND name = %(name)s
    RETURNING tenant_id
), others AS (
    SELECT EXISTS (SELECT 1 FROM {schema}.thresholds
                   WHERE tenant_id = %(tenant_id)s AND name <> %(name)s) AS remain
), marked AS (
    UPDATE {schema}.tenants AS t SET has_thresholds = o.remain
    FROM others AS o
    WHERE t.tenant_id = %(tenant_id)s AND t.has_thresholds AND NOT o.remain
    RETURNING t.tenant_id
), uncounted AS (
    DELETE FROM {schema}.threshold_spend
    WHERE tenant_id = %(tenant_id)s AND NOT (SELECT remain FROM others)
)
SELECT (SELECT count(*) FROM gone) AS cleared

-- name: thresholds
SELECT tenant_id, name, spent_microcents, spent_percent, remaining_below_microcents, created_at
FROM {schema}.thresholds
WHERE tenant_id = %(tenant_id)s
ORDER BY name

-- name: claim_alerts
-- The next undelivered alerts whose lease is free, oldest first, for one
-- consumer: SKIP LOCKED so that concurrent consumers never take the same row
-- and never wait on each other; the lease (claimed_until) hands a claimed but
-- unacknowledged alert to the next claimer once it ends.
WITH due AS (
    SELECT a.alert_id FROM {schema}.alerts AS a
    WHERE a.delivered_at IS NULL AND (a.claimed_until IS NULL OR a.claimed_until <= now())
    ORDER BY a.alert_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.alerts AS a
SET claimed_until = now() + CAST(%(lease)s AS interval), claimed_by = %(consumer)s,
    attempts = a.attempts + 1
FROM due
WHERE a.alert_id = due.alert_id
RETURNING a.alert_id, a.tenant_id, a.threshold, a.period_index, a.kind, a.level_microcents,
          a.spent_microcents, a.initial_microcents, a.remaining_microcents,
          a.reserved_microcents, a.committed_microcents, a.journal_seq, a.created_at,
          a.attempts

-- name: ack_alerts
-- Delivered: never claimed again. Acknowledging twice changes nothing.
UPDATE {schema}.alerts
SET delivered_at = now(), claimed_until = NULL, last_error = NULL
WHERE alert_id = ANY(CAST(%(ids)s AS bigint[])) AND delivered_at IS NULL
RETURNING alert_id

-- name: release_alerts
-- Hand claimed alerts back before their lease ends (a handler failed), with
-- the failure, if any: the next claim takes them again, at once or after
-- %(retry_after)s (the webhook deliverer's backoff).
UPDATE {schema}.alerts
SET claimed_until = now() + CAST(%(retry_after)s AS interval),
    last_error = COALESCE(CAST(%(error)s AS text), last_error)
WHERE alert_id = ANY(CAST(%(ids)s AS bigint[])) AND delivered_at IS NULL
RETURNING alert_id

-- name: alerts_list
-- Alerts for `ledger alerts` and the dashboard: newest first, optionally one
-- tenant's, optionally only the undelivered.
SELECT alert_id, tenant_id, threshold, period_index, kind, level_microcents, spent_microcents,
       initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
       journal_seq, created_at, claimed_until, claimed_by, attempts, last_error, delivered_at
FROM {schema}.alerts
WHERE (CAST(%(tenant_id)s AS text) IS NULL OR tenant_id = %(tenant_id)s)
  AND (NOT CAST(%(undelivered)s AS boolean) OR delivered_at IS NULL)
ORDER BY alert_id DESC
LIMIT %(limit)s

-- name: alert_backlog
-- The telemetry gauges: undelivered alerts, and the age of the oldest one.
SELECT count(*) AS backlog,
       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS oldest_age_seconds
FROM {schema}.alerts
WHERE delivered_at IS NULL
