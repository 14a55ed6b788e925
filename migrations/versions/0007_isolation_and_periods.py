"""Tenant isolation that holds for every role, and periods that never come back.

Fixes of issue 22 (an adversarial review) that live in the schema:

- **One rule for "who is confined to a tenant".** ``caller_is_tenant_scoped()``
  is true for a member of the group role ``ledger_tenant_scoped`` (``ledger roles
  isolate`` grants it) that is neither a superuser nor ``BYPASSRLS``;
  ``tenant_visible(tenant_id)`` is "not scoped, or the tenant named by
  ``SET LOCAL ledger.tenant_id``". Both are SQL-standard function bodies
  (``RETURN``), parsed once here, so a caller's ``search_path`` cannot change
  what they mean, and the planner still inlines them.
- **The audit views filter by that rule** and are ``security_barrier``: they
  still run with their owner's rights (so the auditor needs no table grants),
  but a scoped role sees only its own tenant's rows through them, and no
  ledger-wide row (certificates). docs/deployment.md says why this and not
  ``security_invoker``.
- **Row-level security policies** made by the old ``ledger roles isolate`` (a
  ``<table>_others`` catch-all naming only the latest role, OR-ed with the
  per-role ones, so isolating a second role freed the first) are replaced by
  one policy per table on the same rule; their roles join the group.
- **As-of checkpoints are written by the owner only**, through the
  SECURITY DEFINER function ``asof_checkpoint()``, which computes every row
  from the journal itself: no application or tenant role can insert a row the
  as-of answers would trust.
- **Periods never come back** (docs/periods.md): ``allowances.index_offset``
  numbers a new schedule's periods after every index the tenant has used, so
  a hold from an ended period is never taken for a current one;
  ``tenants.period_high`` remembers the highest index entered.
- **A renewal never overflows**: the carry, then the allowance, are cut so
  that ``initial`` stays within 2^63-1; the entry records what was credited.
- **The sweepers skip a tenant they cannot renew**: ``try_renew_tenant``
  reports the error instead of raising it.
- **A commit that a restore undid is not refundable** (``refund_commit``).

Zero-downtime: the two columns are metadata-only (nullable, or a constant
default); functions and views are replaced in place with the same signatures
and columns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The group role whose members are confined to one tenant (cluster-wide).
SCOPED_GROUP = "ledger_tenant_scoped"
#: Tables carrying tenant_id: one row-level security policy each, when isolation is on.
TENANT_TABLES = (
    "tenants",
    "reservations",
    "journal",
    "idempotency_keys",
    "detached_tenants",
    "allowances",
    "asof_checkpoints",
    "refusals",
    "certificate_checkpoints",
)
VIEWS = (
    "balances",
    "conservation_violations",
    "open_holds",
    "reserved_mismatches",
    "certificate_history",
    "journal_entries",
)
REFUND_SIGNATURE = "text, bigint, bigint, text, text"
SET_ALLOWANCE_SIGNATURE = "text, bigint, bigint, bigint, timestamptz, text, bigint, bigint, text"


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def _revision(rev: str) -> Any:
    """An earlier revision's module, whose definitions a downgrade puts back."""
    script = context.script.get_revision(rev)
    assert script is not None and script.module is not None
    return script.module


def upgrade() -> None:
    migrator.locked(_expand)


def _expand() -> None:
    s = _schema()
    q = f'"{s}"'
    _one_connection_per_node_on_citus()
    # Writes lock tenants first, set_allowance then allowances: the same order.
    op.execute(sa.text(f"LOCK TABLE {q}.tenants, {q}.allowances IN ACCESS EXCLUSIVE MODE"))
    op.add_column("tenants", sa.Column("period_high", sa.BigInteger(), nullable=True), schema=s)
    op.add_column(
        "allowances",
        sa.Column("index_offset", sa.BigInteger(), nullable=False, server_default="0"),
        schema=s,
    )
    _scope_functions(q)
    _views(q)
    _legacy_policies(q)
    _asof_checkpoint(q)
    _period_functions(q)
    _refund(q)
    _least_privilege(q)


def _one_connection_per_node_on_citus() -> None:
    """As revision 0006: shard DDL and new functions share one transaction on Citus."""
    op.execute(
        sa.text("""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
                PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
            END IF;
        END
        $$
    """)
    )


# ----------------------------------------------------------------- isolation


def _scope_functions(q: str) -> None:
    """The one definition of a tenant-scoped caller, for views and policies alike.

    ``pg_has_role(..., 'MEMBER')`` is true for a superuser and every role, so
    superusers and BYPASSRLS roles (which row-level security lets through
    anyway) are excluded explicitly. The group role may not exist (isolation
    never enabled): then nobody is scoped.
    """
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.caller_is_tenant_scoped() RETURNS boolean
        LANGUAGE sql STABLE PARALLEL SAFE
        RETURN EXISTS (
                   SELECT 1 FROM pg_catalog.pg_roles AS g
                   WHERE g.rolname = '{SCOPED_GROUP}'
                     AND pg_catalog.pg_has_role(CURRENT_USER, g.oid, 'MEMBER'))
               AND NOT EXISTS (
                   SELECT 1 FROM pg_catalog.pg_roles AS u
                   WHERE u.rolname = CURRENT_USER AND (u.rolsuper OR u.rolbypassrls))
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.tenant_visible(tenant text) RETURNS boolean
        LANGUAGE sql STABLE PARALLEL SAFE
        RETURN tenant = pg_catalog.current_setting('ledger.tenant_id', true)
               OR NOT {q}.caller_is_tenant_scoped()
    """)
    )


def _views(q: str) -> None:
    """The audit views of revision 0003, with the visibility rule and a security barrier.

    ``security_barrier`` keeps a scoped caller's own WHERE clauses (a function
    that raises with the row's values, say) from running before the rule.
    """
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE VIEW {q}.balances WITH (security_barrier) AS
        SELECT t.tenant_id, t.initial_microcents, t.remaining_microcents,
               t.reserved_microcents, t.committed_microcents, t.max_reserved_microcents,
               (SELECT count(*) FROM {q}.reservations AS r WHERE r.tenant_id = t.tenant_id)
                   AS open_holds,
               t.remaining_microcents::numeric + t.reserved_microcents
                   + t.committed_microcents = t.initial_microcents AS balanced,
               t.journal_seq AS journal_entries, t.created_at
        FROM {q}.tenants AS t
        WHERE {q}.tenant_visible(t.tenant_id)
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE VIEW {q}.conservation_violations WITH (security_barrier) AS
        SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
               committed_microcents,
               remaining_microcents::numeric + reserved_microcents + committed_microcents
                   - initial_microcents AS delta_microcents
        FROM {q}.tenants
        WHERE {q}.tenant_visible(tenant_id)
          AND (remaining_microcents::numeric + reserved_microcents + committed_microcents
                  <> initial_microcents
               OR least(initial_microcents, remaining_microcents, reserved_microcents,
                        committed_microcents) < 0)
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE VIEW {q}.open_holds WITH (security_barrier) AS
        SELECT tenant_id, reservation_id, amount_microcents, created_at, expires_at,
               now() - created_at AS age,
               COALESCE(expires_at <= now(), false) AS lapsed
        FROM {q}.reservations
        WHERE {q}.tenant_visible(tenant_id)
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE VIEW {q}.reserved_mismatches WITH (security_barrier) AS
        SELECT t.tenant_id, t.reserved_microcents,
               COALESCE(h.total, 0) AS open_holds_microcents,
               t.reserved_microcents - COALESCE(h.total, 0) AS difference_microcents
        FROM {q}.tenants AS t
        LEFT JOIN (SELECT tenant_id, sum(amount_microcents) AS total
                   FROM {q}.reservations GROUP BY tenant_id) AS h USING (tenant_id)
        WHERE {q}.tenant_visible(t.tenant_id)
          AND t.reserved_microcents <> COALESCE(h.total, 0)
    """)
    )
    # Certificates speak for the whole ledger: a scoped caller sees none.
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE VIEW {q}.certificate_history WITH (security_barrier) AS
        SELECT certificate_id, created_at, snapshot_version,
               encode(ledger_digest, 'hex') AS ledger_digest_hex, tenant_count,
               active_reservations, conservation_balanced, total_initial_microcents,
               total_committed_microcents, aggregate_totals_representable,
               committed_since_last_certificate, baseline_before_microcents,
               baseline_after_microcents, encode(journal_root, 'hex') AS journal_root_hex
        FROM {q}.certificates
        WHERE NOT {q}.caller_is_tenant_scoped()
    """)
    )
    # The rule is applied before the window, so running totals see only visible rows
    # (a tenant's window holds only its own rows in any case).
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE VIEW {q}.journal_entries WITH (security_barrier) AS
        SELECT tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
               initial_microcents, remaining_microcents, reserved_microcents,
               committed_microcents, max_reserved_microcents,
               remaining_microcents - lag(remaining_microcents, 1, 0::bigint) OVER w
                   AS remaining_change_microcents,
               sum(CASE WHEN op = 'top_up' THEN amount_microcents ELSE 0 END) OVER w
                   AS topped_up_total_microcents,
               sum(CASE WHEN op = 'commit' THEN amount_microcents ELSE 0 END) OVER w
                   AS spent_total_microcents,
               idempotency_key, created_at, encode(entry_hash, 'hex') AS entry_hash_hex
        FROM (SELECT * FROM {q}.journal WHERE {q}.tenant_visible(tenant_id)) AS journal
        WINDOW w AS (PARTITION BY tenant_id ORDER BY seq)
    """)
    )


def _legacy_policies(q: str) -> None:
    """Replace the policies the old ``ledger roles isolate`` made, if there are any.

    Each old call made ``<table>_<role>_isolation`` for its role and replaced a
    shared ``<table>_others`` that exempted only that role, so every earlier
    role saw every tenant again. Here the old policies go, their roles join
    the group, and each table gets the one policy ``tenant_scope`` on the
    visibility rule (what ``ledger.roles.enable_row_level_security`` makes).
    Without old policies this does nothing: isolation stays off until asked for.
    """
    tables = ", ".join(f"'{t}'" for t in TENANT_TABLES)
    op.execute(
        sa.text(f"""
        DO $$
        DECLARE
            p record;
            member text;
            tbl text;
        BEGIN
            IF NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_policies
                WHERE schemaname = {_literal(q)} AND policyname LIKE '%\\_others'
            ) THEN
                RETURN;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{SCOPED_GROUP}')
            THEN
                CREATE ROLE {SCOPED_GROUP} NOLOGIN;
            END IF;
            FOR p IN
                SELECT tablename, policyname, roles FROM pg_catalog.pg_policies
                WHERE schemaname = {_literal(q)} AND tablename IN ({tables})
                  AND (policyname LIKE '%\\_others' OR policyname LIKE '%\\_isolation')
            LOOP
                IF p.policyname LIKE '%\\_isolation' THEN
                    FOREACH member IN ARRAY p.roles LOOP
                        IF member <> 'public' THEN
                            EXECUTE format('GRANT {SCOPED_GROUP} TO %I', member);
                        END IF;
                    END LOOP;
                END IF;
                EXECUTE format('DROP POLICY %I ON {q}.%I', p.policyname, p.tablename);
            END LOOP;
            FOREACH tbl IN ARRAY ARRAY[{tables}] LOOP
                EXECUTE format('ALTER TABLE {q}.%I ENABLE ROW LEVEL SECURITY', tbl);
                EXECUTE format(
                    'CREATE POLICY tenant_scope ON {q}.%I '
                    'USING ({q}.tenant_visible(tenant_id)) '
                    'WITH CHECK ({q}.tenant_visible(tenant_id))', tbl);
            END LOOP;
        END
        $$
    """)
    )


def _literal(quoted_schema: str) -> str:
    """The schema's name as a SQL string literal ('ledger'), from its quoted form."""
    return "'" + quoted_schema.strip('"').replace("'", "''") + "'"


def _asof_checkpoint(q: str) -> None:
    """``asof_checkpoint()``: the statement ledger/sql/asof.sql had, as the owner.

    The as-of queries trust ``asof_checkpoints`` to shorten their scans, so
    only rows computed from the journal may exist there. The function computes
    them itself (every value from the journal and the chain heads, nothing
    from the caller), runs with its owner's rights, and EXECUTE is granted to
    the application role alone; nobody else may write the table.
    """
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.asof_checkpoint() RETURNS TABLE (tenants bigint, entries numeric)
        LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        WITH ids AS (
            SELECT tenant_id, journal_seq AS head FROM {q}.tenants
            UNION ALL
            SELECT tenant_id, journal_seq FROM {q}.detached_tenants
        ), fresh AS MATERIALIZED (
            SELECT i.tenant_id, i.head, COALESCE(p.journal_seq, 0) AS prev_seq,
                   p.effective_at AS prev_at, COALESCE(p.commits, 0) AS commits,
                   COALESCE(p.committed_microcents, 0) AS committed,
                   COALESCE(p.refunds, 0) AS refunds,
                   COALESCE(p.refunded_microcents, 0) AS refunded
            FROM ids AS i
            LEFT JOIN LATERAL (
                SELECT * FROM {q}.asof_checkpoints AS m
                WHERE m.tenant_id = i.tenant_id
                ORDER BY m.journal_seq DESC LIMIT 1
            ) AS p ON true
            WHERE i.head > COALESCE(p.journal_seq, 0)
        ), marked AS (
            INSERT INTO {q}.asof_checkpoints (
                tenant_id, journal_seq, effective_at, commits, committed_microcents, refunds,
                refunded_microcents)
            SELECT f.tenant_id, f.head, GREATEST(f.prev_at, n.latest), f.commits + n.commits,
                   f.committed + n.committed, f.refunds + n.refunds, f.refunded + n.refunded
            FROM fresh AS f
            CROSS JOIN LATERAL (
                SELECT max(j.created_at) AS latest,
                       count(*) FILTER (WHERE j.op = 'commit') AS commits,
                       COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'commit'), 0)
                           AS committed,
                       count(*) FILTER (WHERE j.op = 'refund') AS refunds,
                       COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'refund'), 0)
                           AS refunded
                FROM {q}.journal AS j
                WHERE j.tenant_id = f.tenant_id AND j.seq > f.prev_seq AND j.seq <= f.head
            ) AS n
            ON CONFLICT (tenant_id, journal_seq) DO NOTHING
            RETURNING tenant_id
        )
        SELECT (SELECT count(*) FROM marked),
               (SELECT COALESCE(sum(head - prev_seq), 0) FROM fresh)
        $$
    """)
    )
    op.execute(sa.text(f"REVOKE ALL ON FUNCTION {q}.asof_checkpoint() FROM PUBLIC"))


def _least_privilege(q: str) -> None:
    """Take back, from every role, grants no ledger operation uses (docs/deployment.md).

    ``ledger roles create`` / ``isolate`` now grant exactly what each role
    needs; roles made by earlier versions held more: ``setval`` on the id
    sequences (hold ids could repeat), DELETE and INSERT on the baseline row,
    UPDATE on holds (only locked: UPDATE on created_at stays), writes to the as-of cache. The owner
    keeps everything; nothing here touches it.
    """
    op.execute(
        sa.text(f"""
        DO $$
        DECLARE
            r record;
        BEGIN
            FOR r IN
                SELECT DISTINCT grantee FROM information_schema.role_table_grants
                WHERE table_schema = {_literal(q)}
                  AND grantee <> 'PUBLIC'
                  AND grantee NOT IN (SELECT pg_catalog.pg_get_userbyid(c.relowner)
                                      FROM pg_catalog.pg_class AS c
                                      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                                      WHERE n.nspname = {_literal(q)})
            LOOP
                EXECUTE format('REVOKE INSERT, DELETE, TRUNCATE ON {q}.certificate_baseline '
                               'FROM %I', r.grantee);
                IF has_table_privilege(r.grantee, '{q}.reservations', 'UPDATE') THEN
                    -- SELECT ... FOR UPDATE needs UPDATE on one column: the one no rule reads
                    EXECUTE format('REVOKE UPDATE, TRUNCATE ON {q}.reservations FROM %I',
                                   r.grantee);
                    EXECUTE format('GRANT UPDATE (created_at) ON {q}.reservations TO %I',
                                   r.grantee);
                END IF;
                EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {q}.asof_checkpoints '
                               'FROM %I', r.grantee);
                EXECUTE format('REVOKE UPDATE ON SEQUENCE {q}.reservation_id_seq, '
                               '{q}.checkpoint_id_seq FROM %I', r.grantee);
            END LOOP;
        END
        $$
    """)
    )


# ------------------------------------------------------------------- periods


def _period_functions(q: str) -> None:
    """Renewal that cannot overflow, and schedules whose periods never come back.

    ``enter_period`` also remembers the highest index entered
    (``tenants.period_high``). ``renew_tenant`` cuts the carry, then the
    allowance, so that ``initial = reserved + committed + carry + allowance``
    stays within 2^63-1 (the entry records what was carried and credited, so
    replay checks the cut amounts). ``set_allowance`` numbers a new schedule's
    periods after ``period_high`` (``allowances.index_offset``): period
    ``k`` of the tenant is period ``k - index_offset`` of the schedule.
    ``try_renew_tenant`` is ``renew_tenant`` for the sweepers: an error is
    returned, not raised, so one tenant cannot stop a sweep; conflicts that a
    retry resolves (serialization, deadlock, lock timeout, cancel) still raise.
    """
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE FUNCTION {q}.enter_period(
            tenant text, period bigint, allowance bigint, carry bigint, next_renewal timestamptz,
            at timestamptz, ikey text, why text
        ) RETURNS {q}.tenants
        LANGUAGE plpgsql AS $$
        DECLARE
            t {q}.tenants;
        BEGIN
            -- remaining := carry + allowance; initial moves by the same difference.
            UPDATE {q}.tenants AS x
            SET initial_microcents = x.initial_microcents
                    + (carry + allowance - x.remaining_microcents),
                remaining_microcents = carry + allowance,
                journal_seq = x.journal_seq + 1,
                journal_head = {q}.journal_hash(
                    x.journal_head, x.tenant_id, x.journal_seq + 1, 'renew', NULL, allowance,
                    carry, x.initial_microcents + (carry + allowance - x.remaining_microcents),
                    carry + allowance, x.reserved_microcents, x.committed_microcents,
                    x.max_reserved_microcents, at, ikey, period, why),
                period_index = period,
                period_high = greatest(x.period_high, period),
                renews_at = next_renewal
            WHERE x.tenant_id = tenant
            RETURNING x.* INTO t;
            INSERT INTO {q}.journal (
                tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
                initial_microcents, remaining_microcents, reserved_microcents,
                committed_microcents, max_reserved_microcents, idempotency_key, created_at,
                entry_hash, period_index, reason)
            VALUES (t.tenant_id, t.journal_seq, 'renew', NULL, allowance, carry,
                    t.initial_microcents, t.remaining_microcents, t.reserved_microcents,
                    t.committed_microcents, t.max_reserved_microcents, ikey, at,
                    t.journal_head, period, why);
            RETURN t;
        END
        $$
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE FUNCTION {q}.renew_tenant(tenant text) RETURNS integer
        LANGUAGE plpgsql AS $$
        DECLARE
            t {q}.tenants;
            a {q}.allowances;
            k bigint;
            room bigint;
            carry bigint;
            renewed integer := 0;
        BEGIN
            SELECT * INTO t FROM {q}.tenants WHERE tenant_id = tenant FOR NO KEY UPDATE;
            IF NOT FOUND OR t.renews_at IS NULL OR t.renews_at > now() THEN
                RETURN 0;  -- nothing due, or a concurrent caller renewed first
            END IF;
            SELECT * INTO a FROM {q}.allowances WHERE tenant_id = tenant;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'tenant % is due for renewal but has no allowance', tenant
                    USING ERRCODE = 'LG001';
            END IF;
            -- Each period that has begun: its own entry, keyed by its index,
            -- dated at its boundary (so as-of answers do not depend on when it ran).
            WHILE t.renews_at <= now() LOOP
                k := t.period_index + 1;
                -- What remaining may hold with initial <= 2^63-1 (never negative:
                -- reserved + committed <= initial). The carry is cut first.
                room := 9223372036854775807 - t.reserved_microcents - t.committed_microcents;
                carry := least(greatest(t.remaining_microcents, a.min_rollover_microcents),
                               a.max_rollover_microcents, room);
                t := {q}.enter_period(
                    tenant, k, least(a.allowance_microcents, room - carry), carry,
                    {q}.period_start(a.anchor, a.time_zone, a.period_months, a.period_days,
                                     k + 1 - a.index_offset),
                    t.renews_at, NULL, NULL);
                renewed := renewed + 1;
            END LOOP;
            RETURN renewed;
        END
        $$
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.try_renew_tenant(tenant text, OUT periods integer, OUT error text)
        LANGUAGE plpgsql AS $$
        BEGIN
            periods := {q}.renew_tenant(tenant);
        EXCEPTION
            WHEN serialization_failure OR deadlock_detected OR lock_not_available
                 OR query_canceled THEN
                RAISE;
            WHEN OTHERS THEN
                periods := NULL;
                error := SQLSTATE || ': ' || SQLERRM;
        END
        $$
    """)
    )
    # The sweeper: renews up to `lim` due tenants, oldest boundary first, SKIP LOCKED
    # (many sweepers and the lazy path share the work). A tenant it cannot renew
    # is reported and passed over; it does not count against `lim`, so tenants
    # that always fail cannot hold the others back (each due one is tried once).
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.renew_due(lim bigint)
        RETURNS TABLE (tenant_id text, periods integer, error text)
        LANGUAGE plpgsql AS $$
        DECLARE
            due record;
            got record;
            renewed bigint := 0;
        BEGIN
            FOR due IN
                SELECT t.tenant_id FROM {q}.tenants AS t
                WHERE t.renews_at <= now()
                ORDER BY t.renews_at, t.tenant_id
                FOR NO KEY UPDATE SKIP LOCKED
            LOOP
                EXIT WHEN renewed >= lim;
                SELECT * INTO got FROM {q}.try_renew_tenant(due.tenant_id);
                IF got.error IS NULL THEN
                    renewed := renewed + 1;
                END IF;
                tenant_id := due.tenant_id;
                periods := got.periods;
                error := got.error;
                RETURN NEXT;
            END LOOP;
        END
        $$
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE FUNCTION {q}.set_allowance(
            tenant text, allowance bigint, months bigint, days bigint, anchor_at timestamptz,
            zone text, min_rollover bigint, max_rollover bigint, ikey text
        ) RETURNS TABLE (status text, period_index bigint, remaining bigint)
        LANGUAGE plpgsql AS $$
        DECLARE
            t {q}.tenants;
            prev {q}.allowances;
            same boolean;
            high bigint;
            k bigint;
            shift bigint := 0;
        BEGIN
            -- The server's zone list can differ from the client's: ask it.
            IF NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = zone) THEN
                RETURN QUERY SELECT 'unknown_time_zone'::text, NULL::bigint, NULL::bigint;
                RETURN;
            END IF;
            PERFORM {q}.renew_tenant(tenant);  -- periods already due renew on the old terms
            SELECT * INTO t FROM {q}.tenants AS x WHERE x.tenant_id = tenant FOR NO KEY UPDATE;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'missing_tenant'::text, NULL::bigint, NULL::bigint;
                RETURN;
            END IF;
            SELECT * INTO prev FROM {q}.allowances AS x WHERE x.tenant_id = tenant;
            same := COALESCE(prev.tenant_id IS NOT NULL AND t.period_index IS NOT NULL
                             AND prev.anchor = anchor_at AND prev.time_zone = zone
                             AND prev.period_months = months AND prev.period_days = days,
                             false);
            k := {q}.period_index_at(anchor_at, zone, months, days, now());
            IF NOT same THEN
                -- Number the new schedule's periods after every index the tenant has
                -- used (its renewals and its holds), so none comes back. Tenants
                -- renewed before revision 0007 have no period_high: ask the journal.
                high := greatest(
                    t.period_high, t.period_index,
                    CASE WHEN t.period_high IS NULL THEN (
                        SELECT max(j.period_index) FROM {q}.journal AS j
                        WHERE j.tenant_id = tenant AND j.op = 'renew') END,
                    (SELECT max(r.period_index) FROM {q}.reservations AS r
                     WHERE r.tenant_id = tenant));
                IF high IS NOT NULL AND k <= high THEN
                    shift := high + 1 - k;
                END IF;
            END IF;
            INSERT INTO {q}.allowances AS x (
                tenant_id, allowance_microcents, period_months, period_days, anchor, time_zone,
                min_rollover_microcents, max_rollover_microcents, index_offset)
            VALUES (tenant, allowance, months, days, anchor_at, zone, min_rollover, max_rollover,
                    shift)
            ON CONFLICT (tenant_id) DO UPDATE
            SET allowance_microcents = EXCLUDED.allowance_microcents,
                period_months = EXCLUDED.period_months, period_days = EXCLUDED.period_days,
                anchor = EXCLUDED.anchor, time_zone = EXCLUDED.time_zone,
                min_rollover_microcents = EXCLUDED.min_rollover_microcents,
                max_rollover_microcents = EXCLUDED.max_rollover_microcents,
                index_offset = CASE WHEN same THEN x.index_offset ELSE EXCLUDED.index_offset END;
            IF same THEN
                -- Same schedule: new amounts apply from the next boundary on.
                RETURN QUERY SELECT 'allowance_set'::text, t.period_index, t.remaining_microcents;
                RETURN;
            END IF;
            -- The period containing now() starts with nothing credited: what the
            -- tenant has is carried unchanged; the first allowance comes at the
            -- next boundary. Its index is above every earlier one.
            t := {q}.enter_period(
                tenant, k + shift, 0, t.remaining_microcents,
                {q}.period_start(anchor_at, zone, months, days, k + 1), now(), ikey,
                'allowance set');
            RETURN QUERY SELECT 'allowance_set'::text, t.period_index, t.remaining_microcents;
        END
        $$
    """)
    )


# --------------------------------------------------------------- corrections


def _refund(q: str) -> None:
    """``refund_commit`` of revision 0006, refusing commits that a restore undid.

    A restore (or the removal of the tenant) replaces the balances the commit
    was part of, so its refund would give back money the restored state never
    spent: such a commit is ``unknown_commit``. The check reads the tenant's
    entries after the commit (its primary key range), with the row lock held.
    """
    op.execute(
        sa.text(f"""
        CREATE OR REPLACE FUNCTION {q}.refund_commit(
            p_tenant text, p_reservation bigint, p_amount bigint, p_reason text, p_ikey text
        ) RETURNS TABLE (
            status text, remaining bigint, committed bigint, left_microcents bigint
        )
        LANGUAGE plpgsql VOLATILE SECURITY INVOKER
        SET search_path = pg_catalog, pg_temp
        AS $$
        DECLARE
            tenant {q}.tenants%ROWTYPE;
            spent bigint;
            period bigint;
            commit_seq bigint;
            refunded bigint;
            can_refund bigint;
            stamp timestamptz := now();
        BEGIN
            -- 0. A tenant whose budget period has ended is renewed first (it locks
            --    the row), so the refund lands in the period it is made in.
            PERFORM {q}.renew_tenant(p_tenant);
            -- 1. The lock every write of this tenant takes; refunds of it queue here.
            SELECT * INTO tenant FROM {q}.tenants AS t
            WHERE t.tenant_id = p_tenant FOR NO KEY UPDATE;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'missing_tenant', NULL::bigint, NULL::bigint, NULL::bigint;
                RETURN;
            END IF;

            -- 2. With the lock held, new snapshots: the commit and every refund of it.
            --    A commit before a restore or removal of the tenant is history only.
            SELECT j.amount_microcents, j.period_index, j.seq INTO spent, period, commit_seq
            FROM {q}.journal AS j
            WHERE j.reservation_id = p_reservation AND j.tenant_id = p_tenant AND j.op = 'commit';
            IF NOT FOUND OR EXISTS (
                SELECT 1 FROM {q}.journal AS j
                WHERE j.tenant_id = p_tenant AND j.seq > commit_seq
                  AND j.op IN ('restore', 'remove')
            ) THEN
                RETURN QUERY SELECT 'unknown_commit', tenant.remaining_microcents,
                                    tenant.committed_microcents, NULL::bigint;
                RETURN;
            END IF;
            SELECT COALESCE(sum(j.amount_microcents), 0) INTO refunded
            FROM {q}.journal AS j
            WHERE j.reservation_id = p_reservation AND j.tenant_id = p_tenant AND j.op = 'refund';

            -- Never below zero committed either.
            can_refund := least(spent - refunded, tenant.committed_microcents);
            IF p_amount > can_refund THEN
                RETURN QUERY SELECT 'refund_exceeds_commit', tenant.remaining_microcents,
                                    tenant.committed_microcents, can_refund;
                RETURN;
            END IF;
            -- remaining + amount <= remaining + committed <= initial (tenants_conservation):
            -- a refund cannot overflow, so there is no overflow branch to take.

            -- 3. Apply, chain and journal. The entry carries the commit's period.
            UPDATE {q}.tenants AS t
            SET remaining_microcents = t.remaining_microcents + p_amount,
                committed_microcents = t.committed_microcents - p_amount,
                journal_seq = t.journal_seq + 1,
                journal_head = {q}.journal_hash(
                    t.journal_head, t.tenant_id, t.journal_seq + 1, 'refund', p_reservation,
                    p_amount, NULL, t.initial_microcents, t.remaining_microcents + p_amount,
                    t.reserved_microcents, t.committed_microcents - p_amount,
                    t.max_reserved_microcents, stamp, p_ikey, period, p_reason)
            WHERE t.tenant_id = p_tenant
            RETURNING t.* INTO tenant;
            INSERT INTO {q}.journal (
                tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
                initial_microcents, remaining_microcents, reserved_microcents,
                committed_microcents, max_reserved_microcents, idempotency_key, created_at,
                entry_hash, period_index, reason)
            VALUES (
                tenant.tenant_id, tenant.journal_seq, 'refund', p_reservation, p_amount, NULL,
                tenant.initial_microcents, tenant.remaining_microcents,
                tenant.reserved_microcents, tenant.committed_microcents,
                tenant.max_reserved_microcents, p_ikey, stamp, tenant.journal_head,
                period, p_reason);
            RETURN QUERY SELECT 'refunded', tenant.remaining_microcents,
                                tenant.committed_microcents, can_refund - p_amount;
        END
        $$
    """)
    )


# ----------------------------------------------------------------- downgrade


def downgrade() -> None:
    migrator.locked(_contract)


def _contract() -> None:
    s = _schema()
    q = f'"{s}"'
    _one_connection_per_node_on_citus()
    op.execute(sa.text(f"LOCK TABLE {q}.tenants, {q}.allowances IN ACCESS EXCLUSIVE MODE"))
    budgets = _revision("0006")
    # Functions whose 0006 bodies come back (CREATE, not CREATE OR REPLACE, there).
    op.execute(sa.text(f"DROP FUNCTION {q}.refund_commit({REFUND_SIGNATURE})"))
    budgets._corrections(q)
    op.execute(sa.text(f"DROP FUNCTION {q}.renew_due(bigint)"))
    op.execute(sa.text(f"DROP FUNCTION {q}.try_renew_tenant(text)"))
    op.execute(sa.text(f"DROP FUNCTION {q}.set_allowance({SET_ALLOWANCE_SIGNATURE})"))
    op.execute(sa.text(f"DROP FUNCTION {q}.clear_allowance(text, text)"))
    op.execute(sa.text(f"DROP FUNCTION {q}.renew_tenant(text)"))
    op.execute(
        sa.text(
            f"DROP FUNCTION {q}.enter_period("
            "text, bigint, bigint, bigint, timestamptz, timestamptz, text, text)"
        )
    )
    op.execute(sa.text(f"DROP FUNCTION {q}.forfeited(bigint, bigint, bigint)"))
    op.execute(
        sa.text(
            f"DROP FUNCTION {q}.period_index_at(timestamptz, text, bigint, bigint, timestamptz)"
        )
    )
    budgets._period_functions(q)
    op.execute(sa.text(f"DROP FUNCTION {q}.asof_checkpoint()"))
    # The views as revision 0003 made them; the policies as they were cannot come back
    # (they were the defect), so row-level security is left as the owner set it.
    for table in TENANT_TABLES:
        op.execute(sa.text(f"DROP POLICY IF EXISTS tenant_scope ON {q}.{table}"))
    for view in reversed(VIEWS):
        op.execute(sa.text(f"DROP VIEW {q}.{view}"))
    _revision("0003")._upgrade()
    op.execute(sa.text(f"DROP FUNCTION {q}.tenant_visible(text)"))
    op.execute(sa.text(f"DROP FUNCTION {q}.caller_is_tenant_scoped()"))
    op.drop_column("allowances", "index_offset", schema=s)
    op.drop_column("tenants", "period_high", schema=s)
