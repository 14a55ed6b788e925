"""Nested budgets: a tree of tenants, and holds that reserve at every level.

Issue 24 (docs/nested.md, docs/design.md "Nested budgets"):

- ``tenants.parent_id``: the tenant's parent, NULL for a root. A foreign key to
  ``tenants`` (added NOT VALID, validated online). The trigger
  ``tenants_tree_guard`` (``tree_guard()``) refuses an unknown parent
  (SQLSTATE LG012), a cycle (LG010) and a tree deeper than
  ``MAX_DEPTH`` levels counting the root (LG011), whoever writes the column.
  It runs only when ``parent_id`` is written (``UPDATE OF parent_id``, and on
  INSERT only with a parent), so the hot path's UPDATEs never fire it. Tree
  changes serialise on one transaction-level advisory lock, so two moves
  cannot build a cycle between them.
- ``reservations.ancestor_ids`` / ``ancestor_periods``: the levels above the
  hold's tenant that the hold reserved at, nearest first, and each level's
  period index when the hold was placed. NULL for a flat hold (every hold
  before this revision), so flat statements tell the two apart from the hold
  row they already lock. Settlement acts at exactly these levels, even after
  ``set_parent`` has moved the subtree.
- ``tenants_parent_id_idx`` (CONCURRENTLY): children and subtree reads.
- ``nested_reserve`` and ``nested_settle`` (PL/pgSQL): the nested
  two-phase spend. They lock every level in one global order (tenant id
  order) before deciding; docs/design.md says why that keeps them free of
  deadlocks.

On Citus (out of scope for issue 24's first part) the foreign key and the
trigger are not created: Citus cannot keep either on a distributed table.
The Python API refuses nested calls on a distributed schema instead.

Zero-downtime: nullable columns without defaults (metadata only), the foreign
key NOT VALID then validated online, the index built CONCURRENTLY, functions
and a trigger that fires on no existing statement.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The deepest tree allowed, counting the root (ledger.MAX_TREE_DEPTH says the same).
MAX_DEPTH = 8
PARENT_INDEX = "tenants_parent_id_idx"
I64_MAX = 9223372036854775807


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def _without_citus(statement: str) -> str:
    """``statement`` in a DO block that skips it on a Citus schema (the offline script too)."""
    return f"""
        DO $do$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
                {statement};
            END IF;
        END
        $do$
    """


def upgrade() -> None:
    migrator.locked(_expand)
    migrator.online_step(
        lambda: op.execute(
            sa.text(
                _without_citus(
                    f'ALTER TABLE "{_schema()}".tenants VALIDATE CONSTRAINT tenants_parent_fkey'
                )
            )
        )
    )
    migrator.create_index(PARENT_INDEX, "tenants", "(parent_id) WHERE parent_id IS NOT NULL")


def _expand() -> None:
    s = _schema()
    q = f'"{s}"'
    op.execute(
        sa.text("""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
                PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
            END IF;
        END
        $$
    """)
    )
    # In the order writes lock them (revision 0006 says why).
    op.execute(sa.text(f"LOCK TABLE {q}.tenants, {q}.reservations IN ACCESS EXCLUSIVE MODE"))
    op.execute(sa.text(f'ALTER TABLE {q}.tenants ADD COLUMN parent_id text COLLATE "C"'))
    op.execute(sa.text(f'ALTER TABLE {q}.reservations ADD COLUMN ancestor_ids text[] COLLATE "C"'))
    op.execute(sa.text(f"ALTER TABLE {q}.reservations ADD COLUMN ancestor_periods bigint[]"))
    op.execute(
        sa.text(
            _without_citus(
                f"ALTER TABLE {q}.tenants ADD CONSTRAINT tenants_parent_fkey"
                f" FOREIGN KEY (parent_id) REFERENCES {q}.tenants (tenant_id) NOT VALID"
            )
        )
    )
    _tree_guard(q)
    _nested_reserve(q)
    _nested_settle(q)


def _tree_guard(q: str) -> None:
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.tree_guard() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            above integer;
            below integer;
            looped boolean;
        BEGIN
            IF NEW.parent_id IS NULL THEN
                RETURN NEW;
            END IF;
            -- One tree change at a time, ledger-wide: two moves checked at once
            -- could each see no cycle and together make one.
            PERFORM pg_catalog.pg_advisory_xact_lock(
                pg_catalog.hashtext(TG_TABLE_SCHEMA || '.tenants.parent_id'));
            IF NOT EXISTS (SELECT 1 FROM {q}.tenants WHERE tenant_id = NEW.parent_id) THEN
                RAISE EXCEPTION 'unknown parent %', quote_literal(NEW.parent_id)
                    USING ERRCODE = 'LG012';
            END IF;
            -- The parent's path to its root (bounded: a tree is never deeper).
            WITH RECURSIVE up(id, n) AS (
                SELECT NEW.parent_id, 1
                UNION ALL
                SELECT t.parent_id, up.n + 1
                FROM up JOIN {q}.tenants AS t ON t.tenant_id = up.id
                WHERE t.parent_id IS NOT NULL AND up.n <= {MAX_DEPTH} AND up.id <> NEW.tenant_id
            )
            SELECT max(n), bool_or(id = NEW.tenant_id) INTO above, looped FROM up;
            IF looped THEN
                RAISE EXCEPTION 'tenant % cannot be placed under %: that is inside its own subtree',
                    quote_literal(NEW.tenant_id), quote_literal(NEW.parent_id)
                    USING ERRCODE = 'LG010';
            END IF;
            -- The levels of the subtree that moves, the tenant itself included.
            WITH RECURSIVE down(id, n) AS (
                SELECT NEW.tenant_id, 1
                UNION ALL
                SELECT t.tenant_id, down.n + 1
                FROM down JOIN {q}.tenants AS t ON t.parent_id = down.id
                WHERE down.n <= {MAX_DEPTH}
            )
            SELECT max(n) INTO below FROM down;
            IF above + below > {MAX_DEPTH} THEN
                RAISE EXCEPTION
                    'tenant % under % would make a tree of % levels; at most {MAX_DEPTH}',
                    quote_literal(NEW.tenant_id), quote_literal(NEW.parent_id), above + below
                    USING ERRCODE = 'LG011';
            END IF;
            RETURN NEW;
        END
        $$
    """)
    )
    op.execute(
        sa.text(
            _without_citus(
                f"CREATE TRIGGER tenants_tree_guard_insert BEFORE INSERT ON {q}.tenants"
                f" FOR EACH ROW WHEN (NEW.parent_id IS NOT NULL) EXECUTE FUNCTION {q}.tree_guard()"
            )
        )
    )
    op.execute(
        sa.text(
            _without_citus(
                f"CREATE TRIGGER tenants_tree_guard_update BEFORE UPDATE OF parent_id"
                f" ON {q}.tenants FOR EACH ROW"
                f" WHEN (NEW.parent_id IS DISTINCT FROM OLD.parent_id)"
                f" EXECUTE FUNCTION {q}.tree_guard()"
            )
        )
    )


def _nested_reserve(q: str) -> None:
    """``nested_reserve``: lock the path in tenant id order, decide nearest first, apply at once.

    Statements per call do not grow with the depth: one read of the path, one
    locking read (and a second walk to confirm the path), one read of the
    levels, one UPDATE of every level with its journal entries, one INSERT of
    the hold. The UPDATE of several rows is safe here because every row it
    touches is already locked by this transaction (in tenant id order).
    """
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.nested_reserve(
            p_tenant text, p_amount bigint, p_ttl_us bigint, p_expires_at timestamptz,
            p_ikey text
        ) RETURNS TABLE (status text, remaining bigint, reserved bigint, cap bigint,
                         reservation_id bigint, lapsed_holds boolean, tenant_id text,
                         limited_by text)
        LANGUAGE plpgsql AS $$
        DECLARE
            path text[];
            held text[] := '{{}}';
            periods bigint[];
            lvl {q}.tenants;
            refusing {q}.tenants;
            why text;
            refusal text;
            rid bigint;
            leaf_remaining bigint;
            lapsed boolean;
            seen integer;
        BEGIN
            -- Lock the tenant and every ancestor in one global order (tenant id),
            -- then walk the path again: once every tenant on it is locked, no
            -- parent on it can change, so the path is the one we decide on.
            LOOP
                WITH RECURSIVE up(id, n) AS (
                    SELECT t.tenant_id, 1 FROM {q}.tenants AS t WHERE t.tenant_id = p_tenant
                    UNION ALL
                    SELECT t.parent_id, up.n + 1
                    FROM up JOIN {q}.tenants AS t ON t.tenant_id = up.id
                    WHERE t.parent_id IS NOT NULL AND up.n < {MAX_DEPTH}
                )
                SELECT array_agg(id ORDER BY n) INTO path FROM up;
                IF path IS NULL THEN
                    RETURN;  -- no such tenant
                END IF;
                EXIT WHEN path <@ held;
                PERFORM 1 FROM {q}.tenants AS t WHERE t.tenant_id = ANY(path)
                ORDER BY t.tenant_id FOR NO KEY UPDATE;
                GET DIAGNOSTICS seen = ROW_COUNT;
                -- A role that cannot see an ancestor (row-level security) would
                -- reserve at part of the path: refuse instead.
                IF seen <> cardinality(path) THEN
                    RAISE EXCEPTION 'tenant % has an ancestor this role cannot see',
                        quote_literal(p_tenant) USING ERRCODE = '42501';
                END IF;
                held := held || path;
            END LOOP;
            -- Nearest first: a level due for renewal is renewed before anything
            -- is decided (the caller renews it, then calls again); otherwise the
            -- seed's checks in the seed's order, and the first refusing level decides.
            FOR lvl IN
                SELECT t.* FROM {q}.tenants AS t
                JOIN unnest(path) WITH ORDINALITY AS p(id, n) ON t.tenant_id = p.id
                ORDER BY p.n
            LOOP
                IF lvl.renews_at <= now() THEN
                    RETURN QUERY SELECT 'renew'::text, NULL::bigint, NULL::bigint, NULL::bigint,
                        NULL::bigint, false, lvl.tenant_id, lvl.tenant_id;
                    RETURN;
                END IF;
                IF refusal IS NULL THEN
                    why := CASE
                        WHEN lvl.reserved_microcents > {I64_MAX} - p_amount THEN 'overflow'
                        WHEN lvl.max_reserved_microcents > 0
                             AND lvl.reserved_microcents > lvl.max_reserved_microcents - p_amount
                            THEN 'exposure_limit_exceeded'
                        WHEN lvl.remaining_microcents < p_amount THEN 'insufficient'
                    END;
                    IF why IS NOT NULL THEN
                        refusal := why;
                        refusing := lvl;
                    END IF;
                END IF;
            END LOOP;
            IF refusal IS NOT NULL THEN
                -- Lapsed holds through the refusing level must not refuse: the
                -- caller expires them and decides again.
                lapsed := EXISTS (
                    SELECT 1 FROM {q}.reservations AS r
                    WHERE r.expires_at <= now()
                      AND (r.tenant_id = refusing.tenant_id
                           OR refusing.tenant_id = ANY(r.ancestor_ids)));
                IF NOT lapsed THEN
                    INSERT INTO {q}.refusals (tenant_id, op, status, amount_microcents)
                    VALUES (p_tenant, 'reserve', refusal, p_amount);
                END IF;
                RETURN QUERY SELECT refusal, refusing.remaining_microcents,
                    refusing.reserved_microcents, refusing.max_reserved_microcents,
                    NULL::bigint, lapsed, p_tenant, refusing.tenant_id;
                RETURN;
            END IF;
            -- Every level fits: reserve at each, one entry in each level's chain.
            rid := nextval('{q}.reservation_id_seq');
            WITH applied AS (
                UPDATE {q}.tenants AS t
                SET remaining_microcents = t.remaining_microcents - p_amount,
                    reserved_microcents = t.reserved_microcents + p_amount,
                    journal_seq = t.journal_seq + 1,
                    journal_head = {q}.journal_hash(
                        t.journal_head, t.tenant_id, t.journal_seq + 1, 'reserve', rid,
                        p_amount, NULL, t.initial_microcents,
                        t.remaining_microcents - p_amount, t.reserved_microcents + p_amount,
                        t.committed_microcents, t.max_reserved_microcents, now(),
                        CASE WHEN t.tenant_id = p_tenant THEN p_ikey END, t.period_index, NULL)
                WHERE t.tenant_id = ANY(path)
                RETURNING t.*
            ), logged AS (
                INSERT INTO {q}.journal (
                    tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
                    initial_microcents, remaining_microcents, reserved_microcents,
                    committed_microcents, max_reserved_microcents, idempotency_key,
                    created_at, entry_hash, period_index)
                SELECT j.tenant_id, j.journal_seq, 'reserve', rid, p_amount, NULL,
                       j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
                       j.committed_microcents, j.max_reserved_microcents,
                       CASE WHEN j.tenant_id = p_tenant THEN p_ikey END, now(),
                       j.journal_head, j.period_index
                FROM applied AS j
            )
            SELECT array_agg(a.period_index ORDER BY array_position(path, a.tenant_id)),
                   max(a.remaining_microcents) FILTER (WHERE a.tenant_id = p_tenant),
                   count(*)
            INTO periods, leaf_remaining, seen
            FROM applied AS a;
            IF seen <> cardinality(path) THEN
                PERFORM {q}.invariant_failed('a nested reserve missed one of its levels');
            END IF;
            INSERT INTO {q}.reservations (tenant_id, reservation_id, amount_microcents, expires_at,
                                          period_index, ancestor_ids, ancestor_periods)
            VALUES (p_tenant, rid, p_amount,
                    CASE WHEN p_ttl_us IS NOT NULL
                         THEN now() + p_ttl_us * interval '1 microsecond'
                         ELSE p_expires_at END,
                    periods[1], path[2:], periods[2:]);
            RETURN QUERY SELECT 'reserved'::text, leaf_remaining, NULL::bigint, NULL::bigint, rid,
                false, p_tenant, NULL::text;
        END
        $$
    """)
    )


def _nested_settle(q: str) -> None:
    """``nested_settle``: commit, release or expire a hold at exactly its recorded levels.

    The hold row first, then its levels in tenant id order, then one read of
    the levels nearest first, then one UPDATE of every level (each with the
    period the hold recorded for it) with its journal entries, then the delete.
    """
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.nested_settle(
            p_kind text, p_rid bigint, p_actual bigint, p_tenant text, p_ikey text
        ) RETURNS TABLE (status text, remaining bigint, returned bigint, tenant_id text,
                         reservation_id bigint, limited_by text)
        LANGUAGE plpgsql AS $$
        DECLARE
            h {q}.reservations;
            levels text[];
            periods bigint[];
            lvl {q}.tenants;
            why text;
            limiting text;
            spent bigint;
            unspent bigint;
            leaf_remaining bigint;
            moved integer;
        BEGIN
            -- The hold first, then its levels in tenant id order: the order every
            -- settlement and batch locks in.
            SELECT * INTO h FROM {q}.reservations AS r
            WHERE r.reservation_id = p_rid AND (p_tenant IS NULL OR r.tenant_id = p_tenant)
            FOR UPDATE;
            IF NOT FOUND THEN
                RETURN;  -- settled, expired or never made
            END IF;
            IF p_kind <> 'expire' AND h.expires_at <= now() THEN
                RETURN QUERY SELECT 'lapsed'::text, NULL::bigint, NULL::bigint, h.tenant_id,
                    p_rid, NULL::text;
                RETURN;
            END IF;
            levels := ARRAY[h.tenant_id] || COALESCE(h.ancestor_ids, '{{}}');
            periods := ARRAY[h.period_index] || COALESCE(h.ancestor_periods, '{{}}');
            PERFORM 1 FROM {q}.tenants AS t WHERE t.tenant_id = ANY(levels)
            ORDER BY t.tenant_id FOR NO KEY UPDATE;
            GET DIAGNOSTICS moved = ROW_COUNT;
            IF moved <> cardinality(levels) THEN
                RAISE EXCEPTION 'hold % reserved at a level this role cannot see', p_rid
                    USING ERRCODE = '42501';
            END IF;
            spent := CASE WHEN p_kind = 'commit' THEN p_actual ELSE 0 END;
            unspent := h.amount_microcents - spent;
            FOR lvl IN
                SELECT t.* FROM {q}.tenants AS t
                JOIN unnest(levels) WITH ORDINALITY AS p(id, n) ON t.tenant_id = p.id
                ORDER BY p.n
            LOOP
                IF lvl.renews_at <= now() THEN
                    RETURN QUERY SELECT 'renew'::text, NULL::bigint, NULL::bigint, lvl.tenant_id,
                        p_rid, lvl.tenant_id;
                    RETURN;
                END IF;
                IF why IS NULL AND p_kind = 'commit' THEN
                    why := CASE
                        WHEN lvl.committed_microcents > {I64_MAX} - p_actual THEN 'overflow'
                        WHEN p_actual > h.amount_microcents
                             AND lvl.remaining_microcents < p_actual - h.amount_microcents
                            THEN 'overrun'
                    END;
                    IF why IS NOT NULL THEN
                        leaf_remaining := lvl.remaining_microcents;
                        limiting := lvl.tenant_id;
                    END IF;
                END IF;
            END LOOP;
            IF why IS NOT NULL THEN
                INSERT INTO {q}.refusals (tenant_id, op, status, amount_microcents)
                VALUES (h.tenant_id, 'commit', why, p_actual);
                RETURN QUERY SELECT why, leaf_remaining, NULL::bigint, h.tenant_id, p_rid,
                    limiting;
                RETURN;
            END IF;
            -- Each level forfeits the unspent part under its own period rule.
            WITH l AS (
                SELECT * FROM unnest(levels, periods) AS l(id, period)
            ), applied AS (
                UPDATE {q}.tenants AS t
                SET initial_microcents = t.initial_microcents
                        - {q}.forfeited(l.period, t.period_index, unspent),
                    remaining_microcents = t.remaining_microcents + unspent
                        - {q}.forfeited(l.period, t.period_index, unspent),
                    reserved_microcents = t.reserved_microcents - h.amount_microcents,
                    committed_microcents = t.committed_microcents + spent,
                    journal_seq = t.journal_seq + 1,
                    journal_head = {q}.journal_hash(
                        t.journal_head, t.tenant_id, t.journal_seq + 1, p_kind, p_rid,
                        CASE WHEN p_kind = 'commit' THEN p_actual ELSE h.amount_microcents END,
                        CASE WHEN p_kind = 'commit' THEN h.amount_microcents END,
                        t.initial_microcents - {q}.forfeited(l.period, t.period_index, unspent),
                        t.remaining_microcents + unspent
                            - {q}.forfeited(l.period, t.period_index, unspent),
                        t.reserved_microcents - h.amount_microcents,
                        t.committed_microcents + spent,
                        t.max_reserved_microcents, now(),
                        CASE WHEN t.tenant_id = h.tenant_id THEN p_ikey END, l.period, NULL)
                FROM l
                WHERE t.tenant_id = l.id
                RETURNING t.*, l.period AS hold_period
            ), logged AS (
                INSERT INTO {q}.journal (
                    tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
                    initial_microcents, remaining_microcents, reserved_microcents,
                    committed_microcents, max_reserved_microcents, idempotency_key,
                    created_at, entry_hash, period_index)
                SELECT j.tenant_id, j.journal_seq, p_kind, p_rid,
                       CASE WHEN p_kind = 'commit' THEN p_actual ELSE h.amount_microcents END,
                       CASE WHEN p_kind = 'commit' THEN h.amount_microcents END,
                       j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
                       j.committed_microcents, j.max_reserved_microcents,
                       CASE WHEN j.tenant_id = h.tenant_id THEN p_ikey END, now(),
                       j.journal_head, j.hold_period
                FROM applied AS j
            )
            SELECT count(*), max(a.remaining_microcents) FILTER (WHERE a.tenant_id = h.tenant_id)
            INTO moved, leaf_remaining
            FROM applied AS a;
            IF moved <> cardinality(levels) THEN
                PERFORM {q}.invariant_failed('a nested settlement missed one of its levels');
            END IF;
            DELETE FROM {q}.reservations AS r
            WHERE r.reservation_id = p_rid AND r.tenant_id = h.tenant_id;
            GET DIAGNOSTICS moved = ROW_COUNT;
            IF moved <> 1 THEN
                PERFORM {q}.invariant_failed('a nested settlement did not remove its hold');
            END IF;
            RETURN QUERY SELECT CASE p_kind WHEN 'commit' THEN 'committed'
                                            WHEN 'release' THEN 'released' ELSE 'expired' END,
                leaf_remaining,
                CASE WHEN p_kind = 'commit' THEN NULL::bigint ELSE h.amount_microcents END,
                h.tenant_id, p_rid, NULL::text;
        END
        $$
    """)
    )


def downgrade() -> None:
    # tenants_parent_id_idx goes with its column: dropping the column takes
    # tenants' exclusive lock anyway, so a concurrent drop first would only wait
    # for every reader of tenants without a lock timeout.
    migrator.locked(_contract)


def _contract() -> None:
    s = _schema()
    q = f'"{s}"'
    op.execute(sa.text(f"LOCK TABLE {q}.tenants, {q}.reservations IN ACCESS EXCLUSIVE MODE"))
    op.execute(sa.text(f"DROP FUNCTION {q}.nested_settle(text, bigint, bigint, text, text)"))
    op.execute(
        sa.text(f"DROP FUNCTION {q}.nested_reserve(text, bigint, bigint, timestamptz, text)")
    )
    # Not made on Citus (upgrade), and Citus refuses even DROP TRIGGER IF EXISTS
    # on a distributed table.
    for trigger in ("tenants_tree_guard_update", "tenants_tree_guard_insert"):
        op.execute(sa.text(_without_citus(f"DROP TRIGGER IF EXISTS {trigger} ON {q}.tenants")))
    op.execute(sa.text(f"DROP FUNCTION {q}.tree_guard()"))
    op.execute(
        sa.text(
            "-- squawk-ignore ban-drop-column\n"
            f"ALTER TABLE {q}.reservations DROP COLUMN ancestor_periods"
        )
    )
    op.execute(
        sa.text(
            "-- squawk-ignore ban-drop-column\n"
            f"ALTER TABLE {q}.reservations DROP COLUMN ancestor_ids"
        )
    )
    op.execute(
        sa.text(f"-- squawk-ignore ban-drop-column\nALTER TABLE {q}.tenants DROP COLUMN parent_id")
    )
