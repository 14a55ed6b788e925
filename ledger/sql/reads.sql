-- Reads and snapshots.

-- name: tenant
SELECT initial_microcents, remaining_microcents, reserved_microcents,
       committed_microcents, max_reserved_microcents
FROM {schema}.tenants WHERE tenant_id = %(tenant_id)s

-- name: counts
SELECT (SELECT count(*) FROM {schema}.tenants) AS tenants,
       (SELECT count(*) FROM {schema}.reservations) AS reservations,
       (SELECT COALESCE(sum(committed_microcents), 0) FROM {schema}.tenants) AS committed,
       (SELECT committed_microcents FROM {schema}.certificate_baseline WHERE id = 1) AS baseline

-- name: snapshot_version
SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS version
FROM {schema}.snapshot_version_seq

-- name: snapshot
-- One statement, so one MVCC snapshot: the version, the hold count and every
-- tenant row are mutually consistent even under concurrent writes.
WITH v AS MATERIALIZED (
    SELECT nextval('{schema}.snapshot_version_seq') AS version
), a AS MATERIALIZED (
    SELECT count(*) AS active FROM {schema}.reservations
)
SELECT v.version, a.active, t.tenant_id, t.initial_microcents, t.remaining_microcents,
       t.reserved_microcents, t.committed_microcents
FROM v CROSS JOIN a LEFT JOIN {schema}.tenants AS t ON true
ORDER BY t.tenant_id

-- name: first_unbalanced
-- The first tenant, in byte order, that breaks the invariant (numeric sums
-- cannot overflow), plus a version bump as the seed's verify_conservation does.
WITH v AS MATERIALIZED (
    SELECT nextval('{schema}.snapshot_version_seq') AS version
)
SELECT v.version, t.tenant_id, t.initial_microcents, t.remaining_microcents,
       t.reserved_microcents, t.committed_microcents
FROM v LEFT JOIN LATERAL (
    SELECT * FROM {schema}.tenants
    WHERE remaining_microcents::numeric + reserved_microcents + committed_microcents
              <> initial_microcents
       OR remaining_microcents < 0
    ORDER BY tenant_id
    LIMIT 1
) AS t ON true
