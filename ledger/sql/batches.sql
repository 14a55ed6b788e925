-- Batches lock up front, then run the single operations' own statements (spend.sql).

-- name: batch_lock_tenants
-- A batch locks everything it will touch up front, in one fixed order (holds
-- by id, then tenants by id), so concurrent batches cannot deadlock, and then
-- applies its items one by one inside that lock, which is exactly sequential
-- application. Also tells whether any touched tenant has a lapsed hold (then
-- the batch takes the slow, item-by-item path that expires them lazily).
WITH locked AS MATERIALIZED (
    SELECT tenant_id FROM {schema}.tenants
    WHERE tenant_id = ANY(CAST(%(ids)s AS text[]))
    ORDER BY tenant_id
    FOR NO KEY UPDATE
)
SELECT (SELECT count(*) FROM locked) AS locked,
       EXISTS (SELECT 1 FROM {schema}.reservations AS r
               WHERE r.tenant_id IN (SELECT tenant_id FROM locked)
                 AND r.expires_at <= now()) AS lapsed

-- name: batch_lock_holds
-- As batch_lock_tenants, for settlements: the holds by id first, then their tenants.
WITH holds AS MATERIALIZED (
    SELECT tenant_id FROM {schema}.reservations
    WHERE reservation_id = ANY(CAST(%(rids)s AS bigint[]))
    ORDER BY reservation_id
    FOR UPDATE
), locked AS MATERIALIZED (
    SELECT tenant_id FROM {schema}.tenants
    WHERE tenant_id IN (SELECT tenant_id FROM holds)
    ORDER BY tenant_id
    FOR NO KEY UPDATE
)
SELECT (SELECT count(*) FROM locked) AS locked,
       EXISTS (SELECT 1 FROM {schema}.reservations AS r
               WHERE r.tenant_id IN (SELECT tenant_id FROM locked)
                 AND r.expires_at <= now()) AS lapsed

-- name: expired_holds
SELECT DISTINCT ON (reservation_id) reservation_id, amount_microcents AS returned
FROM {schema}.journal
WHERE reservation_id = ANY(CAST(%(rids)s AS bigint[])) AND op = 'expire'
