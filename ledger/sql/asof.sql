-- As-of queries (docs/asof.md): balances at a time T and spend between T1 and T2,
-- read from the journal.
--
-- "The state at T" is the state after the longest prefix of a tenant's chain
-- whose entries are all stamped (created_at) at or before T: the entries
-- before the first one stamped after T. Each entry records the tenant's full
-- balances, so the answer is the recorded balances of the entry just before
-- that cut (`seq - 1`), or of the chain head when no entry is stamped after T.
--
-- The cut is found by scanning the tenant's entries in seq order (the journal's
-- primary key) from a starting point: 0, or the newest row of asof_checkpoints
-- whose effective_at (the latest stamp of every entry up to its journal_seq)
-- is at or before T. Every entry up to such a row is stamped at or before T,
-- so the cut lies after it: the row shortens the scan and cannot change
-- where it ends.
--
-- Tenants are enumerated from tenants and detached_tenants, whose journal_seq
-- is the chain head in the same snapshot as the journal rows read.

-- name: asof_balance
-- One tenant: no row when the tenant has no journal; `removed` when the
-- tenant did not exist at T (its entry at the cut is a 'remove', or the cut
-- is before its first entry: seq 0).
WITH ids AS (
    SELECT tenant_id, journal_seq AS head FROM {schema}.tenants
    WHERE tenant_id = %(tenant_id)s
    UNION ALL
    SELECT tenant_id, journal_seq FROM {schema}.detached_tenants
    WHERE tenant_id = %(tenant_id)s
), cut AS MATERIALIZED (
    SELECT i.tenant_id, COALESCE((
        SELECT j.seq - 1 FROM {schema}.journal AS j
        WHERE j.tenant_id = i.tenant_id
          AND j.seq > COALESCE((
              SELECT m.journal_seq FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = i.tenant_id AND m.effective_at <= CAST(%(at)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1), 0)
          AND j.created_at > CAST(%(at)s AS timestamptz)
        ORDER BY j.seq LIMIT 1), i.head) AS seq
    FROM ids AS i
)
SELECT c.tenant_id, c.seq, j.op, j.created_at, j.initial_microcents, j.remaining_microcents,
       j.reserved_microcents, j.committed_microcents, j.max_reserved_microcents
FROM cut AS c
LEFT JOIN LATERAL (
    SELECT * FROM {schema}.journal AS e WHERE e.tenant_id = c.tenant_id AND e.seq = c.seq
    LIMIT 1  -- a primary key lookup per tenant, never a hash of the journal
) AS j ON true

-- name: asof_balances
-- Every tenant that existed at T, in tenant id (byte) order; read as a stream.
WITH ids AS (
    SELECT tenant_id, journal_seq AS head FROM {schema}.tenants
    UNION ALL
    SELECT tenant_id, journal_seq FROM {schema}.detached_tenants
), cut AS MATERIALIZED (
    SELECT i.tenant_id, COALESCE((
        SELECT j.seq - 1 FROM {schema}.journal AS j
        WHERE j.tenant_id = i.tenant_id
          AND j.seq > COALESCE((
              SELECT m.journal_seq FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = i.tenant_id AND m.effective_at <= CAST(%(at)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1), 0)
          AND j.created_at > CAST(%(at)s AS timestamptz)
        ORDER BY j.seq LIMIT 1), i.head) AS seq
    FROM ids AS i
)
SELECT c.tenant_id, c.seq, j.op, j.created_at, j.initial_microcents, j.remaining_microcents,
       j.reserved_microcents, j.committed_microcents, j.max_reserved_microcents
FROM cut AS c
CROSS JOIN LATERAL (
    SELECT * FROM {schema}.journal AS e WHERE e.tenant_id = c.tenant_id AND e.seq = c.seq
    LIMIT 1  -- a primary key lookup per tenant, never a hash of the journal
) AS j
WHERE j.op <> 'remove'
ORDER BY c.tenant_id

-- name: asof_spend
-- One tenant's spend in (T1, T2]: the commit and refund entries after the cut
-- at T1 up to the cut at T2. No row when the tenant has no journal.
--
-- Each checkpoint row also carries running totals (commit and refund counts
-- and sums over every entry up to its seq), so with a checkpoint between the
-- two cuts the window is totals(cut2) - totals(cut1), each read as the
-- totals of the newest usable checkpoint plus the entries from it to the cut:
-- only entries the cut searches read anyway. Without one (`via` false) the
-- window's entries are summed directly. Either way the same entries count.
WITH ids AS (
    SELECT tenant_id, journal_seq AS head FROM {schema}.tenants
    WHERE tenant_id = %(tenant_id)s
    UNION ALL
    SELECT tenant_id, journal_seq FROM {schema}.detached_tenants
    WHERE tenant_id = %(tenant_id)s
), lo AS MATERIALIZED (
    SELECT i.tenant_id, i.head, m.*, COALESCE((
        SELECT j.seq - 1 FROM {schema}.journal AS j
        WHERE j.tenant_id = i.tenant_id AND j.seq > m.seq
          AND j.created_at > CAST(%(start)s AS timestamptz)
        ORDER BY j.seq LIMIT 1), i.head) AS cut
    FROM ids AS i
    CROSS JOIN LATERAL (
        SELECT COALESCE(max(c.journal_seq), 0) AS seq, COALESCE(max(c.commits), 0) AS commits,
               COALESCE(max(c.committed_microcents), 0) AS committed,
               COALESCE(max(c.refunds), 0) AS refunds,
               COALESCE(max(c.refunded_microcents), 0) AS refunded
        FROM (SELECT * FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = i.tenant_id
                AND m.effective_at <= CAST(%(start)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1) AS c
    ) AS m
), hi AS MATERIALIZED (
    SELECT l.tenant_id, l.cut AS lo, l.seq AS m1_seq, l.commits AS m1_commits,
           l.committed AS m1_committed, l.refunds AS m1_refunds, l.refunded AS m1_refunded,
           m.seq AS m2_seq, m.commits AS m2_commits, m.committed AS m2_committed,
           m.refunds AS m2_refunds, m.refunded AS m2_refunded, m.seq > l.cut AS via,
           COALESCE((
               SELECT j.seq - 1 FROM {schema}.journal AS j
               WHERE j.tenant_id = l.tenant_id AND j.seq > GREATEST(l.cut, m.seq)
                 AND j.created_at > CAST(%(end)s AS timestamptz)
               ORDER BY j.seq LIMIT 1), l.head) AS hi
    FROM lo AS l
    CROSS JOIN LATERAL (
        SELECT COALESCE(max(c.journal_seq), 0) AS seq, COALESCE(max(c.commits), 0) AS commits,
               COALESCE(max(c.committed_microcents), 0) AS committed,
               COALESCE(max(c.refunds), 0) AS refunds,
               COALESCE(max(c.refunded_microcents), 0) AS refunded
        FROM (SELECT * FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = l.tenant_id
                AND m.effective_at <= CAST(%(end)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1) AS c
    ) AS m
), totals AS (
    SELECT h.tenant_id, h.lo, h.hi,
           CASE WHEN h.via THEN h.m2_commits - h.m1_commits ELSE 0 END
               + b.commits - a.commits AS commits,
           CASE WHEN h.via THEN h.m2_committed - h.m1_committed ELSE 0 END
               + b.committed - a.committed AS committed,
           CASE WHEN h.via THEN h.m2_refunds - h.m1_refunds ELSE 0 END
               + b.refunds - a.refunds AS refunds,
           CASE WHEN h.via THEN h.m2_refunded - h.m1_refunded ELSE 0 END
               + b.refunded - a.refunded AS refunded
    FROM hi AS h
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE j.op = 'commit') AS commits,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'commit'), 0) AS committed,
               count(*) FILTER (WHERE j.op = 'refund') AS refunds,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'refund'), 0) AS refunded
        FROM {schema}.journal AS j
        WHERE j.tenant_id = h.tenant_id AND j.seq <= h.lo
          AND j.seq > CASE WHEN h.via THEN h.m1_seq ELSE h.lo END
    ) AS a
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE j.op = 'commit') AS commits,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'commit'), 0) AS committed,
               count(*) FILTER (WHERE j.op = 'refund') AS refunds,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'refund'), 0) AS refunded
        FROM {schema}.journal AS j
        WHERE j.tenant_id = h.tenant_id AND j.seq <= h.hi
          AND j.seq > CASE WHEN h.via THEN h.m2_seq ELSE h.lo END
    ) AS b
)
SELECT tenant_id, lo, hi, commits, committed, refunds, refunded FROM totals

-- name: asof_spends
-- Every tenant with a commit or refund in (T1, T2], in tenant id order; read as a stream.
WITH ids AS (
    SELECT tenant_id, journal_seq AS head FROM {schema}.tenants
    UNION ALL
    SELECT tenant_id, journal_seq FROM {schema}.detached_tenants
), lo AS MATERIALIZED (
    SELECT i.tenant_id, i.head, m.*, COALESCE((
        SELECT j.seq - 1 FROM {schema}.journal AS j
        WHERE j.tenant_id = i.tenant_id AND j.seq > m.seq
          AND j.created_at > CAST(%(start)s AS timestamptz)
        ORDER BY j.seq LIMIT 1), i.head) AS cut
    FROM ids AS i
    CROSS JOIN LATERAL (
        SELECT COALESCE(max(c.journal_seq), 0) AS seq, COALESCE(max(c.commits), 0) AS commits,
               COALESCE(max(c.committed_microcents), 0) AS committed,
               COALESCE(max(c.refunds), 0) AS refunds,
               COALESCE(max(c.refunded_microcents), 0) AS refunded
        FROM (SELECT * FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = i.tenant_id
                AND m.effective_at <= CAST(%(start)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1) AS c
    ) AS m
), hi AS MATERIALIZED (
    SELECT l.tenant_id, l.cut AS lo, l.seq AS m1_seq, l.commits AS m1_commits,
           l.committed AS m1_committed, l.refunds AS m1_refunds, l.refunded AS m1_refunded,
           m.seq AS m2_seq, m.commits AS m2_commits, m.committed AS m2_committed,
           m.refunds AS m2_refunds, m.refunded AS m2_refunded, m.seq > l.cut AS via,
           COALESCE((
               SELECT j.seq - 1 FROM {schema}.journal AS j
               WHERE j.tenant_id = l.tenant_id AND j.seq > GREATEST(l.cut, m.seq)
                 AND j.created_at > CAST(%(end)s AS timestamptz)
               ORDER BY j.seq LIMIT 1), l.head) AS hi
    FROM lo AS l
    CROSS JOIN LATERAL (
        SELECT COALESCE(max(c.journal_seq), 0) AS seq, COALESCE(max(c.commits), 0) AS commits,
               COALESCE(max(c.committed_microcents), 0) AS committed,
               COALESCE(max(c.refunds), 0) AS refunds,
               COALESCE(max(c.refunded_microcents), 0) AS refunded
        FROM (SELECT * FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = l.tenant_id
                AND m.effective_at <= CAST(%(end)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1) AS c
    ) AS m
), totals AS (
    SELECT h.tenant_id, h.lo, h.hi,
           CASE WHEN h.via THEN h.m2_commits - h.m1_commits ELSE 0 END
               + b.commits - a.commits AS commits,
           CASE WHEN h.via THEN h.m2_committed - h.m1_committed ELSE 0 END
               + b.committed - a.committed AS committed,
           CASE WHEN h.via THEN h.m2_refunds - h.m1_refunds ELSE 0 END
               + b.refunds - a.refunds AS refunds,
           CASE WHEN h.via THEN h.m2_refunded - h.m1_refunded ELSE 0 END
               + b.refunded - a.refunded AS refunded
    FROM hi AS h
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE j.op = 'commit') AS commits,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'commit'), 0) AS committed,
               count(*) FILTER (WHERE j.op = 'refund') AS refunds,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'refund'), 0) AS refunded
        FROM {schema}.journal AS j
        WHERE j.tenant_id = h.tenant_id AND j.seq <= h.lo
          AND j.seq > CASE WHEN h.via THEN h.m1_seq ELSE h.lo END
    ) AS a
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE j.op = 'commit') AS commits,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'commit'), 0) AS committed,
               count(*) FILTER (WHERE j.op = 'refund') AS refunds,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'refund'), 0) AS refunded
        FROM {schema}.journal AS j
        WHERE j.tenant_id = h.tenant_id AND j.seq <= h.hi
          AND j.seq > CASE WHEN h.via THEN h.m2_seq ELSE h.lo END
    ) AS b
)
SELECT tenant_id, lo, hi, commits, committed, refunds, refunded FROM totals
WHERE commits + refunds > 0
ORDER BY tenant_id

-- name: asof_checkpoint
-- One row per tenant with entries after its newest checkpoint: the chain head,
-- the latest stamp of every entry up to it, and running commit and refund
-- totals up to it (only the new entries are read). The statement is the
-- SECURITY DEFINER function asof_checkpoint() (revision 0007): every value
-- is computed from the journal by the function itself, and only the owner may
-- write asof_checkpoints, so no role can plant a row the answers above trust.
SELECT tenants, entries FROM {schema}.asof_checkpoint()
