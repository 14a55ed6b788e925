-- Batches: a constant handful of statements per batch, whatever its size.
--
-- Text and bytea arrays are bound in binary (%(name)b): psycopg's text format
-- quotes every element with a regular expression, which was most of a batch's
-- client time. bigint arrays arrive as array literals (%(name)s, built by
-- ledger._batch.int8_array with one str.join), cheaper still.
--
-- The lock and apply statements are planned for each call's arrays and never
-- prepared (the /* planned per call */ line): after five executions psycopg
-- prepares a statement, and PostgreSQL's generic plan for arrays of unknown
-- size was 2.4x slower once single cycles had left dead holds behind
-- (python -m bench.batch_profile --churn 50000: apply 132.7 -> 55.7 ms).
--
-- A batch locks everything it touches up front, in one fixed order (holds by
-- id, then tenants by id: the order single settlements lock in too), so
-- concurrent batches cannot deadlock, and reads what the decisions need. The
-- items are then decided in order, in Python, by the same rules the single
-- statements' probes apply (ledger/_batch.py), on the locked balances, which
-- no one else can change until the batch commits. That is exactly sequential
-- application. batch_apply then writes every tenant, hold and journal entry
-- with set-based statements. Keyed items, lapsed holds and nested items (a
-- tenant with a parent, a hold with ancestor levels: issue 24) take the
-- item-by-item path instead, inside the same lock.

-- name: batch_reserve_begin
-- Lock and read the batch's tenants, and say whether any has a lapsed hold
-- (then the batch goes item by item, expiring lazily as single reserves do).
-- A tenant that is due for renewal is renewed first (renew_tenants), then the
-- batch begins again: a batch never spends from an unrenewed period.
/* planned per call: never prepared (ledger._executor.PER_CALL) */
WITH locked AS MATERIALIZED (
    SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
           committed_microcents, max_reserved_microcents, journal_seq, journal_head,
           period_index, COALESCE(renews_at <= now(), false) AS due,
           parent_id IS NOT NULL AS nested
    FROM {schema}.tenants
    WHERE tenant_id = ANY(CAST(%(ids)b AS text[]))
    ORDER BY tenant_id
    FOR NO KEY UPDATE
)
SELECT now() AS at,
       EXISTS (SELECT 1 FROM {schema}.reservations AS r
               WHERE r.tenant_id IN (SELECT tenant_id FROM locked)
                 AND r.expires_at <= now()) AS lapsed,
       l.*
FROM (SELECT 1) AS one LEFT JOIN locked AS l ON true
ORDER BY l.tenant_id

-- name: batch_draw_ids
-- One reservation id per granted reserve, in item order, as the single
-- statement draws one for each reserve it grants (and none for a refusal).
SELECT ARRAY(
    SELECT nextval('{schema}.reservation_id_seq')
    FROM generate_series(1, CAST(%(count)s AS integer)) AS n
    ORDER BY n
) AS ids

-- name: batch_settle_begin
-- Lock the holds by id, then their tenants, and read both. A hold past its
-- deadline sends the batch item by item (the single settlement expires it).
/* planned per call: never prepared (ledger._executor.PER_CALL) */
WITH holds AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents, period_index AS hold_period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM {schema}.reservations
    WHERE reservation_id = ANY(CAST(%(rids)s AS bigint[]))
    ORDER BY reservation_id
    FOR UPDATE
), locked AS MATERIALIZED (
    SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
           committed_microcents, max_reserved_microcents, journal_seq, journal_head,
           period_index, COALESCE(renews_at <= now(), false) AS due
    FROM {schema}.tenants
    -- = ANY(ARRAY(...)), not IN (SELECT ...): an index scan for the batch's
    -- tenants, where IN chose a hash join over a scan of the whole table.
    WHERE tenant_id = ANY(ARRAY(SELECT DISTINCT tenant_id FROM holds))
    ORDER BY tenant_id
    FOR NO KEY UPDATE
)
SELECT now() AS at, h.reservation_id, h.amount_microcents, h.hold_period, h.lapsed, h.nested,
       l.*
FROM holds AS h JOIN locked AS l ON l.tenant_id = h.tenant_id
ORDER BY h.reservation_id

-- name: batch_apply
-- Write a decided batch: each touched tenant's final balances and chain head
-- (only if its chain is where the batch found it, which the lock guarantees),
-- the holds it opens and closes, and one journal entry per change, hashed in
-- order by the batch (ledger.journal.entry_hash in entry format 2, the same
-- bytes as journal_hash). The guard rolls everything back if any count is off.
/* planned per call: never prepared (ledger._executor.PER_CALL) */
WITH tenant_rows AS (
    SELECT *
    FROM unnest(CAST(%(t_id)b AS text[]), CAST(%(t_prev_seq)s AS bigint[]),
                CAST(%(t_seq)s AS bigint[]), CAST(%(t_head)b AS bytea[]),
                CAST(%(t_initial)s AS bigint[]),
                CAST(%(t_remaining)s AS bigint[]), CAST(%(t_reserved)s AS bigint[]),
                CAST(%(t_committed)s AS bigint[]))
         AS u(tenant_id, prev_seq, seq, head, initial, remaining, reserved, committed)
), applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = u.initial,
        remaining_microcents = u.remaining,
        reserved_microcents = u.reserved,
        committed_microcents = u.committed,
        journal_seq = u.seq,
        journal_head = u.head
    FROM tenant_rows AS u
    WHERE t.tenant_id = u.tenant_id AND t.journal_seq = u.prev_seq
      -- Redundant with the join, but lets the planner find the rows by index
      -- rather than hash the whole table (bench.batch_profile).
      AND t.tenant_id = ANY(CAST(%(t_id)b AS text[]))
    RETURNING t.tenant_id
), opened AS (
    INSERT INTO {schema}.reservations (tenant_id, reservation_id, amount_microcents, expires_at,
                                       period_index)
    SELECT o.tenant_id, o.reservation_id, o.amount,
           CASE WHEN o.ttl_us IS NOT NULL
                THEN now() + o.ttl_us * interval '1 microsecond'
                ELSE o.expires_at END,
           o.period_index
    FROM unnest(CAST(%(o_tenant)b AS text[]), CAST(%(o_id)s AS bigint[]),
                CAST(%(o_amount)s AS bigint[]), CAST(%(o_ttl_us)s AS bigint[]),
                CAST(%(o_expires_at)b AS timestamptz[]), CAST(%(o_period)s AS bigint[]))
         AS o(tenant_id, reservation_id, amount, ttl_us, expires_at, period_index)
    RETURNING 1
), closed AS (
    DELETE FROM {schema}.reservations AS r
    USING unnest(CAST(%(c_tenant)b AS text[]), CAST(%(c_id)s AS bigint[]))
          AS c(tenant_id, reservation_id)
    WHERE r.tenant_id = c.tenant_id AND r.reservation_id = c.reservation_id
      -- Redundant too: the holds by index, not a scan of a table that single
      -- reserve->commit cycles fill with dead rows between vacuums.
      AND r.reservation_id = ANY(CAST(%(c_id)s AS bigint[]))
    RETURNING 1
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index,
        entry_format)
    SELECT j.tenant_id, j.seq, j.op, j.reservation_id, j.amount, j.hold, j.initial,
           j.remaining, j.reserved, j.committed, j.cap, NULL, CAST(%(at)s AS timestamptz),
           j.entry_hash, j.period_index, CAST(2 AS smallint)
    FROM unnest(CAST(%(j_tenant)b AS text[]), CAST(%(j_seq)s AS bigint[]),
                CAST(%(j_op)b AS text[]), CAST(%(j_id)s AS bigint[]),
                CAST(%(j_amount)s AS bigint[]), CAST(%(j_hold)s AS bigint[]),
                CAST(%(j_initial)s AS bigint[]), CAST(%(j_remaining)s AS bigint[]),
                CAST(%(j_reserved)s AS bigint[]), CAST(%(j_committed)s AS bigint[]),
                CAST(%(j_cap)s AS bigint[]), CAST(%(j_hash)b AS bytea[]),
                CAST(%(j_period)s AS bigint[]))
         AS j(tenant_id, seq, op, reservation_id, amount, hold, initial, remaining, reserved,
              committed, cap, entry_hash, period_index)
    RETURNING 1
), refused AS (
    -- The refusal log (not chained: a refusal changes no balance).
    INSERT INTO {schema}.refusals (tenant_id, op, status, amount_microcents)
    SELECT * FROM unnest(CAST(%(r_tenant)b AS text[]), CAST(%(r_op)b AS text[]),
                         CAST(%(r_status)b AS text[]), CAST(%(r_amount)s AS bigint[]))
)
SELECT CASE WHEN (SELECT count(*) FROM applied) <> cardinality(CAST(%(t_id)b AS text[]))
              OR (SELECT count(*) FROM closed) <> cardinality(CAST(%(c_id)s AS bigint[]))
              OR (SELECT count(*) FROM opened) <> cardinality(CAST(%(o_id)s AS bigint[]))
              OR (SELECT count(*) FROM logged) <> cardinality(CAST(%(j_seq)s AS bigint[]))
            THEN {schema}.invariant_failed('a batch did not apply exactly as it was decided')
       END AS guard

-- name: expired_holds
-- Which of these holds were expired (the journal says so), for settlements
-- that found their hold gone.
SELECT DISTINCT ON (reservation_id) reservation_id, amount_microcents AS returned
FROM {schema}.journal
WHERE reservation_id = ANY(CAST(%(rids)s AS bigint[])) AND op = 'expire'
