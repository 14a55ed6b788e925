"""Production budgets: recurring allowances, corrections, a refusal log.

Schema for issue 14 (docs/periods.md, docs/corrections.md):

- ``allowances``: a tenant's recurring allowance. Period ``k`` starts at
  ``anchor + k * (period_months months + period_days days)``, the arithmetic
  done in the tenant's ``time_zone`` (so "every calendar month in
  Europe/Berlin" keeps its local midnight across DST). At each boundary
  ``remaining`` becomes ``least(greatest(remaining, min_rollover), max_rollover)
  + allowance`` (OpenMeter's rollover rule; min = max = 0 is a plain reset).
- ``tenants.period_index`` / ``tenants.renews_at``: the tenant's current
  period and when it ends. NULL for tenants without an allowance, so the
  seed's operations are untouched for them.
- ``reservations.period_index``: the period a hold was opened in. A hold
  settles against that period: what it does not spend after its period has
  closed is forfeited, never carried into the new one.
- ``journal.period_index`` / ``journal.reason``: new entry fields, hashed only
  when present (docs/journal.md: the v1 encoding of an entry without them is
  unchanged, so every existing chain still verifies). New entry kinds:
  ``renew``, ``refund``, ``adjust``.
- ``certificate_checkpoints.period_index``: replay from a checkpoint knows the
  tenant's period.
- ``refusals``: one row per refused spend, so ``ledger stats`` can say what was
  refused lately. Not chained: a refusal changes no balance.
- ``asof_checkpoints`` and the auditor functions ``balances_at(T)`` /
  ``spend_between(T1, T2)`` (docs/asof.md): as-of queries from the journal.

Zero-downtime: new columns are nullable without defaults (metadata only), the
new CHECK on ``journal.op`` is added NOT VALID and validated online, the
``tenants.renews_at`` index is built CONCURRENTLY.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_OPS = (
    "open",
    "open_hold",
    "create",
    "top_up",
    "cap",
    "reserve",
    "commit",
    "release",
    "expire",
    "restore",
    "remove",
)
OPS = (*OLD_OPS, "renew", "refund", "adjust")

HASH_SIGNATURE = (
    "bytea, text, bigint, text, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, "
    "timestamptz, text, bigint, text"
)
RENEWS_AT_INDEX = "tenants_renews_at_idx"


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def _op_check(ops: tuple[str, ...]) -> str:
    return "op IN (" + ", ".join(f"'{o}'" for o in ops) + ")"


def upgrade() -> None:
    migrator.locked(_expand)
    migrator.online_step(
        lambda: op.execute(
            f'ALTER TABLE "{_schema()}".journal VALIDATE CONSTRAINT journal_op_known'
        )
    )
    migrator.create_index(RENEWS_AT_INDEX, "tenants", "(renews_at) WHERE renews_at IS NOT NULL")


def _expand() -> None:
    s = _schema()
    q = f'"{s}"'
    _one_connection_per_node_on_citus()
    _lock_in_traffic_order(q)
    _journal(s, q)
    _periods(s, q)
    _refusals(s)
    _functions(q)
    _period_functions(q)
    _corrections(q)
    _asof(s, q)


def _lock_in_traffic_order(q: str) -> None:
    """Take every table this revision alters at once, in the order writes lock them.

    A reserve or a settlement locks ``tenants``, then ``reservations``, then
    ``journal`` (the order of its statement's CTEs). Altering ``journal`` first
    and ``tenants`` second would meet a write holding ``tenants`` and waiting
    for ``journal``: a lock cycle, which the lock probe
    (tests/test_migrations_lock_probe.py) hit as lock timeouts on every try.
    Taken up front in the same order, a write either finishes before the
    revision or queues behind it holding nothing; the revision's transaction
    is metadata-only, so the queue clears in milliseconds.
    """
    op.execute(
        sa.text(
            f"LOCK TABLE {q}.tenants, {q}.reservations, {q}.journal,"
            f" {q}.certificate_checkpoints IN ACCESS EXCLUSIVE MODE"
        )
    )


def _one_connection_per_node_on_citus() -> None:
    """On a distributed schema, run this revision's shard DDL over one connection per node.

    Citus refuses to create a function in a transaction that already changed
    distributed tables in parallel; sequential mode lets the new columns and
    the new functions share the revision's transaction. A DO block, so the
    offline script makes the same choice when it runs; no-op without Citus.
    """
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


def _journal(s: str, q: str) -> None:
    op.add_column("journal", sa.Column("period_index", sa.BigInteger(), nullable=True), schema=s)
    op.add_column("journal", sa.Column("reason", sa.Text(), nullable=True), schema=s)
    # Replaced by a wider check at once (NOT VALID, validated online): no
    # client loses a guarantee, it only gains three entry kinds.
    op.execute(
        sa.text(
            "-- squawk-ignore ban-drop-constraint\n"
            f"ALTER TABLE {q}.journal DROP CONSTRAINT journal_op_known"
        )
    )
    op.create_check_constraint(
        "journal_op_known", "journal", _op_check(OPS), schema=s, postgresql_not_valid=True
    )
    # The v1 encoding, then (only when either is present) the period index
    # (-1 when absent) and the reason, length-prefixed. journal.entry_hash
    # mirrors it byte for byte; STABLE for the reason revision 0005 gives.
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.journal_hash(
            prev bytea, tenant text, seq bigint, op text, reservation bigint,
            amount bigint, hold bigint, initial bigint, remaining bigint,
            reserved bigint, committed bigint, cap bigint, at timestamptz, ikey text,
            period bigint, reason text
        ) RETURNS bytea
        LANGUAGE sql STABLE PARALLEL SAFE AS $$
            SELECT sha256(
                '\\x73716c6c65646765722f6a6f75726e616c2f763100'::bytea
                || prev
                || int4send(octet_length(convert_to(tenant, 'UTF8'))) || convert_to(tenant, 'UTF8')
                || int8send(seq)
                || int2send(octet_length(op)::smallint) || convert_to(op, 'UTF8')
                || int8send(coalesce(reservation, 0))
                || int8send(coalesce(amount, 0))
                || int8send(coalesce(hold, 0))
                || int8send(initial) || int8send(remaining) || int8send(reserved)
                || int8send(committed) || int8send(cap)
                || int8send((extract(epoch FROM at) * 1000000)::bigint)
                || int4send(octet_length(convert_to(coalesce(ikey, ''), 'UTF8')))
                || convert_to(coalesce(ikey, ''), 'UTF8')
                || CASE WHEN period IS NULL AND reason IS NULL THEN ''::bytea
                        ELSE int8send(coalesce(period, -1))
                             || int4send(octet_length(convert_to(coalesce(reason, ''), 'UTF8')))
                             || convert_to(coalesce(reason, ''), 'UTF8')
                   END
            )
        $$
    """)
    )
    # On Citus the hash functions stay IMMUTABLE (revision 0005 says why).
    op.execute(
        sa.text(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
                ALTER FUNCTION {q}.journal_hash({HASH_SIGNATURE}) IMMUTABLE;
            END IF;
        END
        $$
    """)
    )


def _periods(s: str, q: str) -> None:
    op.add_column("tenants", sa.Column("period_index", sa.BigInteger(), nullable=True), schema=s)
    op.add_column(
        "tenants", sa.Column("renews_at", sa.DateTime(timezone=True), nullable=True), schema=s
    )
    op.add_column(
        "reservations", sa.Column("period_index", sa.BigInteger(), nullable=True), schema=s
    )
    op.add_column(
        "certificate_checkpoints",
        sa.Column("period_index", sa.BigInteger(), nullable=True),
        schema=s,
    )
    op.create_table(
        "allowances",
        sa.Column("tenant_id", sa.Text(collation="C"), nullable=False),
        sa.Column("allowance_microcents", sa.BigInteger(), nullable=False),
        sa.Column("period_months", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("period_days", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("anchor", sa.DateTime(timezone=True), nullable=False),
        sa.Column("time_zone", sa.Text(), nullable=False),
        sa.Column("min_rollover_microcents", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("max_rollover_microcents", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("tenant_id", name="allowances_pkey"),
        sa.CheckConstraint("allowance_microcents >= 0", name="allowances_amount_nonnegative"),
        sa.CheckConstraint(
            "period_months >= 0 AND period_days >= 0 AND (period_months > 0) <> (period_days > 0)",
            name="allowances_period_one_unit",
        ),
        sa.CheckConstraint(
            "min_rollover_microcents >= 0 AND max_rollover_microcents >= min_rollover_microcents",
            name="allowances_rollover_range",
        ),
        schema=s,
    )


def _refusals(s: str) -> None:
    op.create_table(
        "refusals",
        sa.Column("tenant_id", sa.Text(collation="C"), nullable=False),
        sa.Column("op", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("amount_microcents", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=s,
    )
    op.create_index("refusals_created_at_idx", "refusals", ["created_at"], schema=s)
    # A log has no natural key. Online shard moves on Citus replicate tables
    # logically, which needs a replica identity; the whole row serves.
    op.execute(sa.text(f'ALTER TABLE "{s}".refusals REPLICA IDENTITY FULL'))


def _functions(q: str) -> None:
    """Period arithmetic, shared by renewal, the sweeper and the as-of views."""
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.period_start(
            anchor timestamptz, time_zone text, months bigint, days bigint, k bigint
        ) RETURNS timestamptz
        LANGUAGE sql STABLE PARALLEL SAFE AS $$
            SELECT ((anchor AT TIME ZONE time_zone)
                    + make_interval(months => (months * k)::int, days => (days * k)::int))
                   AT TIME ZONE time_zone
        $$
    """)
    )


def _period_functions(q: str) -> None:
    """Renewal, allowance changes and the crossing rule (docs/periods.md).

    ``enter_period`` appends one ``renew`` entry to a locked tenant;
    ``renew_tenant`` locks a tenant and renews every period that has begun
    since its last renewal, once per period index, in order (the row lock makes
    concurrent callers wait, then find nothing due); ``set_allowance`` and
    ``clear_allowance`` start and end a tenant's periods; ``forfeited`` is what a
    settlement of a hold from a closed period gives up (inlined, like
    ``journal_hash``). All of them read the clock through ``now()``: the
    transaction's start, so a retried statement sees the same boundary.
    """
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.forfeited(hold_period bigint, tenant_period bigint, unspent bigint)
        RETURNS bigint
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE WHEN hold_period IS NOT NULL AND hold_period IS DISTINCT FROM tenant_period
                        THEN greatest(unspent, 0) ELSE 0 END
        $$
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.period_index_at(
            anchor timestamptz, time_zone text, months bigint, days bigint, at timestamptz
        ) RETURNS bigint
        LANGUAGE plpgsql STABLE AS $$
        DECLARE
            local_at timestamp := at AT TIME ZONE time_zone;
            local_anchor timestamp := anchor AT TIME ZONE time_zone;
            k bigint;
        BEGIN
            -- An estimate from the local calendar, then exact steps either way.
            IF months > 0 THEN
                k := ((extract(year FROM local_at) - extract(year FROM local_anchor)) * 12
                      + extract(month FROM local_at) - extract(month FROM local_anchor))::bigint
                     / months;
            ELSE
                k := floor(extract(epoch FROM local_at - local_anchor) / 86400 / days)::bigint;
            END IF;
            WHILE {q}.period_start(anchor, time_zone, months, days, k) > at LOOP
                k := k - 1;
            END LOOP;
            WHILE {q}.period_start(anchor, time_zone, months, days, k + 1) <= at LOOP
                k := k + 1;
            END LOOP;
            RETURN k;
        END
        $$
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.enter_period(
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
        CREATE FUNCTION {q}.renew_tenant(tenant text) RETURNS integer
        LANGUAGE plpgsql AS $$
        DECLARE
            t {q}.tenants;
            a {q}.allowances;
            k bigint;
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
                t := {q}.enter_period(
                    tenant, k, a.allowance_microcents,
                    least(greatest(t.remaining_microcents, a.min_rollover_microcents),
                          a.max_rollover_microcents),
                    {q}.period_start(a.anchor, a.time_zone, a.period_months, a.period_days, k + 1),
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
        CREATE FUNCTION {q}.set_allowance(
            tenant text, allowance bigint, months bigint, days bigint, anchor_at timestamptz,
            zone text, min_rollover bigint, max_rollover bigint, ikey text
        ) RETURNS TABLE (status text, period_index bigint, remaining bigint)
        LANGUAGE plpgsql AS $$
        DECLARE
            t {q}.tenants;
            prev {q}.allowances;
            k bigint;
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
            INSERT INTO {q}.allowances AS x (
                tenant_id, allowance_microcents, period_months, period_days, anchor, time_zone,
                min_rollover_microcents, max_rollover_microcents)
            VALUES (tenant, allowance, months, days, anchor_at, zone, min_rollover, max_rollover)
            ON CONFLICT (tenant_id) DO UPDATE
            SET allowance_microcents = EXCLUDED.allowance_microcents,
                period_months = EXCLUDED.period_months, period_days = EXCLUDED.period_days,
                anchor = EXCLUDED.anchor, time_zone = EXCLUDED.time_zone,
                min_rollover_microcents = EXCLUDED.min_rollover_microcents,
                max_rollover_microcents = EXCLUDED.max_rollover_microcents;
            IF prev.tenant_id IS NOT NULL AND t.period_index IS NOT NULL
               AND prev.anchor = anchor_at AND prev.time_zone = zone
               AND prev.period_months = months AND prev.period_days = days THEN
                -- Same schedule: new amounts apply from the next boundary on.
                RETURN QUERY SELECT 'allowance_set'::text, t.period_index, t.remaining_microcents;
                RETURN;
            END IF;
            k := {q}.period_index_at(anchor_at, zone, months, days, now());
            IF t.period_index IS NOT NULL AND k <= t.period_index THEN
                -- A new schedule whose index does not move forward: leave the old periods first.
                t := {q}.enter_period(tenant, NULL, 0, t.remaining_microcents, NULL, now(), NULL,
                                      'schedule changed');
            END IF;
            -- The period containing now() starts with nothing credited: what the
            -- tenant has is carried unchanged; the first allowance comes at the
            -- next boundary.
            t := {q}.enter_period(
                tenant, k, 0, t.remaining_microcents,
                {q}.period_start(anchor_at, zone, months, days, k + 1), now(), ikey,
                'allowance set');
            RETURN QUERY SELECT 'allowance_set'::text, t.period_index, t.remaining_microcents;
        END
        $$
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.clear_allowance(tenant text, ikey text)
        RETURNS TABLE (status text, period_index bigint, remaining bigint)
        LANGUAGE plpgsql AS $$
        DECLARE
            t {q}.tenants;
        BEGIN
            PERFORM {q}.renew_tenant(tenant);  -- periods already due are still owed
            SELECT * INTO t FROM {q}.tenants AS x WHERE x.tenant_id = tenant FOR NO KEY UPDATE;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'missing_tenant'::text, NULL::bigint, NULL::bigint;
                RETURN;
            END IF;
            DELETE FROM {q}.allowances AS x WHERE x.tenant_id = tenant;
            IF t.period_index IS NOT NULL THEN
                -- The tenant leaves its periods; remaining is kept as it is.
                t := {q}.enter_period(tenant, NULL, 0, t.remaining_microcents, NULL, now(), ikey,
                                      'allowance cleared');
            END IF;
            RETURN QUERY SELECT 'allowance_cleared'::text, NULL::bigint, t.remaining_microcents;
        END
        $$
    """)
    )


def _drop_period_functions(q: str) -> None:
    op.execute(sa.text(f"DROP FUNCTION {q}.clear_allowance(text, text)"))
    op.execute(
        sa.text(
            f"DROP FUNCTION {q}.set_allowance("
            "text, bigint, bigint, bigint, timestamptz, text, bigint, bigint, text)"
        )
    )
    op.execute(sa.text(f"DROP FUNCTION {q}.renew_tenant(text)"))
    op.execute(
        sa.text(
            f"DROP FUNCTION {q}.enter_period("
            "text, bigint, bigint, bigint, timestamptz, timestamptz, text, text)"
        )
    )
    op.execute(
        sa.text(
            f"DROP FUNCTION {q}.period_index_at(timestamptz, text, bigint, bigint, timestamptz)"
        )
    )
    op.execute(sa.text(f"DROP FUNCTION {q}.forfeited(bigint, bigint, bigint)"))


REFUND_SIGNATURE = "text, bigint, bigint, text, text"


def _corrections(q: str) -> None:
    """``refund_commit``: give back part of a commit, never more than it left (docs/corrections.md).

    A function rather than one data-modifying statement because the limit
    depends on other rows (the commit and every earlier refund of it, in the
    journal) that a concurrent refund may be adding. Under READ COMMITTED a
    single statement reads those rows from its starting snapshot and does not
    read them again when its UPDATE waits for the tenant row's lock, so two
    refunds could both see the same "left" and together exceed the commit.
    Here the tenant row is locked first (every journal write of the tenant
    takes that lock), and only then are the commit and its refunds summed, by
    a new statement with a new snapshot that sees every refund committed
    before the lock was granted. Still one round trip for the client.

    ``SECURITY INVOKER`` (the caller's grants and row-level security apply) and
    a fixed search_path: every name inside is schema-qualified.
    """
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.refund_commit(
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
            SELECT j.amount_microcents, j.period_index INTO spent, period
            FROM {q}.journal AS j
            WHERE j.reservation_id = p_reservation AND j.tenant_id = p_tenant AND j.op = 'commit';
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'unknown_commit', tenant.remaining_microcents,
                                    tenant.committed_microcents, NULL::bigint;
                RETURN;
            END IF;
            SELECT COALESCE(sum(j.amount_microcents), 0) INTO refunded
            FROM {q}.journal AS j
            WHERE j.reservation_id = p_reservation AND j.tenant_id = p_tenant AND j.op = 'refund';

            -- Never below zero committed either (a restore may have reset it).
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


def _drop_corrections(q: str) -> None:
    op.execute(sa.text(f"DROP FUNCTION {q}.refund_commit({REFUND_SIGNATURE})"))


def downgrade() -> None:
    migrator.locked(_contract)


def _contract() -> None:
    s = _schema()
    q = f'"{s}"'
    _asof_contract(s, q)
    _drop_period_functions(q)
    _drop_corrections(q)
    op.execute(
        sa.text(f"DROP FUNCTION {q}.period_start(timestamptz, text, bigint, bigint, bigint)")
    )
    op.drop_table("refusals", schema=s)
    op.drop_table("allowances", schema=s)
    op.execute(sa.text(f"DROP INDEX IF EXISTS {q}.{RENEWS_AT_INDEX}"))
    op.drop_column("certificate_checkpoints", "period_index", schema=s)
    op.drop_column("reservations", "period_index", schema=s)
    op.drop_column("tenants", "renews_at", schema=s)
    op.drop_column("tenants", "period_index", schema=s)
    op.execute(sa.text(f"DROP FUNCTION {q}.journal_hash({HASH_SIGNATURE})"))
    op.execute(sa.text(f"ALTER TABLE {q}.journal DROP CONSTRAINT journal_op_known"))
    op.create_check_constraint("journal_op_known", "journal", _op_check(OLD_OPS), schema=s)
    op.drop_column("journal", "reason", schema=s)
    op.drop_column("journal", "period_index", schema=s)


# ---------------------------------------------------------------- as-of queries

#: The as-of audit functions (docs/asof.md), with their signatures.
ASOF_FUNCTIONS = (
    "balances_at(timestamptz)",
    "spend_between(timestamptz, timestamptz)",
    "asof_cut(text, bigint, bigint, timestamptz)",
)


def _asof(s: str, q: str) -> None:
    """As-of checkpoints and the auditor's ``balances_at`` / ``spend_between`` functions.

    ``asof_checkpoints`` is a cache (``Ledger.asof_checkpoint()``): per
    tenant, a chain position, the latest stamp of every entry up to it and
    running commit/refund totals up to it. The functions are the SQL twins of
    ``asof_balances`` / ``asof_spends`` in ledger/sql/asof.sql
    (tests/test_asof.py checks both against the journal). The two public ones
    are SECURITY DEFINER with a fixed search_path: like the audit views they
    run with their owner's rights, so an auditor needs EXECUTE on them and
    nothing on the tables. EXECUTE is revoked from PUBLIC, granted by
    ``grant_auditor`` / ``grant_application`` and taken back from a
    tenant-scoped role (``ledger roles isolate``), which they would show every
    tenant. The table is new, so its index is built plainly.
    """
    op.create_table(
        "asof_checkpoints",
        sa.Column("tenant_id", sa.Text(collation="C"), nullable=False),
        sa.Column("journal_seq", sa.BigInteger(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("commits", sa.BigInteger(), nullable=False),
        sa.Column("committed_microcents", sa.Numeric(), nullable=False),
        sa.Column("refunds", sa.BigInteger(), nullable=False),
        sa.Column("refunded_microcents", sa.Numeric(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("tenant_id", "journal_seq", name="asof_checkpoints_pkey"),
        sa.CheckConstraint("journal_seq > 0", name="asof_checkpoints_seq_positive"),
        schema=s,
    )
    op.create_index(
        "asof_checkpoints_effective_idx",
        "asof_checkpoints",
        ["tenant_id", "effective_at", "journal_seq"],
        schema=s,
    )
    # The seq just before the first entry after `from_seq` stamped later than
    # `as_of` (or the head): the end of the longest prefix stamped at or
    # before `as_of`, provided every entry up to `from_seq` is.
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.asof_cut(tenant text, head bigint, from_seq bigint, as_of timestamptz)
        RETURNS bigint
        LANGUAGE sql STABLE AS $$
            SELECT COALESCE((
                SELECT j.seq - 1 FROM {q}.journal AS j
                WHERE j.tenant_id = tenant
                  AND j.seq > GREATEST(from_seq, COALESCE((
                      SELECT m.journal_seq FROM {q}.asof_checkpoints AS m
                      WHERE m.tenant_id = tenant AND m.effective_at <= as_of
                      ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1), 0))
                  AND j.created_at > as_of
                ORDER BY j.seq LIMIT 1), head)
        $$
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.balances_at(as_of timestamptz)
        RETURNS TABLE (
            tenant_id text, journal_seq bigint, entry_created_at timestamptz,
            initial_microcents bigint, remaining_microcents bigint,
            reserved_microcents bigint, committed_microcents bigint,
            max_reserved_microcents bigint
        )
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
            WITH ids AS (
                SELECT t.tenant_id, t.journal_seq AS head FROM {q}.tenants AS t
                UNION ALL
                SELECT d.tenant_id, d.journal_seq FROM {q}.detached_tenants AS d
            )
            SELECT j.tenant_id, j.seq, j.created_at, j.initial_microcents,
                   j.remaining_microcents, j.reserved_microcents, j.committed_microcents,
                   j.max_reserved_microcents
            FROM ids AS i
            CROSS JOIN LATERAL (SELECT {q}.asof_cut(i.tenant_id, i.head, 0, as_of) AS seq) AS c
            CROSS JOIN LATERAL (
                SELECT * FROM {q}.journal AS e WHERE e.tenant_id = i.tenant_id AND e.seq = c.seq
                LIMIT 1
            ) AS j
            WHERE j.op <> 'remove'
            ORDER BY j.tenant_id
        $$
    """)
    )
    op.execute(
        sa.text(f"""
        CREATE FUNCTION {q}.spend_between(start_at timestamptz, end_at timestamptz)
        RETURNS TABLE (
            tenant_id text, spent_microcents numeric, committed_microcents numeric,
            refunded_microcents numeric, commits bigint, refunds bigint,
            from_seq bigint, to_seq bigint
        )
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
WITH ids AS (
    SELECT tenant_id, journal_seq AS head FROM {q}.tenants
    UNION ALL
    SELECT tenant_id, journal_seq FROM {q}.detached_tenants
), lo AS MATERIALIZED (
    SELECT i.tenant_id, i.head, m.*, COALESCE((
        SELECT j.seq - 1 FROM {q}.journal AS j
        WHERE j.tenant_id = i.tenant_id AND j.seq > m.seq
          AND j.created_at > start_at
        ORDER BY j.seq LIMIT 1), i.head) AS cut
    FROM ids AS i
    CROSS JOIN LATERAL (
        SELECT COALESCE(max(c.journal_seq), 0) AS seq, COALESCE(max(c.commits), 0) AS commits,
               COALESCE(max(c.committed_microcents), 0) AS committed,
               COALESCE(max(c.refunds), 0) AS refunds,
               COALESCE(max(c.refunded_microcents), 0) AS refunded
        FROM (SELECT * FROM {q}.asof_checkpoints AS m
              WHERE m.tenant_id = i.tenant_id
                AND m.effective_at <= start_at
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1) AS c
    ) AS m
), hi AS MATERIALIZED (
    SELECT l.tenant_id, l.cut AS lo, l.seq AS m1_seq, l.commits AS m1_commits,
           l.committed AS m1_committed, l.refunds AS m1_refunds, l.refunded AS m1_refunded,
           m.seq AS m2_seq, m.commits AS m2_commits, m.committed AS m2_committed,
           m.refunds AS m2_refunds, m.refunded AS m2_refunded, m.seq > l.cut AS via,
           COALESCE((
               SELECT j.seq - 1 FROM {q}.journal AS j
               WHERE j.tenant_id = l.tenant_id AND j.seq > GREATEST(l.cut, m.seq)
                 AND j.created_at > end_at
               ORDER BY j.seq LIMIT 1), l.head) AS hi
    FROM lo AS l
    CROSS JOIN LATERAL (
        SELECT COALESCE(max(c.journal_seq), 0) AS seq, COALESCE(max(c.commits), 0) AS commits,
               COALESCE(max(c.committed_microcents), 0) AS committed,
               COALESCE(max(c.refunds), 0) AS refunds,
               COALESCE(max(c.refunded_microcents), 0) AS refunded
        FROM (SELECT * FROM {q}.asof_checkpoints AS m
              WHERE m.tenant_id = l.tenant_id
                AND m.effective_at <= end_at
              ORDER BY m.effective_at DESC, m.journal_seq DESC LIMIT 1) AS c
    ) AS m
), totals AS (
    SELECT h.tenant_id, h.lo, h.hi,
           CASE WHEN h.via THEN h.m2_commits - h.m1_commits ELSE 0 END
               + b.commits - a.commits AS commits,
           CASE WHEN h.via THEN h.m2_committed - h.m1_committed ELSE 0 END
               + b.committed - a.committed AS committed,
           CASE WHEN h.via THEN h.m2_refunds - h.m1_refunds ELSE 0 END
               + b.refunds - a.refunds AS refunds,
           CASE WHEN h.via THEN h.m2_refunded - h.m1_refunded ELSE 0 END
               + b.refunded - a.refunded AS refunded
    FROM hi AS h
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE j.op = 'commit') AS commits,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'commit'), 0) AS committed,
               count(*) FILTER (WHERE j.op = 'refund') AS refunds,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'refund'), 0) AS refunded
        FROM {q}.journal AS j
        WHERE j.tenant_id = h.tenant_id AND j.seq <= h.lo
          AND j.seq > CASE WHEN h.via THEN h.m1_seq ELSE h.lo END
    ) AS a
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE j.op = 'commit') AS commits,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'commit'), 0) AS committed,
               count(*) FILTER (WHERE j.op = 'refund') AS refunds,
               COALESCE(sum(j.amount_microcents) FILTER (WHERE j.op = 'refund'), 0) AS refunded
        FROM {q}.journal AS j
        WHERE j.tenant_id = h.tenant_id AND j.seq <= h.hi
          AND j.seq > CASE WHEN h.via THEN h.m2_seq ELSE h.lo END
    ) AS b
)
SELECT tenant_id, committed - refunded, committed, refunded, commits, refunds, lo, hi
FROM totals
WHERE commits + refunds > 0 AND start_at <= end_at
ORDER BY tenant_id
        $$
    """)
    )
    for function in ASOF_FUNCTIONS:
        op.execute(sa.text(f"REVOKE ALL ON FUNCTION {q}.{function} FROM PUBLIC"))


def _asof_contract(s: str, q: str) -> None:
    for function in ("balances_at(timestamptz)", "spend_between(timestamptz, timestamptz)"):
        op.execute(sa.text(f"DROP FUNCTION {q}.{function}"))
    op.execute(sa.text(f"DROP FUNCTION {q}.asof_cut(text, bigint, bigint, timestamptz)"))
    op.drop_table("asof_checkpoints", schema=s)
