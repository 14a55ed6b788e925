-- Journal replay: ordered scans merged one tenant at a time (ledger/_verify.py).

-- name: verify_journal
-- A plain ordered scan of the primary key: no join, so no plan can go wrong
-- on a journal of millions of rows whose statistics are stale.
SELECT j.tenant_id, j.seq, j.op, j.reservation_id, j.amount_microcents,
       j.hold_microcents, j.initial_microcents, j.remaining_microcents,
       j.reserved_microcents, j.committed_microcents, j.max_reserved_microcents,
       j.idempotency_key, j.created_at, j.entry_hash, j.period_index, j.reason,
       j.entry_format
FROM {schema}.journal AS j
ORDER BY j.tenant_id, j.seq

-- name: verify_journal_since
-- From a checkpoint: each tenant's starting point is one primary-key probe.
SELECT j.tenant_id, j.seq, j.op, j.reservation_id, j.amount_microcents,
       j.hold_microcents, j.initial_microcents, j.remaining_microcents,
       j.reserved_microcents, j.committed_microcents, j.max_reserved_microcents,
       j.idempotency_key, j.created_at, j.entry_hash, j.period_index, j.reason,
       j.entry_format
FROM {schema}.journal AS j
WHERE j.seq > COALESCE((
    SELECT c.journal_seq FROM {schema}.certificate_checkpoints AS c
    WHERE c.tenant_id = j.tenant_id AND c.checkpoint_id = CAST(%(start_checkpoint)s AS bigint)
), 0)
ORDER BY j.tenant_id, j.seq

-- name: verify_tenants
SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
       committed_microcents, max_reserved_microcents, journal_seq, journal_head
FROM {schema}.tenants ORDER BY tenant_id

-- name: verify_holds
-- Every open hold at every level it reserved at: its tenant's, and (nested
-- budgets) each ancestor's in ancestor_ids, whose chains journaled it too.
SELECT tenant_id, reservation_id, amount_microcents FROM (
    SELECT tenant_id, reservation_id, amount_microcents FROM {schema}.reservations
    UNION ALL
    SELECT a.level, r.reservation_id, r.amount_microcents
    FROM {schema}.reservations AS r CROSS JOIN LATERAL unnest(r.ancestor_ids) AS a(level)
    WHERE r.ancestor_ids IS NOT NULL
) AS h
ORDER BY tenant_id, reservation_id

-- name: verify_detached
SELECT tenant_id, max_reserved_microcents, journal_seq, journal_head
FROM {schema}.detached_tenants ORDER BY tenant_id

-- name: verify_checkpoints
-- Checkpoints of certificates that were actually issued, per tenant in seq order.
SELECT c.tenant_id, k.certificate_id, c.journal_seq, c.journal_head
FROM {schema}.certificate_checkpoints AS c
JOIN {schema}.certificates AS k ON k.checkpoint_id = c.checkpoint_id
ORDER BY c.tenant_id, c.journal_seq, k.certificate_id

-- name: verify_start
SELECT c.tenant_id, c.journal_seq, c.journal_head, c.initial_microcents,
       c.remaining_microcents, c.reserved_microcents, c.committed_microcents,
       c.max_reserved_microcents, c.hold_ids, c.hold_amounts, c.period_index
FROM {schema}.certificate_checkpoints AS c
WHERE c.checkpoint_id = CAST(%(start_checkpoint)s AS bigint)
ORDER BY c.tenant_id

-- name: verify_roots
SELECT k.certificate_id, k.journal_root, c.tenant_id, c.journal_seq, c.journal_head
FROM {schema}.certificates AS k
LEFT JOIN {schema}.certificate_checkpoints AS c ON c.checkpoint_id = k.checkpoint_id
WHERE k.journal_root IS NOT NULL
ORDER BY k.certificate_id, c.tenant_id
