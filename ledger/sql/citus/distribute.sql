-- What `ledger distribute` runs to spread a migrated schema over Citus:
-- ledger/citus/distribute.py, docs/scale-out.md ("What distribute does").
--
-- Run through SQLAlchemy's text(): parameters are :name. {schema} is the quoted
-- schema name; {table}, {column}, {sequence}, {trigger} and {function} are
-- names the code read from the catalog or defines itself (ledger/citus/names.py).

-- ------------------------------------------------------------------ checks

-- name: migration_lock
-- The same advisory lock as ledger.migrate: a migration and a distribution never
-- interleave.
SELECT pg_advisory_xact_lock(hashtext(:key))

-- name: citus_version
SELECT extversion FROM pg_extension WHERE extname = 'citus'

-- name: server_version
SHOW server_version

-- name: current_database
SELECT current_database()

-- name: is_coordinator
SELECT citus_is_coordinator()

-- name: migrated_revision
SELECT version_num FROM {schema}.alembic_version

-- name: schema_tables
-- The schema's tables and whether each has the distribution column (shards excluded).
SELECT c.relname,
       EXISTS (SELECT 1 FROM pg_attribute AS a
               WHERE a.attrelid = c.oid AND a.attname = :column
                 AND NOT a.attisdropped) AS has_key
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND NOT relation_is_a_known_shard(c.oid)

-- name: column_collation
SELECT co.collname FROM pg_attribute AS a
LEFT JOIN pg_collation AS co ON co.oid = a.attcollation
WHERE a.attrelid = CAST(:t AS regclass) AND a.attname = :c

-- name: citus_state
-- (partition method, distribution column, colocation id); no row for a plain table.
SELECT partmethod, column_to_column_name(logicalrelid, partkey), colocationid
FROM pg_dist_partition WHERE logicalrelid = CAST(:t AS regclass)

-- name: citus_table_type
SELECT citus_table_type FROM citus_tables WHERE table_name = CAST(:t AS regclass)

-- name: shard_count
SELECT shard_count FROM citus_tables WHERE table_name = CAST(:t AS regclass)

-- ------------------------------------------------------------------ tables

-- name: allow_unsafe_triggers
-- Only for this transaction: lets Citus distribute the journal with its triggers.
SET LOCAL citus.enable_unsafe_triggers = on

-- name: procedure_exists
SELECT to_regprocedure(:f) IS NOT NULL

-- name: make_immutable
ALTER FUNCTION {function} IMMUTABLE

-- name: distribute_anchor
SELECT create_distributed_table(CAST(:t AS regclass), :c, shard_count => CAST(:n AS int))

-- name: distribute_colocated
SELECT create_distributed_table(CAST(:t AS regclass), :c, colocate_with => :anchor)

-- name: make_reference_table
SELECT create_reference_table(CAST(:t AS regclass))

-- name: relation_exists
SELECT to_regclass(:s) IS NOT NULL

-- name: column_default
SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef AS d
JOIN pg_attribute AS a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE d.adrelid = CAST(:t AS regclass) AND a.attname = :c

-- name: set_sequence_default
-- Citus then gives each node its own range of the sequence (node group id << 48).
ALTER TABLE {schema}.{table} ALTER COLUMN {column} SET DEFAULT nextval('{schema}.{sequence}'::regclass)

-- ------------------------------------------------- the coordinator's leftover rows

-- name: truncate_triggers
-- The table's enabled TRUNCATE triggers (tgtype bit 32: TRIGGER_TYPE_TRUNCATE).
SELECT tgname FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass)
  AND NOT tgisinternal AND tgenabled <> 'D'
  AND (tgtype & 32) <> 0

-- name: ddl_propagation_off
SET LOCAL citus.enable_ddl_propagation = off

-- name: ddl_propagation_on
SET LOCAL citus.enable_ddl_propagation = on

-- name: disable_trigger
ALTER TABLE {schema}.{table} DISABLE TRIGGER "{trigger}"

-- name: enable_trigger
ALTER TABLE {schema}.{table} ENABLE TRIGGER "{trigger}"

-- name: truncate_local_data
SELECT truncate_local_data_after_distributing_table(CAST(:t AS regclass))

-- ------------------------------------------------------------------ functions

-- name: tenant_functions
-- Every function with the tenant argument, how Citus delegates it now, and
-- whether it is one of the generated ones (force-delegated).
SELECT p.oid::regprocedure::text AS signature,
       array_position(p.proargnames, :arg) - 1 AS arg_index,
       o.distribution_argument_index AS current_index,
       o.colocationid AS current_colocation,
       COALESCE(o.force_delegation, false) AS current_force,
       starts_with(p.proname, :prefix) AS routed,
       (SELECT colocationid FROM pg_dist_partition
        WHERE logicalrelid = CAST(:anchor AS regclass)) AS anchor_colocation
FROM pg_proc AS p
LEFT JOIN pg_dist_object AS o
       ON o.classid = 'pg_proc'::regclass AND o.objid = p.oid
WHERE p.pronamespace = CAST(:schema AS regnamespace)
  AND :arg = ANY(p.proargnames)
ORDER BY 1

-- name: delegate_function
SELECT create_distributed_function(:f, :arg, colocate_with => :anchor,
                                   force_delegation => CAST(:force AS bool))
