-- Observability: the gauges that need a query (ledger.telemetry.observe, run
-- only when metrics are collected) and `ledger stats`. Reads only.

-- name: stats_holds
-- Open holds, the lapsed ones among them (past their deadline, not yet
-- expired) and the age in seconds of the oldest (0 when none is open).
SELECT count(*) AS open_holds,
       count(*) FILTER (WHERE expires_at <= now()) AS lapsed_holds,
       CAST(COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS float8) AS oldest_age
FROM {schema}.reservations

-- name: stats_drift
-- Tenants whose row disagrees with their journal head: the entry at the row's
-- journal_seq must exist (once anything was journaled), carry the row's head
-- hash and balances, and be the last one. Always 0 unless the tables were
-- written around the ledger. One index probe per tenant (journal_pkey).
SELECT count(*) AS drifted
FROM {schema}.tenants AS t
LEFT JOIN {schema}.journal AS j ON j.tenant_id = t.tenant_id AND j.seq = t.journal_seq
WHERE (t.journal_seq > 0 AND (
        j.entry_hash IS DISTINCT FROM t.journal_head
        OR j.initial_microcents IS DISTINCT FROM t.initial_microcents
        OR j.remaining_microcents IS DISTINCT FROM t.remaining_microcents
        OR j.reserved_microcents IS DISTINCT FROM t.reserved_microcents
        OR j.committed_microcents IS DISTINCT FROM t.committed_microcents
        OR j.max_reserved_microcents IS DISTINCT FROM t.max_reserved_microcents))
   OR EXISTS (
        SELECT 1 FROM {schema}.journal AS n
        WHERE n.tenant_id = t.tenant_id AND n.seq > t.journal_seq)

-- name: stats
-- `ledger stats`: one statement, so one snapshot and one round trip. Refusals
-- come from the refusals table (revision 0006), counted per operation and
-- status over the last %(minutes)s minutes; spenders rank by lifetime spend;
-- renewals are due when a tenant's period has ended (renews_at <= now()).
SELECT h.open_holds, h.lapsed_holds, h.oldest_age,
    (SELECT COALESCE(json_agg(json_build_array(r.op, r.status, r.n)
                              ORDER BY r.n DESC, r.op, r.status), '[]')
     FROM (SELECT op, status, count(*) AS n
           FROM {schema}.refusals
           WHERE created_at > now() - make_interval(mins => CAST(%(minutes)s AS integer))
           GROUP BY op, status) AS r) AS refusals,
    (SELECT COALESCE(json_agg(json_build_array(s.tenant_id, s.committed_microcents)
                              ORDER BY s.committed_microcents DESC, s.tenant_id), '[]')
     FROM (SELECT tenant_id, committed_microcents
           FROM {schema}.tenants
           WHERE committed_microcents > 0
           ORDER BY committed_microcents DESC, tenant_id
           LIMIT %(top)s) AS s) AS top_spenders,
    (SELECT count(*) FROM {schema}.tenants WHERE renews_at <= now()) AS renewals_due,
    (SELECT COALESCE(json_agg(json_build_array(d.tenant_id, d.renews_at)
                              ORDER BY d.renews_at, d.tenant_id), '[]')
     FROM (SELECT tenant_id, renews_at
           FROM {schema}.tenants
           WHERE renews_at <= now()
           ORDER BY renews_at, tenant_id
           LIMIT %(top)s) AS d) AS renewals
FROM (
    SELECT count(*) AS open_holds,
           count(*) FILTER (WHERE expires_at <= now()) AS lapsed_holds,
           CAST(COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS float8) AS oldest_age
    FROM {schema}.reservations
) AS h
