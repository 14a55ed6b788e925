-- The dashboard's statements. Every one reads the audit views and functions
-- (docs/audit.md) and nothing else, so they run as the auditor role, which
-- can read nothing else: ledger/dashboard/access.py checks that role before
-- the server starts, and every page runs in one REPEATABLE READ READ ONLY
-- transaction, so all its numbers come from one snapshot. The refusals come
-- from the view refusal_log (revision 0008). Same {schema} and %(param)s
-- conventions as ledger/sql.

-- name: totals
-- Ledger-wide sums as numeric (exact; they may exceed 64 bits) and counts.
SELECT count(*) AS tenants,
       COALESCE(sum(initial_microcents), 0) AS initial,
       COALESCE(sum(remaining_microcents), 0) AS remaining,
       COALESCE(sum(reserved_microcents), 0) AS reserved,
       COALESCE(sum(committed_microcents), 0) AS committed,
       COALESCE(sum(journal_entries), 0) AS journal_entries
FROM {schema}.balances

-- name: violations
-- Tenants that do not balance, with how far off they are; the first few, and how many.
SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
       committed_microcents, delta_microcents, count(*) OVER () AS total
FROM {schema}.conservation_violations
ORDER BY tenant_id
LIMIT %(limit)s

-- name: reserved_mismatches
-- Tenants whose reserved total differs from the sum of their open holds.
SELECT tenant_id, reserved_microcents, open_holds_microcents, difference_microcents,
       count(*) OVER () AS total
FROM {schema}.reserved_mismatches
ORDER BY tenant_id
LIMIT %(limit)s

-- name: journal_checks
-- What the auditor can check of the journal from the views: every tenant row
-- equals the entry at its journal head (balances_at at 'infinity' reads that
-- entry), the tenant has exactly that many entries, and none past the head.
-- The full replay of the hash chains needs the tables: `ledger verify`.
WITH lengths AS MATERIALIZED (
    SELECT tenant_id, count(*) AS entries, max(seq) AS last_seq
    FROM {schema}.journal_entries
    GROUP BY tenant_id
), heads AS MATERIALIZED (
    SELECT * FROM {schema}.balances_at('infinity')
), differing AS (
    SELECT b.tenant_id, b.journal_entries AS head_seq,
           COALESCE(l.entries, 0) AS entries, COALESCE(l.last_seq, 0) AS last_seq,
           h.tenant_id IS NOT NULL AS head_found,
           h.tenant_id IS NOT NULL AND (
               h.initial_microcents, h.remaining_microcents, h.reserved_microcents,
               h.committed_microcents, h.max_reserved_microcents
           ) IS DISTINCT FROM (
               b.initial_microcents, b.remaining_microcents, b.reserved_microcents,
               b.committed_microcents, b.max_reserved_microcents
           ) AS balances_differ
    FROM {schema}.balances AS b
    LEFT JOIN lengths AS l USING (tenant_id)
    LEFT JOIN heads AS h USING (tenant_id)
)
SELECT (SELECT COALESCE(sum(entries), 0) FROM lengths) AS entries,
       (SELECT count(*) FROM differing
        WHERE entries <> head_seq OR last_seq <> head_seq OR balances_differ
           OR (head_seq > 0 AND NOT head_found)) AS differing,
       (SELECT COALESCE(json_agg(json_build_array(d.tenant_id, d.head_seq, d.entries, d.last_seq,
                                                  d.head_found, d.balances_differ)
                                 ORDER BY d.tenant_id), '[]')
        FROM (SELECT * FROM differing
              WHERE entries <> head_seq OR last_seq <> head_seq OR balances_differ
                 OR (head_seq > 0 AND NOT head_found)
              ORDER BY tenant_id
              LIMIT %(limit)s) AS d) AS first

-- name: latest_certificate
SELECT certificate_id, created_at, snapshot_version, tenant_count, active_reservations,
       conservation_balanced, aggregate_totals_representable, total_initial_microcents,
       total_committed_microcents, committed_since_last_certificate, journal_root_hex,
       count(*) OVER () AS total
FROM {schema}.certificate_history
ORDER BY certificate_id DESC
LIMIT 1

-- name: holds
-- Open holds, the lapsed ones among them (past their deadline, not yet expired),
-- what they hold, and the oldest one's age in whole seconds.
SELECT count(*) AS open_holds,
       count(*) FILTER (WHERE lapsed) AS lapsed_holds,
       COALESCE(sum(amount_microcents), 0) AS held,
       COALESCE(sum(amount_microcents) FILTER (WHERE lapsed), 0) AS lapsed_held,
       CAST(COALESCE(floor(EXTRACT(EPOCH FROM max(age))), 0) AS bigint) AS oldest_age
FROM {schema}.open_holds

-- name: lapsed_holds
SELECT tenant_id, reservation_id, amount_microcents, created_at, expires_at
FROM {schema}.open_holds
WHERE lapsed
ORDER BY expires_at, reservation_id
LIMIT %(limit)s

-- name: top_spenders
-- Largest lifetime spend first (ties by id), as `ledger stats` ranks them.
SELECT tenant_id, committed_microcents, initial_microcents
FROM {schema}.balances
WHERE committed_microcents > 0
ORDER BY committed_microcents DESC, tenant_id
LIMIT %(limit)s

-- name: refusals_by_status
-- Refused spends of the window (created_at after now() minus the window), as
-- `ledger stats` counts them.
SELECT op, status, count(*) AS n
FROM {schema}.refusal_log
WHERE created_at > now() - make_interval(hours => CAST(%(hours)s AS integer))
GROUP BY op, status
ORDER BY n DESC, op, status

-- name: refusals_over_time
-- The same refusals in %(buckets)s equal slices of the window, oldest first;
-- slice k holds the stamps in (start + k * width, start + (k + 1) * width].
WITH w AS (
    SELECT now() - make_interval(hours => CAST(%(hours)s AS integer)) AS start,
           CAST(%(hours)s AS integer) * 3600 / CAST(%(buckets)s AS integer) AS width
), slices AS (
    SELECT k, w.start + make_interval(secs => k * w.width) AS starts_at,
           w.start + make_interval(secs => (k + 1) * w.width) AS ends_at
    FROM w, generate_series(0, CAST(%(buckets)s AS integer) - 1) AS k
), counted AS (
    SELECT LEAST(GREATEST(CAST(ceil(EXTRACT(EPOCH FROM r.created_at - w.start) / w.width)
                               AS integer) - 1, 0),
                 CAST(%(buckets)s AS integer) - 1) AS k,
           count(*) AS n
    FROM {schema}.refusal_log AS r, w
    WHERE r.created_at > w.start
    GROUP BY 1
)
SELECT s.k, s.starts_at, s.ends_at, COALESCE(c.n, 0) AS n
FROM slices AS s LEFT JOIN counted AS c USING (k)
ORDER BY s.k

-- name: tenant_count
SELECT count(*) AS n
FROM {schema}.balances
WHERE starts_with(tenant_id, %(prefix)s)

-- name: tenant_page
-- One page of tenants in id (byte) order, optionally those whose id starts with a prefix.
SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
       committed_microcents, max_reserved_microcents, open_holds, balanced, journal_entries
FROM {schema}.balances
WHERE starts_with(tenant_id, %(prefix)s)
ORDER BY tenant_id
LIMIT %(limit)s OFFSET %(offset)s

-- name: tenant
SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
       committed_microcents, max_reserved_microcents, open_holds, balanced, journal_entries,
       created_at
FROM {schema}.balances
WHERE tenant_id = %(tenant_id)s

-- name: tenant_holds
-- A tenant's open holds, oldest first, and how many there are.
SELECT reservation_id, amount_microcents, created_at, expires_at, lapsed,
       CAST(floor(EXTRACT(EPOCH FROM age)) AS bigint) AS age,
       count(*) OVER () AS total
FROM {schema}.open_holds
WHERE tenant_id = %(tenant_id)s
ORDER BY created_at, reservation_id
LIMIT %(limit)s

-- name: tenant_journal
-- One page of a tenant's journal, newest entry first.
SELECT seq, op, reservation_id, amount_microcents, hold_microcents, initial_microcents,
       remaining_microcents, reserved_microcents, committed_microcents,
       max_reserved_microcents, remaining_change_microcents, created_at
FROM {schema}.journal_entries
WHERE tenant_id = %(tenant_id)s
ORDER BY seq DESC
LIMIT %(limit)s OFFSET %(offset)s

-- name: tenant_spend
-- Spend (commits minus refunds) per calendar period, UTC, the last %(periods)s
-- periods up to the current one. An entry counts in the period (T1, T2] that
-- holds the latest stamp of its chain up to it: exactly what spend_between(T1,
-- T2) counts (docs/asof.md, "the longest prefix stamped at or before T").
WITH e AS (
    SELECT op, amount_microcents AS amount,
           max(created_at) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS stamp
    FROM {schema}.journal_entries
    WHERE tenant_id = %(tenant_id)s
), periods AS (
    SELECT p AS starts_at, p + CAST(%(step)s AS interval) AS ends_at
    FROM generate_series(
        date_trunc(%(unit)s, now(), 'UTC')
            - CAST(%(step)s AS interval) * (CAST(%(periods)s AS integer) - 1),
        date_trunc(%(unit)s, now(), 'UTC'),
        CAST(%(step)s AS interval)) AS p
)
SELECT p.starts_at, p.ends_at,
       COALESCE(sum(e.amount) FILTER (WHERE e.op = 'commit'), 0) AS committed,
       COALESCE(sum(e.amount) FILTER (WHERE e.op = 'refund'), 0) AS refunded,
       count(e.op) FILTER (WHERE e.op = 'commit') AS commits,
       count(e.op) FILTER (WHERE e.op = 'refund') AS refunds
FROM periods AS p
LEFT JOIN e ON e.op IN ('commit', 'refund') AND e.stamp > p.starts_at AND e.stamp <= p.ends_at
GROUP BY p.starts_at, p.ends_at
ORDER BY p.starts_at
