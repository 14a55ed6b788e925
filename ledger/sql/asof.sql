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
-- at T1 up to the cut at T2. The scan for the second cut starts at the first
-- (every entry up to it is stamped at or before T1 <= T2) or at a later
-- checkpoint. No row when the tenant has no journal.
WITH ids AS (
    SELECT tenant_id, journal_seq AS head FROM {schema}.tenants
    WHERE tenant_id = %(tenant_id)s
    UNION ALL
    SELECT tenant_id, journal_seq FROM {schema}.detached_tenants
    WHERE tenant_id = %(tenant_id)s
), lo AS MATERIALIZED (
    SELECT i.tenant_id, i.head, COALESCE((
        SELECT j.seq - 1 FROM {schema}.journal AS j
        WHERE j.tenant_id = i.tenant_id
          AND j.seq > COALESCE((
              SELECT m.journal_seq FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = i.tenant_id AND m.effective_at <= CAST(%(start)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1), 0)
          AND j.created_at > CAST(%(start)s AS timestamptz)
        ORDER BY j.seq LIMIT 1), i.head) AS seq
    FROM ids AS i
), window_ AS MATERIALIZED (
    SELECT l.tenant_id, l.seq AS lo, COALESCE((
        SELECT j.seq - 1 FROM {schema}.journal AS j
        WHERE j.tenant_id = l.tenant_id
          AND j.seq > GREATEST(l.seq, COALESCE((
              SELECT m.journal_seq FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = l.tenant_id AND m.effective_at <= CAST(%(end)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1), 0))
          AND j.created_at > CAST(%(end)s AS timestamptz)
        ORDER BY j.seq LIMIT 1), l.head) AS hi
    FROM lo AS l
)
SELECT w.tenant_id, w.lo, w.hi, s.committed, s.refunded, s.commits, s.refunds
FROM window_ AS w
CROSS JOIN LATERAL (
    SELECT COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'commit'), 0) AS committed,
           COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'refund'), 0) AS refunded,
           count(*) FILTER (WHERE j.op = 'commit') AS commits,
           count(*) FILTER (WHERE j.op = 'refund') AS refunds
    FROM {schema}.journal AS j
    WHERE j.tenant_id = w.tenant_id AND j.seq > w.lo AND j.seq <= w.hi
) AS s

-- name: asof_spends
-- Every tenant with a commit or refund in (T1, T2], in tenant id order; read as a stream.
WITH ids AS (
    SELECT tenant_id, journal_seq AS head FROM {schema}.tenants
    UNION ALL
    SELECT tenant_id, journal_seq FROM {schema}.detached_tenants
), lo AS MATERIALIZED (
    SELECT i.tenant_id, i.head, COALESCE((
        SELECT j.seq - 1 FROM {schema}.journal AS j
        WHERE j.tenant_id = i.tenant_id
          AND j.seq > COALESCE((
              SELECT m.journal_seq FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = i.tenant_id AND m.effective_at <= CAST(%(start)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1), 0)
          AND j.created_at > CAST(%(start)s AS timestamptz)
        ORDER BY j.seq LIMIT 1), i.head) AS seq
    FROM ids AS i
), window_ AS MATERIALIZED (
    SELECT l.tenant_id, l.seq AS lo, COALESCE((
        SELECT j.seq - 1 FROM {schema}.journal AS j
        WHERE j.tenant_id = l.tenant_id
          AND j.seq > GREATEST(l.seq, COALESCE((
              SELECT m.journal_seq FROM {schema}.asof_checkpoints AS m
              WHERE m.tenant_id = l.tenant_id AND m.effective_at <= CAST(%(end)s AS timestamptz)
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1), 0))
          AND j.created_at > CAST(%(end)s AS timestamptz)
        ORDER BY j.seq LIMIT 1), l.head) AS hi
    FROM lo AS l
)
SELECT w.tenant_id, w.lo, w.hi, s.committed, s.refunded, s.commits, s.refunds
FROM window_ AS w
CROSS JOIN LATERAL (
    SELECT COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'commit'), 0) AS committed,
           COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'refund'), 0) AS refunded,
           count(*) FILTER (WHERE j.op = 'commit') AS commits,
           count(*) FILTER (WHERE j.op = 'refund') AS refunds
    FROM {schema}.journal AS j
    WHERE j.tenant_id = w.tenant_id AND j.seq > w.lo AND j.seq <= w.hi
) AS s
WHERE s.commits + s.refunds > 0
ORDER BY w.tenant_id

-- name: asof_checkpoint
-- One row per tenant with entries after its newest checkpoint: the chain head
-- and the latest stamp of every entry up to it (the previous checkpoint's
-- effective_at covers the entries before it, so only the new ones are read,
-- through the primary key). One statement, so heads and entries come from one
-- snapshot; concurrent checkpointers insert identical rows (DO NOTHING).
WITH ids AS (
    SELECT tenant_id, journal_seq AS head FROM {schema}.tenants
    UNION ALL
    SELECT tenant_id, journal_seq FROM {schema}.detached_tenants
), fresh AS (
    SELECT i.tenant_id, i.head, p.journal_seq AS prev_seq, p.effective_at AS prev_at
    FROM ids AS i
    LEFT JOIN LATERAL (
        SELECT m.journal_seq, m.effective_at FROM {schema}.asof_checkpoints AS m
        WHERE m.tenant_id = i.tenant_id
        ORDER BY m.journal_seq DESC LIMIT 1
    ) AS p ON true
    WHERE i.head > COALESCE(p.journal_seq, 0)
), marked AS (
    INSERT INTO {schema}.asof_checkpoints (tenant_id, journal_seq, effective_at)
    SELECT f.tenant_id, f.head, GREATEST(f.prev_at, (
        SELECT max(j.created_at) FROM {schema}.journal AS j
        WHERE j.tenant_id = f.tenant_id
          AND j.seq > COALESCE(f.prev_seq, 0) AND j.seq <= f.head))
    FROM fresh AS f
    ON CONFLICT (tenant_id, journal_seq) DO NOTHING
    RETURNING tenant_id
)
SELECT (SELECT count(*) FROM marked) AS tenants,
       (SELECT COALESCE(sum(head - COALESCE(prev_seq, 0)), 0) FROM fresh) AS entries
