-- Idempotency keys: claim, read, record, prune (one transaction with the operation).

-- name: idempotency_claim
INSERT INTO {schema}.idempotency_keys (tenant_id, idempotency_key, request_hash)
VALUES (%(tenant_id)s, %(ikey)s, %(request_hash)s)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
RETURNING true AS claimed

-- name: idempotency_read
SELECT request_hash, outcome FROM {schema}.idempotency_keys
WHERE tenant_id = %(tenant_id)s AND idempotency_key = %(ikey)s

-- name: idempotency_record
UPDATE {schema}.idempotency_keys SET outcome = CAST(%(outcome)s AS jsonb)
WHERE tenant_id = %(tenant_id)s AND idempotency_key = %(ikey)s
RETURNING true AS recorded

-- name: idempotency_unclaim
-- Citus only (ledger/citus/keyed.py): a keyed call whose answer is not final takes back
-- the claim it made in the same transaction, then runs the three-statement path.
DELETE FROM {schema}.idempotency_keys
WHERE tenant_id = %(tenant_id)s AND idempotency_key = %(ikey)s AND outcome IS NULL
RETURNING true AS unclaimed

-- name: idempotency_prune
WITH pruned AS (
    DELETE FROM {schema}.idempotency_keys
    WHERE created_at < now() - CAST(%(age_us)s AS bigint) * interval '1 microsecond'
    RETURNING 1
)
SELECT count(*) AS pruned FROM pruned
