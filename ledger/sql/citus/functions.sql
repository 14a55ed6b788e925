-- The functions `ledger distribute` generates on Citus: ledger/citus/functions.py,
-- docs/scale-out.md ("Routed statements", "Keyed calls").
--
-- Templates, not statements: ledger/citus/functions.py fills each {placeholder}
-- (one pass; a value is never scanned again) with a name from
-- ledger/citus/names.py, a named statement of ledger/sql/*.sql turned into
-- $n parameters, or types the server described. {schema} is the quoted schema.
-- Function bodies ("..._body") are stored without their first and last newline;
-- the code puts them back, so each body is byte for byte what pg_proc.prosrc
-- holds and a function whose body is unchanged is not made again.
-- tests/unit/snapshots/citus_functions.sql shows every statement rendered.

-- name: shard_lock_function
-- lock_tenant_shard(shard): Citus's lock_shard_metadata, ShareLock only (5), as
-- its own executor takes before writing a shard. SECURITY DEFINER: the function
-- checks table ownership, and the application role calls the routed functions.
CREATE OR REPLACE FUNCTION {schema}.{function}(shard bigint) RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = {search_path} AS $lock${body}$lock$

-- name: shard_lock_body
SELECT pg_catalog.lock_shard_metadata(5, ARRAY[shard])

-- name: shard_here_function
-- lock_shard_here(shard): the shard lock, then "is this shard's placement on the
-- node I run on?". PL/pgSQL, so its statements keep their plans for the session.
CREATE OR REPLACE FUNCTION {schema}.{function}(shard bigint) RETURNS boolean LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = {search_path} AS $here${body}$here$

-- name: shard_here_body
BEGIN
    PERFORM pg_catalog.lock_shard_metadata(5, ARRAY[shard]);  -- 5 = ShareLock, as SHARD_LOCK
    RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement AS p
                   WHERE p.shardid = shard
                     AND p.groupid = (SELECT l.groupid FROM pg_catalog.pg_dist_local_group AS l));
END

-- name: shard_hash_function
-- journal_hash's STABLE twin, same body (read from the catalog): PostgreSQL
-- inlines it into the statements on the shards.
CREATE OR REPLACE FUNCTION {schema}.{function}({arguments}) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $hash${body}$hash$

-- name: routed_function
-- routed_<statement>_<hash>: one single-tenant statement, delegated to the
-- tenant's worker. It calls the shard group's function when there is one;
-- otherwise it takes the shard lock, and runs the statement rewritten to the
-- tenant's shards if they are on this node ({shards}: one regexp_replace per
-- table), or as written (Citus routes it) if they are not. use_column: the
-- RETURNS TABLE columns are PL/pgSQL variables too; inside the statement a name
-- always means the table's column.
CREATE OR REPLACE FUNCTION {schema}.{function}({arguments})
RETURNS TABLE({returns}) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
{statement}
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '{schema}.{anchor}'::regclass, $1);
    inner_function text := '{function}{shard_suffix}' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '{schema}'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM {schema}.' || quote_ident(inner_function)
            || '({using})'
            USING {using};
        RETURN;
    END IF;
    PERFORM {schema}.{shard_lock}(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
{statement};
    ELSE
{shards}
        RETURN QUERY EXECUTE statement USING {using};
    END IF;
END
$routed$

-- name: routed_shard_rewrite
-- One line of {shards} above: the table's name in the statement becomes its shard's.
        statement := regexp_replace(statement, '{schema}\.{table}\M', shard_name('{schema}.{table}'::regclass, get_shard_id_for_distribution_column('{schema}.{table}'::regclass, $1)), 'g');

-- name: shard_function
-- routed_<statement>_<hash>_s<anchor>, and the keyed functions' ..._s<anchor>: static
-- SQL on one shard group's tables. Arguments a_*, not p_tenant_id, so it is never
-- delegated itself: the routed function calls it on the worker with the shards.
CREATE OR REPLACE FUNCTION {schema}.{function}({arguments})
RETURNS TABLE({returns}) LANGUAGE plpgsql VOLATILE AS $shard${body}$shard$

-- name: shard_body
-- The statement on the shards if their placement is here ({local}: tables named
-- by their shards, journal_hash by its STABLE twin), else as written.
#variable_conflict use_column
BEGIN
    IF {schema}.{shard_here}({anchor}) THEN
        RETURN QUERY
{local};
    ELSE
        RETURN QUERY
{statement};
    END IF;
END

-- name: keyed_function
-- routed_keyed_<operation>_<hash>: claim -> operation -> record in one call, by the
-- shard group's function; 'fallback' (nothing done) where the group has none.
CREATE OR REPLACE FUNCTION {schema}.{function}({arguments})
RETURNS TABLE({returns}) LANGUAGE plpgsql VOLATILE AS $routed$
DECLARE
    anchor bigint := get_shard_id_for_distribution_column(
        '{schema}.{anchor}'::regclass, $1);
    inner_function text := '{function}{shard_suffix}' || anchor;
BEGIN
    -- No guard of its own: each shard function it calls takes the shard
    -- lock and checks the placement (the first one's lock holds until COMMIT).
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '{schema}'::regnamespace) THEN
        RETURN QUERY EXECUTE 'SELECT * FROM {schema}.'
            || quote_ident(inner_function) || '({using})'
            USING {using};
    ELSE
        -- No function for this shard group (a split since distribute):
        -- nothing done, the ledger runs the three statements.
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb,
            {nulls};
    END IF;
END
$routed$

-- name: keyed_body
-- The keyed function on one shard group: calls of the shard functions of the
-- claim, the operation, the record (and the unclaim), as static SQL. {recorded}
-- and {missing} build the outcome JSON (NULL: not final), derived from the
-- outcome mappers (ledger/citus/keyed.py).
#variable_conflict use_column
DECLARE
    v_claimed boolean;
    v_found boolean;
    v_outcome jsonb;
    v_count bigint;
    r record;
BEGIN
    SELECT c.claimed INTO v_claimed FROM {claim} AS c;
    IF v_claimed IS NULL THEN
        -- Claimed before (or by a concurrent duplicate, whose transaction the claim
        -- waited for): its request hash and outcome; Python checks and replays.
        RETURN QUERY SELECT 'replay'::text, k.request_hash, k.outcome, {nulls}
            FROM {read} AS k;
        RETURN;
    END IF;
    SELECT * INTO r FROM {apply} AS o;
    v_found := FOUND;
    IF v_found THEN
        v_outcome := {recorded};
    ELSE
        v_outcome := {missing};
    END IF;
    IF v_outcome IS NULL THEN
        -- Not final: the statement wrote nothing; take the claim back.
        SELECT count(*) INTO v_count FROM {unclaim} AS u;
        IF v_count <> 1 THEN
            PERFORM {schema}.invariant_failed('a keyed call could not take back its own claim');
        END IF;
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb, {nulls};
        RETURN;
    END IF;
    SELECT count(*) INTO v_count FROM {record} AS w;
    IF v_count <> 1 THEN
        PERFORM {schema}.invariant_failed('a keyed call recorded its outcome on ' || v_count || ' keys');
    END IF;
    IF v_found THEN
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, {row};
    ELSE
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, {nulls};
    END IF;
END

-- name: routed_call
-- How a ledger calls a routed or keyed function (ledger/citus/queries.py), in
-- psycopg's %(name)s style like every statement of ledger/sql/*.sql.
SELECT * FROM {schema}.{function}({arguments})
