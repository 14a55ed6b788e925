-- Catalog reads of ledger/citus/functions.py: which generated functions exist,
-- with what body, and where the shard groups are. Run through SQLAlchemy's
-- text(): parameters are :name; {signature} is a regprocedure the catalog gave.

-- name: function_exists
SELECT 1 FROM pg_proc WHERE pronamespace = CAST(:s AS regnamespace) AND proname = :f

-- name: type_name
SELECT format_type(:o, NULL)

-- name: definer_source
-- A SECURITY DEFINER function's body and settings (its search path).
SELECT prosrc, proconfig FROM pg_catalog.pg_proc WHERE oid = to_regprocedure(:f)

-- name: overloads
-- Every overload of one function: (arguments, body).
SELECT pg_get_function_arguments(oid), prosrc FROM pg_proc
WHERE pronamespace = CAST(:s AS regnamespace) AND proname = :f

-- name: functions_named
-- The functions whose names start with :f, with their bodies.
SELECT proname, prosrc FROM pg_proc
WHERE pronamespace = CAST(:s AS regnamespace) AND starts_with(proname, :f)

-- name: generated_functions
SELECT p.oid::regprocedure::text, p.proname FROM pg_proc AS p
WHERE p.pronamespace = CAST(:s AS regnamespace) AND starts_with(p.proname, :prefix)

-- name: drop_function
DROP FUNCTION {signature}

-- name: shard_groups
-- anchor shard id, table, shard: colocated tables have the same hash ranges, so a
-- group's shards are the ones with the anchor shard's minimum value.
SELECT a.shardid AS anchor, c.relname AS tbl,
       shard_name(s.logicalrelid, s.shardid) AS shard
FROM pg_dist_shard AS a
JOIN pg_dist_shard AS s ON s.shardminvalue = a.shardminvalue
JOIN pg_dist_partition AS p ON p.logicalrelid = s.logicalrelid
     AND p.colocationid = (SELECT colocationid FROM pg_dist_partition
                           WHERE logicalrelid = CAST(:anchor AS regclass))
JOIN pg_class AS c ON c.oid = s.logicalrelid
WHERE a.logicalrelid = CAST(:anchor AS regclass)
  AND c.relnamespace = CAST(:s AS regnamespace)
