-- Reads and snapshots.

-- name: tenant
SELECT initial_microcents, remaining_microcents, reserved_microcents,
       committed_microcents, max_reserved_microcents, parent_id
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
    -- On a read-only server (a hot standby) no version can be drawn: report
    -- the current one instead of failing (pg_sequence_last_value needs only the
    -- USAGE the application role has; NULL before the first version).
    SELECT CASE WHEN current_setting('transaction_read_only')::boolean
                THEN COALESCE(pg_sequence_last_value('{schema}.snapshot_version_seq'), 0)
                ELSE nextval('{schema}.snapshot_version_seq')
           END AS version
), a AS MATERIALIZED (
    SELECT count(*) AS active FROM {schema}.reservations
)
SELECT v.version, a.active, t.tenant_id, t.initial_microcents, t.remaining_microcents,
       t.reserved_microcents, t.committed_microcents, t.parent_id
FROM v CROSS JOIN a LEFT JOIN {schema}.tenants AS t ON true
ORDER BY t.tenant_id

-- name: first_unbalanced
-- The first tenant, in byte order, that breaks the invariant (numeric sums
-- cannot overflow), plus a version bump as the seed's verify_conservation does.
WITH v AS MATERIALIZED (
    -- On a read-only server (a hot standby) no version can be drawn: report
    -- the current one instead of failing (pg_sequence_last_value needs only the
    -- USAGE the application role has; NULL before the first version).
    SELECT CASE WHEN current_setting('transaction_read_only')::boolean
                THEN COALESCE(pg_sequence_last_value('{schema}.snapshot_version_seq'), 0)
                ELSE nextval('{schema}.snapshot_version_seq')
           END AS version
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

-- name: tenant_scoped
-- Is the current role confined to one tenant (`ledger roles isolate`: a member
-- of the group role ledger_tenant_scoped, neither superuser nor BYPASSRLS)?
-- The same rule the audit views and the row-level security policies apply
-- (caller_is_tenant_scoped, revision 0007). Ledger-wide operations ask this
-- first (ledger._operations.ledger_wide says why).
SELECT {schema}.caller_is_tenant_scoped() AS scoped
