-- Statements only a distributed (Citus) schema runs: ledger/citus/, docs/scale-out.md.
--
-- On Citus a locking read must filter by the tenant (the distribution column),
-- so what plain PostgreSQL does in one statement by reservation id alone
-- (commit/release without tenant_id, the expiry sweeper) is split there into
-- a non-locking read that finds the tenant, then the tenant-keyed statement,
-- which locks and re-checks everything itself.

-- name: routed_functions
-- The schema's routed functions and its shard lock (ledger distribute made them);
-- none on plain PostgreSQL or an undistributed schema. One catalog read, found once.
SELECT p.proname AS name
FROM pg_catalog.pg_proc AS p
WHERE p.pronamespace = (SELECT c.relnamespace FROM pg_catalog.pg_class AS c
                        WHERE c.oid = to_regclass('{schema}.tenants'))
  AND (starts_with(p.proname, 'routed_') OR p.proname = 'lock_tenant_shard')

-- name: hold_tenant
-- Whose hold is this? Without a lock (Citus refuses FOR UPDATE across shards): a
-- hold's tenant never changes (holds are inserted and deleted, never updated), so
-- the answer stays true; the tenant-keyed settlement then locks the hold and finds
-- it gone if it was settled in between.
SELECT tenant_id FROM {schema}.reservations
WHERE reservation_id = CAST(%(reservation_id)s AS bigint)

-- name: expire_candidates
-- The sweeper's candidates, oldest deadline first, without a lock; each is then
-- expired by the tenant-keyed expire_for_tenant (FOR UPDATE SKIP LOCKED), which
-- re-checks the deadline: a hold someone else expired or settled meanwhile is skipped.
SELECT tenant_id, reservation_id FROM {schema}.reservations
WHERE expires_at <= now()
ORDER BY expires_at, reservation_id
LIMIT CAST(%(limit)s AS integer)

-- name: lock_tenant
-- A batch on Citus locks its tenants up front, one routed statement each, in
-- tenant order (after its holds), as batch_*_begin does in one statement on one server.
SELECT tenant_id FROM {schema}.tenants
WHERE tenant_id = %(tenant_id)s
FOR NO KEY UPDATE

-- name: lock_hold
-- A settlement batch on Citus locks its holds first, in id order, under their tenants.
SELECT reservation_id FROM {schema}.reservations
WHERE tenant_id = %(tenant_id)s AND reservation_id = CAST(%(reservation_id)s AS bigint)
FOR UPDATE

-- name: shard_map
-- Where the tenants live, for clients that connect to the workers directly
-- (ledger/citus/routing.py): each shard group's hash range (its `tenants` shard, the
-- anchor of the group) and the node that holds its placement. A tenant's row is
-- in the shard whose [low, high] holds hashtext(tenant_id).
SELECT s.shardid AS anchor,
       CAST(s.shardminvalue AS integer) AS low,
       CAST(s.shardmaxvalue AS integer) AS high,
       n.nodename AS host,
       n.nodeport AS port
FROM pg_dist_shard AS s
JOIN pg_dist_placement AS p ON p.shardid = s.shardid
JOIN pg_dist_node AS n ON n.groupid = p.groupid
WHERE s.logicalrelid = to_regclass('{schema}.tenants')
  AND n.noderole = 'primary'
  AND n.isactive
ORDER BY low
