-- Corrections: refunds of a commit and signed adjustments of a budget
-- (docs/corrections.md). Both append their journal entry with a reason.

-- name: refund
-- The function (migration 0006, refund_commit) locks the tenant row, then sums
-- the commit's earlier refunds, then applies: a single CTE statement would sum
-- from a snapshot taken before it waited for the lock, and two concurrent
-- refunds could together exceed the commit.
SELECT r.status, r.remaining, r.committed, r.left_microcents
FROM {schema}.refund_commit(
    %(tenant_id)s, CAST(%(reservation_id)s AS bigint), CAST(%(amount)s AS bigint),
    CAST(%(reason)s AS text), CAST(%(ikey)s AS text)) AS r

-- name: nested_refund
-- Every refund on one server (revision 0011, nested_refund): a commit that
-- settled through a tree is refunded at exactly the levels it settled at (its
-- commit entries), locked in tenant id order; a flat commit goes to
-- refund_commit (the `refund` statement's function) unchanged.
SELECT r.status, r.remaining, r.committed, r.left_microcents
FROM {schema}.nested_refund(
    %(tenant_id)s, CAST(%(reservation_id)s AS bigint), CAST(%(amount)s AS bigint),
    CAST(%(reason)s AS text), CAST(%(ikey)s AS text)) AS r

-- name: adjust
-- A signed change of initial and remaining, as top_up (tenants.sql) with a
-- sign. The bounds use greatest()/least() so that no expression can overflow
-- for either sign of the amount (PostgreSQL may fold constant expressions even
-- in a CASE branch that would not be taken): a positive amount must fit under
-- 2^63 - 1, a negative one must leave remaining >= 0 (reserved and committed
-- are never touched). The entry carries the reason; an adjustment belongs to
-- no budget period, so its period_index is NULL. A tenant due for renewal is
-- renewed first (probe answers 'renew'; docs/periods.md), so an adjustment
-- always lands in the period it was made in.
WITH applied AS (
    UPDATE {schema}.tenants AS t
    SET initial_microcents = t.initial_microcents + CAST(%(amount)s AS bigint),
        remaining_microcents = t.remaining_microcents + CAST(%(amount)s AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = {schema}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'adjust', NULL, CAST(%(amount)s AS bigint), NULL,
            t.initial_microcents + CAST(%(amount)s AS bigint), t.remaining_microcents + CAST(%(amount)s AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST(%(ikey)s AS text),
            NULL, CAST(%(reason)s AS text))
    WHERE t.tenant_id = %(tenant_id)s
      AND t.initial_microcents <= 9223372036854775807 - greatest(CAST(%(amount)s AS bigint), 0)
      AND t.remaining_microcents + least(CAST(%(amount)s AS bigint), 0) >= 0
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO {schema}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index, reason)
    SELECT j.tenant_id, j.journal_seq, 'adjust', NULL, CAST(%(amount)s AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(%(ikey)s AS text), now(),
           j.journal_head, NULL, CAST(%(reason)s AS text)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - greatest(CAST(%(amount)s AS bigint), 0)
            THEN 'overflow'
        WHEN remaining_microcents + least(CAST(%(amount)s AS bigint), 0) < 0 THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM {schema}.tenants
    WHERE tenant_id = %(tenant_id)s AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'adjusted' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, p.remaining, p.tenant_id FROM probe AS p
