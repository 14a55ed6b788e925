CREATE OR REPLACE FUNCTION "ledger".lock_tenant_shard(shard bigint) RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $lock$SELECT pg_catalog.lock_shard_metadata(5, ARRAY[shard])$lock$;

CREATE OR REPLACE FUNCTION "ledger".lock_shard_here(shard bigint) RETURNS boolean LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $here$
BEGIN
    PERFORM pg_catalog.lock_shard_metadata(5, ARRAY[shard]);  -- 5 = ShareLock, as SHARD_LOCK
    RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement AS p
                   WHERE p.shardid = shard
                     AND p.groupid = (SELECT l.groupid FROM pg_catalog.pg_dist_local_group AS l));
END
$here$;

CREATE OR REPLACE FUNCTION "ledger".journal_hash_on_shard(prev bytea, tenant text) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $hash$SELECT sha256(prev || convert_to(tenant, 'UTF8'))$hash$;

CREATE OR REPLACE FUNCTION "ledger".routed_ensure_tenant_d28a5e25(p_tenant_id text, p_budget bigint, p_ikey text, p_parent text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
WITH parked AS (
    DELETE FROM "ledger".detached_tenants WHERE tenant_id = $1
    RETURNING max_reserved_microcents, journal_seq, journal_head
), created AS (
    INSERT INTO "ledger".tenants AS t (
        tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
        committed_microcents, max_reserved_microcents, journal_seq, journal_head, parent_id)
    SELECT $1, CAST($2 AS bigint), CAST($2 AS bigint), 0, 0,
           COALESCE(p.max_reserved_microcents, 0), COALESCE(p.journal_seq, 0) + 1,
           "ledger".journal_hash(
               COALESCE(p.journal_head, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea), $1, COALESCE(p.journal_seq, 0) + 1,
               'create', NULL, CAST($2 AS bigint), NULL,
               CAST($2 AS bigint), CAST($2 AS bigint), 0, 0,
               COALESCE(p.max_reserved_microcents, 0), now(), CAST($3 AS text)),
           CAST($4 AS text)
    FROM (SELECT 1) AS one LEFT JOIN parked AS p ON true
    ON CONFLICT (tenant_id) DO NOTHING
    RETURNING *
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'create', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM created AS j
)
SELECT count(*) AS created FROM created
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_ensure_tenant_d28a5e25_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3, $4)'
            USING $1, $2, $3, $4;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
WITH parked AS (
    DELETE FROM "ledger".detached_tenants WHERE tenant_id = $1
    RETURNING max_reserved_microcents, journal_seq, journal_head
), created AS (
    INSERT INTO "ledger".tenants AS t (
        tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
        committed_microcents, max_reserved_microcents, journal_seq, journal_head, parent_id)
    SELECT $1, CAST($2 AS bigint), CAST($2 AS bigint), 0, 0,
           COALESCE(p.max_reserved_microcents, 0), COALESCE(p.journal_seq, 0) + 1,
           "ledger".journal_hash(
               COALESCE(p.journal_head, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea), $1, COALESCE(p.journal_seq, 0) + 1,
               'create', NULL, CAST($2 AS bigint), NULL,
               CAST($2 AS bigint), CAST($2 AS bigint), 0, 0,
               COALESCE(p.max_reserved_microcents, 0), now(), CAST($3 AS text)),
           CAST($4 AS text)
    FROM (SELECT 1) AS one LEFT JOIN parked AS p ON true
    ON CONFLICT (tenant_id) DO NOTHING
    RETURNING *
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'create', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM created AS j
)
SELECT count(*) AS created FROM created;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.journal\M', shard_name('"ledger".journal'::regclass, get_shard_id_for_distribution_column('"ledger".journal'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3, $4;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_ensure_tenant_d28a5e25_s102008(a_tenant_id text, a_budget bigint, a_ikey text, a_parent text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
WITH parked AS (
    DELETE FROM "ledger".detached_tenants WHERE tenant_id = $1
    RETURNING max_reserved_microcents, journal_seq, journal_head
), created AS (
    INSERT INTO "ledger".tenants_102136 AS t (
        tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
        committed_microcents, max_reserved_microcents, journal_seq, journal_head, parent_id)
    SELECT $1, CAST($2 AS bigint), CAST($2 AS bigint), 0, 0,
           COALESCE(p.max_reserved_microcents, 0), COALESCE(p.journal_seq, 0) + 1,
           "ledger".journal_hash_on_shard(
               COALESCE(p.journal_head, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea), $1, COALESCE(p.journal_seq, 0) + 1,
               'create', NULL, CAST($2 AS bigint), NULL,
               CAST($2 AS bigint), CAST($2 AS bigint), 0, 0,
               COALESCE(p.max_reserved_microcents, 0), now(), CAST($3 AS text)),
           CAST($4 AS text)
    FROM (SELECT 1) AS one LEFT JOIN parked AS p ON true
    ON CONFLICT (tenant_id) DO NOTHING
    RETURNING *
), logged AS (
    INSERT INTO "ledger".journal_102072 (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'create', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM created AS j
)
SELECT count(*) AS created FROM created;
    ELSE
        RETURN QUERY
WITH parked AS (
    DELETE FROM "ledger".detached_tenants WHERE tenant_id = $1
    RETURNING max_reserved_microcents, journal_seq, journal_head
), created AS (
    INSERT INTO "ledger".tenants AS t (
        tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
        committed_microcents, max_reserved_microcents, journal_seq, journal_head, parent_id)
    SELECT $1, CAST($2 AS bigint), CAST($2 AS bigint), 0, 0,
           COALESCE(p.max_reserved_microcents, 0), COALESCE(p.journal_seq, 0) + 1,
           "ledger".journal_hash(
               COALESCE(p.journal_head, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea), $1, COALESCE(p.journal_seq, 0) + 1,
               'create', NULL, CAST($2 AS bigint), NULL,
               CAST($2 AS bigint), CAST($2 AS bigint), 0, 0,
               COALESCE(p.max_reserved_microcents, 0), now(), CAST($3 AS text)),
           CAST($4 AS text)
    FROM (SELECT 1) AS one LEFT JOIN parked AS p ON true
    ON CONFLICT (tenant_id) DO NOTHING
    RETURNING *
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'create', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM created AS j
)
SELECT count(*) AS created FROM created;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_set_cap_59c4bb09(p_tenant_id text, p_cap bigint, p_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
WITH applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents,
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = CAST($2 AS bigint),
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'cap', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents, t.reserved_microcents, t.committed_microcents, CAST($2 AS bigint), now(), CAST($3 AS text))
    WHERE t.tenant_id = $1
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'cap', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM applied AS j
)
SELECT 'capped' AS status, tenant_id FROM applied
UNION ALL
-- Not applied to an existing tenant: it is due for renewal (renew, then run again).
SELECT 'renew', tenant_id FROM "ledger".tenants
WHERE tenant_id = $1 AND renews_at <= now() AND NOT EXISTS (SELECT 1 FROM applied)
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_set_cap_59c4bb09_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3)'
            USING $1, $2, $3;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
WITH applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents,
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = CAST($2 AS bigint),
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'cap', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents, t.reserved_microcents, t.committed_microcents, CAST($2 AS bigint), now(), CAST($3 AS text))
    WHERE t.tenant_id = $1
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'cap', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM applied AS j
)
SELECT 'capped' AS status, tenant_id FROM applied
UNION ALL
-- Not applied to an existing tenant: it is due for renewal (renew, then run again).
SELECT 'renew', tenant_id FROM "ledger".tenants
WHERE tenant_id = $1 AND renews_at <= now() AND NOT EXISTS (SELECT 1 FROM applied);
    ELSE
        statement := regexp_replace(statement, '"ledger"\.journal\M', shard_name('"ledger".journal'::regclass, get_shard_id_for_distribution_column('"ledger".journal'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_set_cap_59c4bb09_s102008(a_tenant_id text, a_cap bigint, a_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
WITH applied AS (
    UPDATE "ledger".tenants_102136 AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents,
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = CAST($2 AS bigint),
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash_on_shard(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'cap', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents, t.reserved_microcents, t.committed_microcents, CAST($2 AS bigint), now(), CAST($3 AS text))
    WHERE t.tenant_id = $1
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal_102072 (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'cap', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM applied AS j
)
SELECT 'capped' AS status, tenant_id FROM applied
UNION ALL
-- Not applied to an existing tenant: it is due for renewal (renew, then run again).
SELECT 'renew', tenant_id FROM "ledger".tenants_102136
WHERE tenant_id = $1 AND renews_at <= now() AND NOT EXISTS (SELECT 1 FROM applied);
    ELSE
        RETURN QUERY
WITH applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents,
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = CAST($2 AS bigint),
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'cap', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents, t.reserved_microcents, t.committed_microcents, CAST($2 AS bigint), now(), CAST($3 AS text))
    WHERE t.tenant_id = $1
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'cap', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM applied AS j
)
SELECT 'capped' AS status, tenant_id FROM applied
UNION ALL
-- Not applied to an existing tenant: it is due for renewal (renew, then run again).
SELECT 'renew', tenant_id FROM "ledger".tenants
WHERE tenant_id = $1 AND renews_at <= now() AND NOT EXISTS (SELECT 1 FROM applied);
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_top_up_5cbc6b2a(p_tenant_id text, p_amount bigint, p_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
WITH applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents + CAST($2 AS bigint),
        remaining_microcents = t.remaining_microcents + CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'top_up', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents + CAST($2 AS bigint), t.remaining_microcents + CAST($2 AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text))
    WHERE t.tenant_id = $1
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.initial_microcents <= 9223372036854775807 - CAST($2 AS bigint)
      AND t.remaining_microcents <= 9223372036854775807 - CAST($2 AS bigint)
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'top_up', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        WHEN remaining_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'topped_up' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS new_remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, NULL, p.tenant_id FROM probe AS p
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_top_up_5cbc6b2a_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3)'
            USING $1, $2, $3;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
WITH applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents + CAST($2 AS bigint),
        remaining_microcents = t.remaining_microcents + CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'top_up', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents + CAST($2 AS bigint), t.remaining_microcents + CAST($2 AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text))
    WHERE t.tenant_id = $1
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.initial_microcents <= 9223372036854775807 - CAST($2 AS bigint)
      AND t.remaining_microcents <= 9223372036854775807 - CAST($2 AS bigint)
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'top_up', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        WHEN remaining_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'topped_up' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS new_remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, NULL, p.tenant_id FROM probe AS p;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.journal\M', shard_name('"ledger".journal'::regclass, get_shard_id_for_distribution_column('"ledger".journal'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_top_up_5cbc6b2a_s102008(a_tenant_id text, a_amount bigint, a_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
WITH applied AS (
    UPDATE "ledger".tenants_102136 AS t
    SET initial_microcents = t.initial_microcents + CAST($2 AS bigint),
        remaining_microcents = t.remaining_microcents + CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash_on_shard(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'top_up', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents + CAST($2 AS bigint), t.remaining_microcents + CAST($2 AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text))
    WHERE t.tenant_id = $1
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.initial_microcents <= 9223372036854775807 - CAST($2 AS bigint)
      AND t.remaining_microcents <= 9223372036854775807 - CAST($2 AS bigint)
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal_102072 (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'top_up', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        WHEN remaining_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants_102136
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'topped_up' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS new_remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, NULL, p.tenant_id FROM probe AS p;
    ELSE
        RETURN QUERY
WITH applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents + CAST($2 AS bigint),
        remaining_microcents = t.remaining_microcents + CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'top_up', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents + CAST($2 AS bigint), t.remaining_microcents + CAST($2 AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text))
    WHERE t.tenant_id = $1
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.initial_microcents <= 9223372036854775807 - CAST($2 AS bigint)
      AND t.remaining_microcents <= 9223372036854775807 - CAST($2 AS bigint)
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, 'top_up', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        WHEN remaining_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'topped_up' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS new_remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, NULL, p.tenant_id FROM probe AS p;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_try_reserve_c816a560(p_tenant_id text, p_amount bigint, p_ikey text, p_ttl_us bigint, p_expires_at timestamp with time zone)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
WITH rid AS MATERIALIZED (
    SELECT nextval('"ledger".reservation_id_seq') AS id
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents - CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents + CAST($2 AS bigint),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'reserve', (SELECT id FROM rid), CAST($2 AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents - CAST($2 AS bigint), t.reserved_microcents + CAST($2 AS bigint), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            t.period_index, NULL)
    WHERE t.tenant_id = $1
      AND t.parent_id IS NULL
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.remaining_microcents >= CAST($2 AS bigint)
      AND t.reserved_microcents <= 9223372036854775807 - CAST($2 AS bigint)
      AND (t.max_reserved_microcents = 0
           OR t.reserved_microcents <= t.max_reserved_microcents - CAST($2 AS bigint))
    RETURNING t.*
), hold AS (
    INSERT INTO "ledger".reservations (tenant_id, reservation_id, amount_microcents, expires_at,
                                       period_index)
    SELECT a.tenant_id, (SELECT id FROM rid), CAST($2 AS bigint),
           CASE WHEN CAST($4 AS bigint) IS NOT NULL
                THEN now() + CAST($4 AS bigint) * interval '1 microsecond'
                ELSE CAST($5 AS timestamptz) END,
           a.period_index
    FROM applied AS a
    RETURNING reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'reserve', (SELECT id FROM rid), CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, j.period_index
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, reserved_microcents AS reserved,
           max_reserved_microcents AS cap, CASE
        WHEN parent_id IS NOT NULL THEN 'nested'
        WHEN renews_at <= now() THEN 'renew'
        WHEN reserved_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        WHEN max_reserved_microcents > 0
             AND reserved_microcents > max_reserved_microcents - CAST($2 AS bigint)
            THEN 'exposure_limit_exceeded'
        WHEN remaining_microcents < CAST($2 AS bigint) THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), decided AS MATERIALIZED (
    SELECT p.*, p.status NOT IN ('retry', 'renew', 'nested') AND EXISTS (
               SELECT 1 FROM "ledger".reservations
               WHERE tenant_id = $1 AND expires_at <= now()) AS lapsed_holds
    FROM probe AS p
), refused AS (
    -- Lapsed holds are expired and the reserve decided again: not final yet.
    INSERT INTO "ledger".refusals (tenant_id, op, status, amount_microcents)
    SELECT d.tenant_id, 'reserve', d.status, CAST($2 AS bigint)
    FROM decided AS d WHERE d.status NOT IN ('retry', 'renew', 'nested') AND NOT d.lapsed_holds
)
SELECT 'reserved' AS status, a.remaining_microcents AS remaining, NULL::bigint AS reserved,
       NULL::bigint AS cap, h.reservation_id, false AS lapsed_holds, a.tenant_id
FROM applied AS a CROSS JOIN hold AS h
UNION ALL
SELECT d.status, d.remaining, d.reserved, d.cap, NULL, d.lapsed_holds, d.tenant_id
FROM decided AS d
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_try_reserve_c816a560_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3, $4, $5)'
            USING $1, $2, $3, $4, $5;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
WITH rid AS MATERIALIZED (
    SELECT nextval('"ledger".reservation_id_seq') AS id
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents - CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents + CAST($2 AS bigint),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'reserve', (SELECT id FROM rid), CAST($2 AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents - CAST($2 AS bigint), t.reserved_microcents + CAST($2 AS bigint), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            t.period_index, NULL)
    WHERE t.tenant_id = $1
      AND t.parent_id IS NULL
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.remaining_microcents >= CAST($2 AS bigint)
      AND t.reserved_microcents <= 9223372036854775807 - CAST($2 AS bigint)
      AND (t.max_reserved_microcents = 0
           OR t.reserved_microcents <= t.max_reserved_microcents - CAST($2 AS bigint))
    RETURNING t.*
), hold AS (
    INSERT INTO "ledger".reservations (tenant_id, reservation_id, amount_microcents, expires_at,
                                       period_index)
    SELECT a.tenant_id, (SELECT id FROM rid), CAST($2 AS bigint),
           CASE WHEN CAST($4 AS bigint) IS NOT NULL
                THEN now() + CAST($4 AS bigint) * interval '1 microsecond'
                ELSE CAST($5 AS timestamptz) END,
           a.period_index
    FROM applied AS a
    RETURNING reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'reserve', (SELECT id FROM rid), CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, j.period_index
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, reserved_microcents AS reserved,
           max_reserved_microcents AS cap, CASE
        WHEN parent_id IS NOT NULL THEN 'nested'
        WHEN renews_at <= now() THEN 'renew'
        WHEN reserved_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        WHEN max_reserved_microcents > 0
             AND reserved_microcents > max_reserved_microcents - CAST($2 AS bigint)
            THEN 'exposure_limit_exceeded'
        WHEN remaining_microcents < CAST($2 AS bigint) THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), decided AS MATERIALIZED (
    SELECT p.*, p.status NOT IN ('retry', 'renew', 'nested') AND EXISTS (
               SELECT 1 FROM "ledger".reservations
               WHERE tenant_id = $1 AND expires_at <= now()) AS lapsed_holds
    FROM probe AS p
), refused AS (
    -- Lapsed holds are expired and the reserve decided again: not final yet.
    INSERT INTO "ledger".refusals (tenant_id, op, status, amount_microcents)
    SELECT d.tenant_id, 'reserve', d.status, CAST($2 AS bigint)
    FROM decided AS d WHERE d.status NOT IN ('retry', 'renew', 'nested') AND NOT d.lapsed_holds
)
SELECT 'reserved' AS status, a.remaining_microcents AS remaining, NULL::bigint AS reserved,
       NULL::bigint AS cap, h.reservation_id, false AS lapsed_holds, a.tenant_id
FROM applied AS a CROSS JOIN hold AS h
UNION ALL
SELECT d.status, d.remaining, d.reserved, d.cap, NULL, d.lapsed_holds, d.tenant_id
FROM decided AS d;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.journal\M', shard_name('"ledger".journal'::regclass, get_shard_id_for_distribution_column('"ledger".journal'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.reservations\M', shard_name('"ledger".reservations'::regclass, get_shard_id_for_distribution_column('"ledger".reservations'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3, $4, $5;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_try_reserve_c816a560_s102008(a_tenant_id text, a_amount bigint, a_ikey text, a_ttl_us bigint, a_expires_at timestamp with time zone)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
WITH rid AS MATERIALIZED (
    SELECT nextval('"ledger".reservation_id_seq') AS id
), applied AS (
    UPDATE "ledger".tenants_102136 AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents - CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents + CAST($2 AS bigint),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash_on_shard(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'reserve', (SELECT id FROM rid), CAST($2 AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents - CAST($2 AS bigint), t.reserved_microcents + CAST($2 AS bigint), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            t.period_index, NULL)
    WHERE t.tenant_id = $1
      AND t.parent_id IS NULL
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.remaining_microcents >= CAST($2 AS bigint)
      AND t.reserved_microcents <= 9223372036854775807 - CAST($2 AS bigint)
      AND (t.max_reserved_microcents = 0
           OR t.reserved_microcents <= t.max_reserved_microcents - CAST($2 AS bigint))
    RETURNING t.*
), hold AS (
    INSERT INTO "ledger".reservations_102104 (tenant_id, reservation_id, amount_microcents, expires_at,
                                       period_index)
    SELECT a.tenant_id, (SELECT id FROM rid), CAST($2 AS bigint),
           CASE WHEN CAST($4 AS bigint) IS NOT NULL
                THEN now() + CAST($4 AS bigint) * interval '1 microsecond'
                ELSE CAST($5 AS timestamptz) END,
           a.period_index
    FROM applied AS a
    RETURNING reservation_id
), logged AS (
    INSERT INTO "ledger".journal_102072 (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'reserve', (SELECT id FROM rid), CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, j.period_index
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, reserved_microcents AS reserved,
           max_reserved_microcents AS cap, CASE
        WHEN parent_id IS NOT NULL THEN 'nested'
        WHEN renews_at <= now() THEN 'renew'
        WHEN reserved_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        WHEN max_reserved_microcents > 0
             AND reserved_microcents > max_reserved_microcents - CAST($2 AS bigint)
            THEN 'exposure_limit_exceeded'
        WHEN remaining_microcents < CAST($2 AS bigint) THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants_102136
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), decided AS MATERIALIZED (
    SELECT p.*, p.status NOT IN ('retry', 'renew', 'nested') AND EXISTS (
               SELECT 1 FROM "ledger".reservations_102104
               WHERE tenant_id = $1 AND expires_at <= now()) AS lapsed_holds
    FROM probe AS p
), refused AS (
    -- Lapsed holds are expired and the reserve decided again: not final yet.
    INSERT INTO "ledger".refusals (tenant_id, op, status, amount_microcents)
    SELECT d.tenant_id, 'reserve', d.status, CAST($2 AS bigint)
    FROM decided AS d WHERE d.status NOT IN ('retry', 'renew', 'nested') AND NOT d.lapsed_holds
)
SELECT 'reserved' AS status, a.remaining_microcents AS remaining, NULL::bigint AS reserved,
       NULL::bigint AS cap, h.reservation_id, false AS lapsed_holds, a.tenant_id
FROM applied AS a CROSS JOIN hold AS h
UNION ALL
SELECT d.status, d.remaining, d.reserved, d.cap, NULL, d.lapsed_holds, d.tenant_id
FROM decided AS d;
    ELSE
        RETURN QUERY
WITH rid AS MATERIALIZED (
    SELECT nextval('"ledger".reservation_id_seq') AS id
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents,
        remaining_microcents = t.remaining_microcents - CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents + CAST($2 AS bigint),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'reserve', (SELECT id FROM rid), CAST($2 AS bigint), NULL,
            t.initial_microcents, t.remaining_microcents - CAST($2 AS bigint), t.reserved_microcents + CAST($2 AS bigint), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            t.period_index, NULL)
    WHERE t.tenant_id = $1
      AND t.parent_id IS NULL
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.remaining_microcents >= CAST($2 AS bigint)
      AND t.reserved_microcents <= 9223372036854775807 - CAST($2 AS bigint)
      AND (t.max_reserved_microcents = 0
           OR t.reserved_microcents <= t.max_reserved_microcents - CAST($2 AS bigint))
    RETURNING t.*
), hold AS (
    INSERT INTO "ledger".reservations (tenant_id, reservation_id, amount_microcents, expires_at,
                                       period_index)
    SELECT a.tenant_id, (SELECT id FROM rid), CAST($2 AS bigint),
           CASE WHEN CAST($4 AS bigint) IS NOT NULL
                THEN now() + CAST($4 AS bigint) * interval '1 microsecond'
                ELSE CAST($5 AS timestamptz) END,
           a.period_index
    FROM applied AS a
    RETURNING reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'reserve', (SELECT id FROM rid), CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, j.period_index
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, reserved_microcents AS reserved,
           max_reserved_microcents AS cap, CASE
        WHEN parent_id IS NOT NULL THEN 'nested'
        WHEN renews_at <= now() THEN 'renew'
        WHEN reserved_microcents > 9223372036854775807 - CAST($2 AS bigint) THEN 'overflow'
        WHEN max_reserved_microcents > 0
             AND reserved_microcents > max_reserved_microcents - CAST($2 AS bigint)
            THEN 'exposure_limit_exceeded'
        WHEN remaining_microcents < CAST($2 AS bigint) THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), decided AS MATERIALIZED (
    SELECT p.*, p.status NOT IN ('retry', 'renew', 'nested') AND EXISTS (
               SELECT 1 FROM "ledger".reservations
               WHERE tenant_id = $1 AND expires_at <= now()) AS lapsed_holds
    FROM probe AS p
), refused AS (
    -- Lapsed holds are expired and the reserve decided again: not final yet.
    INSERT INTO "ledger".refusals (tenant_id, op, status, amount_microcents)
    SELECT d.tenant_id, 'reserve', d.status, CAST($2 AS bigint)
    FROM decided AS d WHERE d.status NOT IN ('retry', 'renew', 'nested') AND NOT d.lapsed_holds
)
SELECT 'reserved' AS status, a.remaining_microcents AS remaining, NULL::bigint AS reserved,
       NULL::bigint AS cap, h.reservation_id, false AS lapsed_holds, a.tenant_id
FROM applied AS a CROSS JOIN hold AS h
UNION ALL
SELECT d.status, d.remaining, d.reserved, d.cap, NULL, d.lapsed_holds, d.tenant_id
FROM decided AS d;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_commit_for_tenant_23820088(p_tenant_id text, p_reservation_id bigint, p_actual bigint, p_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE reservation_id = CAST($2 AS bigint) AND tenant_id = $1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)),
        remaining_microcents = t.remaining_microcents - (CAST($3 AS bigint) - (SELECT amount FROM hold)) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents + CAST($3 AS bigint),
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'commit', CAST($2 AS bigint), CAST($3 AS bigint), (SELECT amount FROM hold),
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)), t.remaining_microcents - (CAST($3 AS bigint) - (SELECT amount FROM hold)) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents + CAST($3 AS bigint), t.max_reserved_microcents, now(), CAST($4 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT lapsed FROM hold) AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.committed_microcents <= 9223372036854775807 - CAST($3 AS bigint)
      AND t.remaining_microcents >= CAST($3 AS bigint) - (SELECT amount FROM hold)
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = CAST($2 AS bigint)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'commit', CAST($2 AS bigint), CAST($3 AS bigint), (SELECT amount FROM hold),
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($4 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT t.tenant_id, t.remaining_microcents AS remaining, CASE
        WHEN (SELECT nested FROM hold) THEN 'nested'
        WHEN t.renews_at <= now() THEN 'renew'
        WHEN (SELECT lapsed FROM hold) THEN 'lapsed'
        WHEN t.committed_microcents > 9223372036854775807 - CAST($3 AS bigint) THEN 'overflow'
        WHEN CAST($3 AS bigint) > (SELECT amount FROM hold)
             AND t.remaining_microcents < CAST($3 AS bigint) - (SELECT amount FROM hold)
            THEN 'overrun'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants AS t
    -- The caller's tenant (the hold was found under it), not the hold's: a locking read
    -- filtered by a constant is what Citus can route to one shard.
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), refused AS (
    INSERT INTO "ledger".refusals (tenant_id, op, status, amount_microcents)
    SELECT p.tenant_id, 'commit', p.status, CAST($3 AS bigint)
    FROM probe AS p WHERE p.status IN ('overflow', 'overrun')
)
SELECT 'committed' AS status, a.remaining_microcents AS remaining, NULL::bigint AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('commit settled a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, p.remaining, NULL, NULL, p.tenant_id FROM probe AS p
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_commit_for_tenant_23820088_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3, $4)'
            USING $1, $2, $3, $4;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE reservation_id = CAST($2 AS bigint) AND tenant_id = $1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)),
        remaining_microcents = t.remaining_microcents - (CAST($3 AS bigint) - (SELECT amount FROM hold)) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents + CAST($3 AS bigint),
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'commit', CAST($2 AS bigint), CAST($3 AS bigint), (SELECT amount FROM hold),
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)), t.remaining_microcents - (CAST($3 AS bigint) - (SELECT amount FROM hold)) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents + CAST($3 AS bigint), t.max_reserved_microcents, now(), CAST($4 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT lapsed FROM hold) AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.committed_microcents <= 9223372036854775807 - CAST($3 AS bigint)
      AND t.remaining_microcents >= CAST($3 AS bigint) - (SELECT amount FROM hold)
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = CAST($2 AS bigint)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'commit', CAST($2 AS bigint), CAST($3 AS bigint), (SELECT amount FROM hold),
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($4 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT t.tenant_id, t.remaining_microcents AS remaining, CASE
        WHEN (SELECT nested FROM hold) THEN 'nested'
        WHEN t.renews_at <= now() THEN 'renew'
        WHEN (SELECT lapsed FROM hold) THEN 'lapsed'
        WHEN t.committed_microcents > 9223372036854775807 - CAST($3 AS bigint) THEN 'overflow'
        WHEN CAST($3 AS bigint) > (SELECT amount FROM hold)
             AND t.remaining_microcents < CAST($3 AS bigint) - (SELECT amount FROM hold)
            THEN 'overrun'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants AS t
    -- The caller's tenant (the hold was found under it), not the hold's: a locking read
    -- filtered by a constant is what Citus can route to one shard.
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), refused AS (
    INSERT INTO "ledger".refusals (tenant_id, op, status, amount_microcents)
    SELECT p.tenant_id, 'commit', p.status, CAST($3 AS bigint)
    FROM probe AS p WHERE p.status IN ('overflow', 'overrun')
)
SELECT 'committed' AS status, a.remaining_microcents AS remaining, NULL::bigint AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('commit settled a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, p.remaining, NULL, NULL, p.tenant_id FROM probe AS p;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.journal\M', shard_name('"ledger".journal'::regclass, get_shard_id_for_distribution_column('"ledger".journal'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.reservations\M', shard_name('"ledger".reservations'::regclass, get_shard_id_for_distribution_column('"ledger".reservations'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3, $4;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_commit_for_tenant_23820088_s102008(a_tenant_id text, a_reservation_id bigint, a_actual bigint, a_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations_102104
    WHERE reservation_id = CAST($2 AS bigint) AND tenant_id = $1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants_102136 AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)),
        remaining_microcents = t.remaining_microcents - (CAST($3 AS bigint) - (SELECT amount FROM hold)) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents + CAST($3 AS bigint),
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash_on_shard(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'commit', CAST($2 AS bigint), CAST($3 AS bigint), (SELECT amount FROM hold),
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)), t.remaining_microcents - (CAST($3 AS bigint) - (SELECT amount FROM hold)) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents + CAST($3 AS bigint), t.max_reserved_microcents, now(), CAST($4 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT lapsed FROM hold) AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.committed_microcents <= 9223372036854775807 - CAST($3 AS bigint)
      AND t.remaining_microcents >= CAST($3 AS bigint) - (SELECT amount FROM hold)
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations_102104 AS r
    WHERE r.reservation_id = CAST($2 AS bigint)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal_102072 (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'commit', CAST($2 AS bigint), CAST($3 AS bigint), (SELECT amount FROM hold),
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($4 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT t.tenant_id, t.remaining_microcents AS remaining, CASE
        WHEN (SELECT nested FROM hold) THEN 'nested'
        WHEN t.renews_at <= now() THEN 'renew'
        WHEN (SELECT lapsed FROM hold) THEN 'lapsed'
        WHEN t.committed_microcents > 9223372036854775807 - CAST($3 AS bigint) THEN 'overflow'
        WHEN CAST($3 AS bigint) > (SELECT amount FROM hold)
             AND t.remaining_microcents < CAST($3 AS bigint) - (SELECT amount FROM hold)
            THEN 'overrun'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants_102136 AS t
    -- The caller's tenant (the hold was found under it), not the hold's: a locking read
    -- filtered by a constant is what Citus can route to one shard.
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), refused AS (
    INSERT INTO "ledger".refusals (tenant_id, op, status, amount_microcents)
    SELECT p.tenant_id, 'commit', p.status, CAST($3 AS bigint)
    FROM probe AS p WHERE p.status IN ('overflow', 'overrun')
)
SELECT 'committed' AS status, a.remaining_microcents AS remaining, NULL::bigint AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('commit settled a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, p.remaining, NULL, NULL, p.tenant_id FROM probe AS p;
    ELSE
        RETURN QUERY
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE reservation_id = CAST($2 AS bigint) AND tenant_id = $1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)),
        remaining_microcents = t.remaining_microcents - (CAST($3 AS bigint) - (SELECT amount FROM hold)) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents + CAST($3 AS bigint),
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'commit', CAST($2 AS bigint), CAST($3 AS bigint), (SELECT amount FROM hold),
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)), t.remaining_microcents - (CAST($3 AS bigint) - (SELECT amount FROM hold)) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold) - CAST($3 AS bigint)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents + CAST($3 AS bigint), t.max_reserved_microcents, now(), CAST($4 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT lapsed FROM hold) AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
      AND t.committed_microcents <= 9223372036854775807 - CAST($3 AS bigint)
      AND t.remaining_microcents >= CAST($3 AS bigint) - (SELECT amount FROM hold)
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = CAST($2 AS bigint)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'commit', CAST($2 AS bigint), CAST($3 AS bigint), (SELECT amount FROM hold),
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($4 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT t.tenant_id, t.remaining_microcents AS remaining, CASE
        WHEN (SELECT nested FROM hold) THEN 'nested'
        WHEN t.renews_at <= now() THEN 'renew'
        WHEN (SELECT lapsed FROM hold) THEN 'lapsed'
        WHEN t.committed_microcents > 9223372036854775807 - CAST($3 AS bigint) THEN 'overflow'
        WHEN CAST($3 AS bigint) > (SELECT amount FROM hold)
             AND t.remaining_microcents < CAST($3 AS bigint) - (SELECT amount FROM hold)
            THEN 'overrun'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants AS t
    -- The caller's tenant (the hold was found under it), not the hold's: a locking read
    -- filtered by a constant is what Citus can route to one shard.
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
), refused AS (
    INSERT INTO "ledger".refusals (tenant_id, op, status, amount_microcents)
    SELECT p.tenant_id, 'commit', p.status, CAST($3 AS bigint)
    FROM probe AS p WHERE p.status IN ('overflow', 'overrun')
)
SELECT 'committed' AS status, a.remaining_microcents AS remaining, NULL::bigint AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('commit settled a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, p.remaining, NULL, NULL, p.tenant_id FROM probe AS p;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_release_for_tenant_304fe67d(p_tenant_id text, p_reservation_id bigint, p_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE reservation_id = CAST($2 AS bigint) AND tenant_id = $1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'release', CAST($2 AS bigint), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold) AND NOT (SELECT lapsed FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = CAST($2 AS bigint)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.amount_microcents
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'release', CAST($2 AS bigint), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'released' AS status, a.remaining_microcents AS remaining,
       (SELECT amount FROM hold) AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('release refunded a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT 'lapsed', NULL, NULL, NULL, tenant_id FROM hold WHERE lapsed
UNION ALL
-- The hold is live and not lapsed, so only a due renewal stopped the UPDATE,
-- or the hold is nested (the caller settles it with nested_settle).
SELECT CASE WHEN nested THEN 'nested' ELSE 'renew' END, NULL, NULL, NULL, tenant_id FROM hold
WHERE NOT lapsed AND NOT EXISTS (SELECT 1 FROM applied)
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_release_for_tenant_304fe67d_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3)'
            USING $1, $2, $3;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE reservation_id = CAST($2 AS bigint) AND tenant_id = $1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'release', CAST($2 AS bigint), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold) AND NOT (SELECT lapsed FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = CAST($2 AS bigint)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.amount_microcents
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'release', CAST($2 AS bigint), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'released' AS status, a.remaining_microcents AS remaining,
       (SELECT amount FROM hold) AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('release refunded a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT 'lapsed', NULL, NULL, NULL, tenant_id FROM hold WHERE lapsed
UNION ALL
-- The hold is live and not lapsed, so only a due renewal stopped the UPDATE,
-- or the hold is nested (the caller settles it with nested_settle).
SELECT CASE WHEN nested THEN 'nested' ELSE 'renew' END, NULL, NULL, NULL, tenant_id FROM hold
WHERE NOT lapsed AND NOT EXISTS (SELECT 1 FROM applied);
    ELSE
        statement := regexp_replace(statement, '"ledger"\.journal\M', shard_name('"ledger".journal'::regclass, get_shard_id_for_distribution_column('"ledger".journal'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.reservations\M', shard_name('"ledger".reservations'::regclass, get_shard_id_for_distribution_column('"ledger".reservations'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_release_for_tenant_304fe67d_s102008(a_tenant_id text, a_reservation_id bigint, a_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations_102104
    WHERE reservation_id = CAST($2 AS bigint) AND tenant_id = $1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants_102136 AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash_on_shard(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'release', CAST($2 AS bigint), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold) AND NOT (SELECT lapsed FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations_102104 AS r
    WHERE r.reservation_id = CAST($2 AS bigint)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.amount_microcents
), logged AS (
    INSERT INTO "ledger".journal_102072 (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'release', CAST($2 AS bigint), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'released' AS status, a.remaining_microcents AS remaining,
       (SELECT amount FROM hold) AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('release refunded a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT 'lapsed', NULL, NULL, NULL, tenant_id FROM hold WHERE lapsed
UNION ALL
-- The hold is live and not lapsed, so only a due renewal stopped the UPDATE,
-- or the hold is nested (the caller settles it with nested_settle).
SELECT CASE WHEN nested THEN 'nested' ELSE 'renew' END, NULL, NULL, NULL, tenant_id FROM hold
WHERE NOT lapsed AND NOT EXISTS (SELECT 1 FROM applied);
    ELSE
        RETURN QUERY
WITH
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount, period_index AS period,
           COALESCE(expires_at <= now(), false) AS lapsed, ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE reservation_id = CAST($2 AS bigint) AND tenant_id = $1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'release', CAST($2 AS bigint), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold) AND NOT (SELECT lapsed FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = CAST($2 AS bigint)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.amount_microcents
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'release', CAST($2 AS bigint), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'released' AS status, a.remaining_microcents AS remaining,
       (SELECT amount FROM hold) AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('release refunded a tenant without removing its hold') END AS guard,
       a.tenant_id
FROM applied AS a
UNION ALL
SELECT 'lapsed', NULL, NULL, NULL, tenant_id FROM hold WHERE lapsed
UNION ALL
-- The hold is live and not lapsed, so only a due renewal stopped the UPDATE,
-- or the hold is nested (the caller settles it with nested_settle).
SELECT CASE WHEN nested THEN 'nested' ELSE 'renew' END, NULL, NULL, NULL, tenant_id FROM hold
WHERE NOT lapsed AND NOT EXISTS (SELECT 1 FROM applied);
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_expire_for_tenant_010e7345(p_tenant_id text, p_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE expires_at <= now() AND tenant_id = $1
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($2 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($2 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied)
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_expire_for_tenant_010e7345_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2)'
            USING $1, $2;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE expires_at <= now() AND tenant_id = $1
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($2 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($2 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied);
    ELSE
        statement := regexp_replace(statement, '"ledger"\.journal\M', shard_name('"ledger".journal'::regclass, get_shard_id_for_distribution_column('"ledger".journal'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.reservations\M', shard_name('"ledger".reservations'::regclass, get_shard_id_for_distribution_column('"ledger".reservations'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_expire_for_tenant_010e7345_s102008(a_tenant_id text, a_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations_102104
    WHERE expires_at <= now() AND tenant_id = $1
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), applied AS (
    UPDATE "ledger".tenants_102136 AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash_on_shard(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($2 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations_102104 AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal_102072 (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($2 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied);
    ELSE
        RETURN QUERY
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE expires_at <= now() AND tenant_id = $1
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($2 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($2 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied);
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_expire_hold_for_tenant_9a739542(p_tenant_id text, p_reservation_id bigint, p_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE expires_at <= now() AND reservation_id = CAST($2 AS bigint)
      AND tenant_id = $1
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied)
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_expire_hold_for_tenant_9a739542_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3)'
            USING $1, $2, $3;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE expires_at <= now() AND reservation_id = CAST($2 AS bigint)
      AND tenant_id = $1
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied);
    ELSE
        statement := regexp_replace(statement, '"ledger"\.journal\M', shard_name('"ledger".journal'::regclass, get_shard_id_for_distribution_column('"ledger".journal'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.reservations\M', shard_name('"ledger".reservations'::regclass, get_shard_id_for_distribution_column('"ledger".reservations'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_expire_hold_for_tenant_9a739542_s102008(a_tenant_id text, a_reservation_id bigint, a_ikey text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations_102104
    WHERE expires_at <= now() AND reservation_id = CAST($2 AS bigint)
      AND tenant_id = $1
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants_102136 AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash_on_shard(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations_102104 AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal_102072 (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied);
    ELSE
        RETURN QUERY
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount, period_index AS period,
           ancestor_ids IS NOT NULL AS nested
    FROM "ledger".reservations
    WHERE expires_at <= now() AND reservation_id = CAST($2 AS bigint)
      AND tenant_id = $1
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE
), applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
            t.initial_microcents - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.remaining_microcents + (SELECT amount FROM hold) - "ledger".forfeited((SELECT period FROM hold), t.period_index, (SELECT amount FROM hold)), t.reserved_microcents - (SELECT amount FROM hold), t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            (SELECT period FROM hold), NULL)
    WHERE t.tenant_id = $1 AND EXISTS (SELECT 1 FROM hold)
      AND NOT (SELECT nested FROM hold)
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), gone AS (
    DELETE FROM "ledger".reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = $1 AND EXISTS (SELECT 1 FROM applied)
    RETURNING r.reservation_id
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index)
    SELECT j.tenant_id, j.journal_seq, 'expire', (SELECT reservation_id FROM hold), (SELECT amount FROM hold), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, (SELECT period FROM hold)
    FROM applied AS j
)
SELECT 'expired' AS status, a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN "ledger".invariant_failed('expiry refunded a tenant without removing its hold') END AS guard
FROM applied AS a
UNION ALL
-- The hold is locked, so only a due renewal of its tenant stopped the UPDATE,
-- or the hold is nested (the caller expires it with nested_settle).
SELECT CASE WHEN h.nested THEN 'nested' ELSE 'renew' END, h.tenant_id, h.reservation_id,
       NULL, NULL, NULL
FROM hold AS h WHERE NOT EXISTS (SELECT 1 FROM applied);
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_adjust_135f013b(p_tenant_id text, p_amount bigint, p_ikey text, p_reason text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
WITH applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents + CAST($2 AS bigint),
        remaining_microcents = t.remaining_microcents + CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'adjust', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents + CAST($2 AS bigint), t.remaining_microcents + CAST($2 AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            NULL, CAST($4 AS text))
    WHERE t.tenant_id = $1
      AND t.initial_microcents <= 9223372036854775807 - greatest(CAST($2 AS bigint), 0)
      AND t.remaining_microcents + least(CAST($2 AS bigint), 0) >= 0
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index, reason)
    SELECT j.tenant_id, j.journal_seq, 'adjust', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, NULL, CAST($4 AS text)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - greatest(CAST($2 AS bigint), 0)
            THEN 'overflow'
        WHEN remaining_microcents + least(CAST($2 AS bigint), 0) < 0 THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'adjusted' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, p.remaining, p.tenant_id FROM probe AS p
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_adjust_135f013b_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3, $4)'
            USING $1, $2, $3, $4;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
WITH applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents + CAST($2 AS bigint),
        remaining_microcents = t.remaining_microcents + CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'adjust', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents + CAST($2 AS bigint), t.remaining_microcents + CAST($2 AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            NULL, CAST($4 AS text))
    WHERE t.tenant_id = $1
      AND t.initial_microcents <= 9223372036854775807 - greatest(CAST($2 AS bigint), 0)
      AND t.remaining_microcents + least(CAST($2 AS bigint), 0) >= 0
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index, reason)
    SELECT j.tenant_id, j.journal_seq, 'adjust', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, NULL, CAST($4 AS text)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - greatest(CAST($2 AS bigint), 0)
            THEN 'overflow'
        WHEN remaining_microcents + least(CAST($2 AS bigint), 0) < 0 THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'adjusted' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, p.remaining, p.tenant_id FROM probe AS p;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.journal\M', shard_name('"ledger".journal'::regclass, get_shard_id_for_distribution_column('"ledger".journal'::regclass, $1)), 'g');
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3, $4;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_adjust_135f013b_s102008(a_tenant_id text, a_amount bigint, a_ikey text, a_reason text)
RETURNS TABLE("status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
WITH applied AS (
    UPDATE "ledger".tenants_102136 AS t
    SET initial_microcents = t.initial_microcents + CAST($2 AS bigint),
        remaining_microcents = t.remaining_microcents + CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash_on_shard(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'adjust', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents + CAST($2 AS bigint), t.remaining_microcents + CAST($2 AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            NULL, CAST($4 AS text))
    WHERE t.tenant_id = $1
      AND t.initial_microcents <= 9223372036854775807 - greatest(CAST($2 AS bigint), 0)
      AND t.remaining_microcents + least(CAST($2 AS bigint), 0) >= 0
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal_102072 (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index, reason)
    SELECT j.tenant_id, j.journal_seq, 'adjust', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, NULL, CAST($4 AS text)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - greatest(CAST($2 AS bigint), 0)
            THEN 'overflow'
        WHEN remaining_microcents + least(CAST($2 AS bigint), 0) < 0 THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants_102136
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'adjusted' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, p.remaining, p.tenant_id FROM probe AS p;
    ELSE
        RETURN QUERY
WITH applied AS (
    UPDATE "ledger".tenants AS t
    SET initial_microcents = t.initial_microcents + CAST($2 AS bigint),
        remaining_microcents = t.remaining_microcents + CAST($2 AS bigint),
        reserved_microcents = t.reserved_microcents,
        committed_microcents = t.committed_microcents,
        max_reserved_microcents = t.max_reserved_microcents,
        journal_seq = t.journal_seq + 1,
        journal_head = "ledger".journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, 'adjust', NULL, CAST($2 AS bigint), NULL,
            t.initial_microcents + CAST($2 AS bigint), t.remaining_microcents + CAST($2 AS bigint), t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents, now(), CAST($3 AS text),
            NULL, CAST($4 AS text))
    WHERE t.tenant_id = $1
      AND t.initial_microcents <= 9223372036854775807 - greatest(CAST($2 AS bigint), 0)
      AND t.remaining_microcents + least(CAST($2 AS bigint), 0) >= 0
      AND (t.renews_at IS NULL OR t.renews_at > now())
    RETURNING t.*
), logged AS (
    INSERT INTO "ledger".journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash, period_index, reason)
    SELECT j.tenant_id, j.journal_seq, 'adjust', NULL, CAST($2 AS bigint), NULL,
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST($3 AS text), now(),
           j.journal_head, NULL, CAST($4 AS text)
    FROM applied AS j
), probe AS MATERIALIZED (
    SELECT tenant_id, remaining_microcents AS remaining, CASE
        WHEN renews_at <= now() THEN 'renew'
        WHEN initial_microcents > 9223372036854775807 - greatest(CAST($2 AS bigint), 0)
            THEN 'overflow'
        WHEN remaining_microcents + least(CAST($2 AS bigint), 0) < 0 THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM "ledger".tenants
    WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'adjusted' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS remaining, a.tenant_id
FROM applied AS a
UNION ALL
SELECT p.status, NULL, p.remaining, p.tenant_id FROM probe AS p;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_idempotency_claim_f9e5aff7(p_tenant_id text, p_ikey text, p_request_hash bytea)
RETURNS TABLE("claimed" boolean) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
INSERT INTO "ledger".idempotency_keys (tenant_id, idempotency_key, request_hash)
VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
RETURNING true AS claimed
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_idempotency_claim_f9e5aff7_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3)'
            USING $1, $2, $3;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
INSERT INTO "ledger".idempotency_keys (tenant_id, idempotency_key, request_hash)
VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
RETURNING true AS claimed;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.idempotency_keys\M', shard_name('"ledger".idempotency_keys'::regclass, get_shard_id_for_distribution_column('"ledger".idempotency_keys'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_idempotency_claim_f9e5aff7_s102008(a_tenant_id text, a_ikey text, a_request_hash bytea)
RETURNS TABLE("claimed" boolean) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
INSERT INTO "ledger".idempotency_keys_102040 (tenant_id, idempotency_key, request_hash)
VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
RETURNING true AS claimed;
    ELSE
        RETURN QUERY
INSERT INTO "ledger".idempotency_keys (tenant_id, idempotency_key, request_hash)
VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
RETURNING true AS claimed;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_idempotency_read_844f0525(p_tenant_id text, p_ikey text)
RETURNS TABLE("request_hash" bytea, "outcome" jsonb) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
SELECT request_hash, outcome FROM "ledger".idempotency_keys
WHERE tenant_id = $1 AND idempotency_key = $2
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_idempotency_read_844f0525_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2)'
            USING $1, $2;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
SELECT request_hash, outcome FROM "ledger".idempotency_keys
WHERE tenant_id = $1 AND idempotency_key = $2;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.idempotency_keys\M', shard_name('"ledger".idempotency_keys'::regclass, get_shard_id_for_distribution_column('"ledger".idempotency_keys'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_idempotency_read_844f0525_s102008(a_tenant_id text, a_ikey text)
RETURNS TABLE("request_hash" bytea, "outcome" jsonb) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
SELECT request_hash, outcome FROM "ledger".idempotency_keys_102040
WHERE tenant_id = $1 AND idempotency_key = $2;
    ELSE
        RETURN QUERY
SELECT request_hash, outcome FROM "ledger".idempotency_keys
WHERE tenant_id = $1 AND idempotency_key = $2;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_idempotency_record_c5b44324(p_tenant_id text, p_outcome jsonb, p_ikey text)
RETURNS TABLE("recorded" boolean) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
UPDATE "ledger".idempotency_keys SET outcome = CAST($2 AS jsonb)
WHERE tenant_id = $1 AND idempotency_key = $3
RETURNING true AS recorded
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_idempotency_record_c5b44324_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2, $3)'
            USING $1, $2, $3;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
UPDATE "ledger".idempotency_keys SET outcome = CAST($2 AS jsonb)
WHERE tenant_id = $1 AND idempotency_key = $3
RETURNING true AS recorded;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.idempotency_keys\M', shard_name('"ledger".idempotency_keys'::regclass, get_shard_id_for_distribution_column('"ledger".idempotency_keys'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2, $3;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_idempotency_record_c5b44324_s102008(a_tenant_id text, a_outcome jsonb, a_ikey text)
RETURNS TABLE("recorded" boolean) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
UPDATE "ledger".idempotency_keys_102040 SET outcome = CAST($2 AS jsonb)
WHERE tenant_id = $1 AND idempotency_key = $3
RETURNING true AS recorded;
    ELSE
        RETURN QUERY
UPDATE "ledger".idempotency_keys SET outcome = CAST($2 AS jsonb)
WHERE tenant_id = $1 AND idempotency_key = $3
RETURNING true AS recorded;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_idempotency_unclaim_585b5c5e(p_tenant_id text, p_ikey text)
RETURNS TABLE("unclaimed" boolean) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
DELETE FROM "ledger".idempotency_keys
WHERE tenant_id = $1 AND idempotency_key = $2 AND outcome IS NULL
RETURNING true AS unclaimed
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_idempotency_unclaim_585b5c5e_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2)'
            USING $1, $2;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
DELETE FROM "ledger".idempotency_keys
WHERE tenant_id = $1 AND idempotency_key = $2 AND outcome IS NULL
RETURNING true AS unclaimed;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.idempotency_keys\M', shard_name('"ledger".idempotency_keys'::regclass, get_shard_id_for_distribution_column('"ledger".idempotency_keys'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_idempotency_unclaim_585b5c5e_s102008(a_tenant_id text, a_ikey text)
RETURNS TABLE("unclaimed" boolean) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
DELETE FROM "ledger".idempotency_keys_102040
WHERE tenant_id = $1 AND idempotency_key = $2 AND outcome IS NULL
RETURNING true AS unclaimed;
    ELSE
        RETURN QUERY
DELETE FROM "ledger".idempotency_keys
WHERE tenant_id = $1 AND idempotency_key = $2 AND outcome IS NULL
RETURNING true AS unclaimed;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_lock_tenant_deef9c02(p_tenant_id text)
RETURNS TABLE("tenant_id" text) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
SELECT tenant_id FROM "ledger".tenants
WHERE tenant_id = $1
FOR NO KEY UPDATE
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_lock_tenant_deef9c02_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1)'
            USING $1;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
SELECT tenant_id FROM "ledger".tenants
WHERE tenant_id = $1
FOR NO KEY UPDATE;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.tenants\M', shard_name('"ledger".tenants'::regclass, get_shard_id_for_distribution_column('"ledger".tenants'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_lock_tenant_deef9c02_s102008(a_tenant_id text)
RETURNS TABLE("tenant_id" text) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
SELECT tenant_id FROM "ledger".tenants_102136
WHERE tenant_id = $1
FOR NO KEY UPDATE;
    ELSE
        RETURN QUERY
SELECT tenant_id FROM "ledger".tenants
WHERE tenant_id = $1
FOR NO KEY UPDATE;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_lock_hold_8aa2aad9(p_tenant_id text, p_reservation_id bigint)
RETURNS TABLE("reservation_id" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
#variable_conflict use_column
DECLARE
    statement text := $statement$
SELECT reservation_id FROM "ledger".reservations
WHERE tenant_id = $1 AND reservation_id = CAST($2 AS bigint)
FOR UPDATE
$statement$;
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_lock_hold_8aa2aad9_s' || anchor;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        -- the shard function takes the shard lock and checks the placement
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".' || quote_ident(inner_function)
            || '($1, $2)'
            USING $1, $2;
        RETURN;
    END IF;
    PERFORM "ledger".lock_tenant_shard(anchor);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor
               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN
        RETURN QUERY
SELECT reservation_id FROM "ledger".reservations
WHERE tenant_id = $1 AND reservation_id = CAST($2 AS bigint)
FOR UPDATE;
    ELSE
        statement := regexp_replace(statement, '"ledger"\.reservations\M', shard_name('"ledger".reservations'::regclass, get_shard_id_for_distribution_column('"ledger".reservations'::regclass, $1)), 'g');
        RETURN QUERY EXECUTE statement USING $1, $2;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_lock_hold_8aa2aad9_s102008(a_tenant_id text, a_reservation_id bigint)
RETURNS TABLE("reservation_id" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
BEGIN
    IF "ledger".lock_shard_here(102008) THEN
        RETURN QUERY
SELECT reservation_id FROM "ledger".reservations_102104
WHERE tenant_id = $1 AND reservation_id = CAST($2 AS bigint)
FOR UPDATE;
    ELSE
        RETURN QUERY
SELECT reservation_id FROM "ledger".reservations
WHERE tenant_id = $1 AND reservation_id = CAST($2 AS bigint)
FOR UPDATE;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_top_up_38a83044(p_tenant_id text, p_amount bigint, p_ikey text, p_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
DECLARE
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_keyed_top_up_38a83044_s' || anchor;
BEGIN
    -- No guard of its own: each shard function it calls takes the shard
    -- lock and checks the placement (the first one's lock holds until COMMIT).
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".'
            || quote_ident(inner_function) || '($1, $2, $3, $4)'
            USING $1, $2, $3, $4;
    ELSE
        -- No function for this shard group (a split since distribute):
        -- nothing done, the ledger runs the three statements.
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb,
            NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_top_up_38a83044_s102008(a_tenant_id text, a_amount bigint, a_ikey text, a_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
DECLARE
    v_claimed boolean;
    v_found boolean;
    v_outcome jsonb;
    v_count bigint;
    r record;
BEGIN
    SELECT c.claimed INTO v_claimed FROM "ledger"."routed_idempotency_claim_f9e5aff7_s102008"(a_tenant_id, a_ikey, a_request_hash) AS c;
    IF v_claimed IS NULL THEN
        -- Claimed before (or by a concurrent duplicate, whose transaction the claim
        -- waited for): its request hash and outcome; Python checks and replays.
        RETURN QUERY SELECT 'replay'::text, k.request_hash, k.outcome, NULL::text, NULL::text, NULL::bigint
            FROM "ledger"."routed_idempotency_read_844f0525_s102008"(a_tenant_id, a_ikey) AS k;
        RETURN;
    END IF;
    SELECT * INTO r FROM "ledger"."routed_top_up_5cbc6b2a_s102008"(a_tenant_id, a_amount, a_ikey) AS o;
    v_found := FOUND;
    IF v_found THEN
        v_outcome := CASE
            WHEN r.status = 'topped_up' THEN jsonb_strip_nulls(jsonb_build_object('added_microcents', a_amount, 'new_initial_microcents', r."new_initial", 'remaining_microcents', r."new_remaining")) || jsonb_build_object('status', 'topped_up')
            WHEN r.status = 'overflow' THEN jsonb_build_object('status', 'overflow')
            ELSE NULL END;
    ELSE
        v_outcome := jsonb_build_object('status', 'missing_tenant');
    END IF;
    IF v_outcome IS NULL THEN
        -- Not final: the statement wrote nothing; take the claim back.
        SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_unclaim_585b5c5e_s102008"(a_tenant_id, a_ikey) AS u;
        IF v_count <> 1 THEN
            PERFORM "ledger".invariant_failed('a keyed call could not take back its own claim');
        END IF;
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb, NULL::text, NULL::text, NULL::bigint;
        RETURN;
    END IF;
    SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_record_c5b44324_s102008"(a_tenant_id, v_outcome, a_ikey) AS w;
    IF v_count <> 1 THEN
        PERFORM "ledger".invariant_failed('a keyed call recorded its outcome on ' || v_count || ' keys');
    END IF;
    IF v_found THEN
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, r."status", r."tenant_id", r."remaining";
    ELSE
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_try_reserve_60ac4a34(p_tenant_id text, p_amount bigint, p_ikey text, p_ttl_us bigint, p_expires_at timestamp with time zone, p_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
DECLARE
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_keyed_try_reserve_60ac4a34_s' || anchor;
BEGIN
    -- No guard of its own: each shard function it calls takes the shard
    -- lock and checks the placement (the first one's lock holds until COMMIT).
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".'
            || quote_ident(inner_function) || '($1, $2, $3, $4, $5, $6)'
            USING $1, $2, $3, $4, $5, $6;
    ELSE
        -- No function for this shard group (a split since distribute):
        -- nothing done, the ledger runs the three statements.
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb,
            NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_try_reserve_60ac4a34_s102008(a_tenant_id text, a_amount bigint, a_ikey text, a_ttl_us bigint, a_expires_at timestamp with time zone, a_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
DECLARE
    v_claimed boolean;
    v_found boolean;
    v_outcome jsonb;
    v_count bigint;
    r record;
BEGIN
    SELECT c.claimed INTO v_claimed FROM "ledger"."routed_idempotency_claim_f9e5aff7_s102008"(a_tenant_id, a_ikey, a_request_hash) AS c;
    IF v_claimed IS NULL THEN
        -- Claimed before (or by a concurrent duplicate, whose transaction the claim
        -- waited for): its request hash and outcome; Python checks and replays.
        RETURN QUERY SELECT 'replay'::text, k.request_hash, k.outcome, NULL::text, NULL::text, NULL::bigint
            FROM "ledger"."routed_idempotency_read_844f0525_s102008"(a_tenant_id, a_ikey) AS k;
        RETURN;
    END IF;
    SELECT * INTO r FROM "ledger"."routed_try_reserve_c816a560_s102008"(a_tenant_id, a_amount, a_ikey, a_ttl_us, a_expires_at) AS o;
    v_found := FOUND;
    IF v_found THEN
        v_outcome := CASE
            WHEN r."lapsed_holds" THEN NULL
            WHEN r.status = 'reserved' THEN jsonb_strip_nulls(jsonb_build_object('reservation_id', r."reservation_id", 'remaining_microcents', r."remaining")) || jsonb_build_object('status', 'reserved')
            WHEN r.status = 'insufficient' THEN jsonb_strip_nulls(jsonb_build_object('remaining_microcents', r."remaining", 'required_microcents', a_amount)) || jsonb_build_object('status', 'insufficient', 'reservation_id', NULL)
            WHEN r.status = 'overflow' THEN jsonb_strip_nulls(jsonb_build_object('current_reserved_microcents', r."reserved")) || jsonb_build_object('status', 'overflow', 'reservation_id', NULL)
            WHEN r.status = 'exposure_limit_exceeded' THEN jsonb_strip_nulls(jsonb_build_object('current_reserved_microcents', r."reserved", 'max_reserved_microcents', r."cap")) || jsonb_build_object('status', 'exposure_limit_exceeded', 'reservation_id', NULL)
            ELSE NULL END;
    ELSE
        v_outcome := jsonb_build_object('status', 'missing_tenant', 'reservation_id', NULL);
    END IF;
    IF v_outcome IS NULL THEN
        -- Not final: the statement wrote nothing; take the claim back.
        SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_unclaim_585b5c5e_s102008"(a_tenant_id, a_ikey) AS u;
        IF v_count <> 1 THEN
            PERFORM "ledger".invariant_failed('a keyed call could not take back its own claim');
        END IF;
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb, NULL::text, NULL::text, NULL::bigint;
        RETURN;
    END IF;
    SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_record_c5b44324_s102008"(a_tenant_id, v_outcome, a_ikey) AS w;
    IF v_count <> 1 THEN
        PERFORM "ledger".invariant_failed('a keyed call recorded its outcome on ' || v_count || ' keys');
    END IF;
    IF v_found THEN
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, r."status", r."tenant_id", r."remaining";
    ELSE
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_commit_6618baf5(p_tenant_id text, p_reservation_id bigint, p_actual bigint, p_ikey text, p_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
DECLARE
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_keyed_commit_6618baf5_s' || anchor;
BEGIN
    -- No guard of its own: each shard function it calls takes the shard
    -- lock and checks the placement (the first one's lock holds until COMMIT).
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".'
            || quote_ident(inner_function) || '($1, $2, $3, $4, $5)'
            USING $1, $2, $3, $4, $5;
    ELSE
        -- No function for this shard group (a split since distribute):
        -- nothing done, the ledger runs the three statements.
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb,
            NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_commit_6618baf5_s102008(a_tenant_id text, a_reservation_id bigint, a_actual bigint, a_ikey text, a_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
DECLARE
    v_claimed boolean;
    v_found boolean;
    v_outcome jsonb;
    v_count bigint;
    r record;
BEGIN
    SELECT c.claimed INTO v_claimed FROM "ledger"."routed_idempotency_claim_f9e5aff7_s102008"(a_tenant_id, a_ikey, a_request_hash) AS c;
    IF v_claimed IS NULL THEN
        -- Claimed before (or by a concurrent duplicate, whose transaction the claim
        -- waited for): its request hash and outcome; Python checks and replays.
        RETURN QUERY SELECT 'replay'::text, k.request_hash, k.outcome, NULL::text, NULL::text, NULL::bigint
            FROM "ledger"."routed_idempotency_read_844f0525_s102008"(a_tenant_id, a_ikey) AS k;
        RETURN;
    END IF;
    SELECT * INTO r FROM "ledger"."routed_commit_for_tenant_23820088_s102008"(a_tenant_id, a_reservation_id, a_actual, a_ikey) AS o;
    v_found := FOUND;
    IF v_found THEN
        v_outcome := CASE
            WHEN r.status = 'committed' THEN jsonb_strip_nulls(jsonb_build_object('remaining_microcents', r."remaining", 'actual_microcents', a_actual)) || jsonb_build_object('status', 'committed')
            WHEN r.status = 'overflow' THEN jsonb_strip_nulls(jsonb_build_object('remaining_microcents', r."remaining")) || jsonb_build_object('status', 'overflow')
            WHEN r.status = 'overrun' THEN jsonb_strip_nulls(jsonb_build_object('remaining_microcents', r."remaining")) || jsonb_build_object('status', 'overrun')
            ELSE NULL END;
    ELSE
        v_outcome := NULL;
    END IF;
    IF v_outcome IS NULL THEN
        -- Not final: the statement wrote nothing; take the claim back.
        SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_unclaim_585b5c5e_s102008"(a_tenant_id, a_ikey) AS u;
        IF v_count <> 1 THEN
            PERFORM "ledger".invariant_failed('a keyed call could not take back its own claim');
        END IF;
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb, NULL::text, NULL::text, NULL::bigint;
        RETURN;
    END IF;
    SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_record_c5b44324_s102008"(a_tenant_id, v_outcome, a_ikey) AS w;
    IF v_count <> 1 THEN
        PERFORM "ledger".invariant_failed('a keyed call recorded its outcome on ' || v_count || ' keys');
    END IF;
    IF v_found THEN
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, r."status", r."tenant_id", r."remaining";
    ELSE
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_release_50cbe02d(p_tenant_id text, p_reservation_id bigint, p_ikey text, p_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
DECLARE
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_keyed_release_50cbe02d_s' || anchor;
BEGIN
    -- No guard of its own: each shard function it calls takes the shard
    -- lock and checks the placement (the first one's lock holds until COMMIT).
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".'
            || quote_ident(inner_function) || '($1, $2, $3, $4)'
            USING $1, $2, $3, $4;
    ELSE
        -- No function for this shard group (a split since distribute):
        -- nothing done, the ledger runs the three statements.
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb,
            NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_release_50cbe02d_s102008(a_tenant_id text, a_reservation_id bigint, a_ikey text, a_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
DECLARE
    v_claimed boolean;
    v_found boolean;
    v_outcome jsonb;
    v_count bigint;
    r record;
BEGIN
    SELECT c.claimed INTO v_claimed FROM "ledger"."routed_idempotency_claim_f9e5aff7_s102008"(a_tenant_id, a_ikey, a_request_hash) AS c;
    IF v_claimed IS NULL THEN
        -- Claimed before (or by a concurrent duplicate, whose transaction the claim
        -- waited for): its request hash and outcome; Python checks and replays.
        RETURN QUERY SELECT 'replay'::text, k.request_hash, k.outcome, NULL::text, NULL::text, NULL::bigint
            FROM "ledger"."routed_idempotency_read_844f0525_s102008"(a_tenant_id, a_ikey) AS k;
        RETURN;
    END IF;
    SELECT * INTO r FROM "ledger"."routed_release_for_tenant_304fe67d_s102008"(a_tenant_id, a_reservation_id, a_ikey) AS o;
    v_found := FOUND;
    IF v_found THEN
        v_outcome := CASE
            WHEN r.status = 'released' THEN jsonb_strip_nulls(jsonb_build_object('remaining_microcents', r."remaining", 'returned_microcents', r."returned")) || jsonb_build_object('status', 'released')
            ELSE NULL END;
    ELSE
        v_outcome := NULL;
    END IF;
    IF v_outcome IS NULL THEN
        -- Not final: the statement wrote nothing; take the claim back.
        SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_unclaim_585b5c5e_s102008"(a_tenant_id, a_ikey) AS u;
        IF v_count <> 1 THEN
            PERFORM "ledger".invariant_failed('a keyed call could not take back its own claim');
        END IF;
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb, NULL::text, NULL::text, NULL::bigint;
        RETURN;
    END IF;
    SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_record_c5b44324_s102008"(a_tenant_id, v_outcome, a_ikey) AS w;
    IF v_count <> 1 THEN
        PERFORM "ledger".invariant_failed('a keyed call recorded its outcome on ' || v_count || ' keys');
    END IF;
    IF v_found THEN
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, r."status", r."tenant_id", r."remaining";
    ELSE
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$shard$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_adjust_cccfc88a(p_tenant_id text, p_amount bigint, p_ikey text, p_reason text, p_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $routed$
DECLARE
    anchor bigint := get_shard_id_for_distribution_column(
        '"ledger".tenants'::regclass, $1);
    inner_function text := 'routed_keyed_adjust_cccfc88a_s' || anchor;
BEGIN
    -- No guard of its own: each shard function it calls takes the shard
    -- lock and checks the placement (the first one's lock holds until COMMIT).
    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function
               AND pronamespace = '"ledger"'::regnamespace) THEN
        RETURN QUERY EXECUTE 'SELECT * FROM "ledger".'
            || quote_ident(inner_function) || '($1, $2, $3, $4, $5)'
            USING $1, $2, $3, $4, $5;
    ELSE
        -- No function for this shard group (a split since distribute):
        -- nothing done, the ledger runs the three statements.
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb,
            NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$routed$;

CREATE OR REPLACE FUNCTION "ledger".routed_keyed_adjust_cccfc88a_s102008(a_tenant_id text, a_amount bigint, a_ikey text, a_reason text, a_request_hash bytea)
RETURNS TABLE("ledger_answer" text, "ledger_request_hash" bytea, "ledger_outcome" jsonb, "status" text, "tenant_id" text, "remaining" bigint) LANGUAGE plpgsql VOLATILE AS $shard$
#variable_conflict use_column
DECLARE
    v_claimed boolean;
    v_found boolean;
    v_outcome jsonb;
    v_count bigint;
    r record;
BEGIN
    SELECT c.claimed INTO v_claimed FROM "ledger"."routed_idempotency_claim_f9e5aff7_s102008"(a_tenant_id, a_ikey, a_request_hash) AS c;
    IF v_claimed IS NULL THEN
        -- Claimed before (or by a concurrent duplicate, whose transaction the claim
        -- waited for): its request hash and outcome; Python checks and replays.
        RETURN QUERY SELECT 'replay'::text, k.request_hash, k.outcome, NULL::text, NULL::text, NULL::bigint
            FROM "ledger"."routed_idempotency_read_844f0525_s102008"(a_tenant_id, a_ikey) AS k;
        RETURN;
    END IF;
    SELECT * INTO r FROM "ledger"."routed_adjust_135f013b_s102008"(a_tenant_id, a_amount, a_ikey, a_reason) AS o;
    v_found := FOUND;
    IF v_found THEN
        v_outcome := CASE
            WHEN r.status = 'adjusted' THEN jsonb_strip_nulls(jsonb_build_object('adjusted_microcents', a_amount, 'new_initial_microcents', r."new_initial", 'remaining_microcents', r."remaining")) || jsonb_build_object('status', 'adjusted')
            WHEN r.status = 'insufficient' THEN jsonb_strip_nulls(jsonb_build_object('remaining_microcents', r."remaining", 'required_microcents', (-a_amount))) || jsonb_build_object('status', 'insufficient')
            WHEN r.status = 'overflow' THEN jsonb_build_object('status', 'overflow')
            ELSE NULL END;
    ELSE
        v_outcome := jsonb_build_object('status', 'missing_tenant');
    END IF;
    IF v_outcome IS NULL THEN
        -- Not final: the statement wrote nothing; take the claim back.
        SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_unclaim_585b5c5e_s102008"(a_tenant_id, a_ikey) AS u;
        IF v_count <> 1 THEN
            PERFORM "ledger".invariant_failed('a keyed call could not take back its own claim');
        END IF;
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb, NULL::text, NULL::text, NULL::bigint;
        RETURN;
    END IF;
    SELECT count(*) INTO v_count FROM "ledger"."routed_idempotency_record_c5b44324_s102008"(a_tenant_id, v_outcome, a_ikey) AS w;
    IF v_count <> 1 THEN
        PERFORM "ledger".invariant_failed('a keyed call recorded its outcome on ' || v_count || ' keys');
    END IF;
    IF v_found THEN
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, r."status", r."tenant_id", r."remaining";
    ELSE
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, NULL::text, NULL::text, NULL::bigint;
    END IF;
END
$shard$;
