"""Every SQL statement the ledger runs, rendered once per schema.

Each hot-path operation is a single statement (a data-modifying CTE), so it
costs one round trip: the conditional ``UPDATE ... WHERE remaining >= :amount``
compare-and-swap, the hold insert or delete, the journal entry and, only on
refusal, a locked re-read that names the reason.

The shape of every write:

1. ``applied``: the conditional UPDATE is the first thing to touch the tenant
   row. Its WHERE clause is the compare-and-swap; under READ COMMITTED,
   PostgreSQL waits for any concurrent writer and re-checks the WHERE against
   the newest row version, so two statements can never both see "enough".
   The same UPDATE advances the tenant's journal sequence and chain head.
2. Dependent writes (hold insert/delete, journal entry) run from ``applied``'s
   RETURNING row, so they happen exactly when the UPDATE did.
3. ``probe``: only when nothing was applied, the row is read again under a
   lock to say *why*, with the seed's checks in the seed's order. If the
   probe finds the operation would now succeed (the row changed between the
   CAS and the probe), it answers 'retry' and the caller runs the statement
   again: the seed's CAS loop, in SQL.

Never lock a row in one CTE and update it in another CTE of the same
statement: under contention READ COMMITTED's re-check can then skip the
update silently (docs/design.md tells the story). Values from other CTEs
reach each UPDATE/DELETE through scalar subqueries, not joins.

Amounts are bound through ``CAST(:x AS bigint)`` so each statement keeps one
parameter type and psycopg's prepared-statement cache can reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy import TextClause, text

I64_MAX_SQL = "9223372036854775807"
ZERO_HEAD = "'\\x" + "00" * 32 + "'::bytea"


def _render(template: str, schema: str) -> TextClause:
    return text(
        template.replace("{max}", I64_MAX_SQL)
        .replace("{zero}", ZERO_HEAD)
        .replace("{s}", f'"{schema}"')
    )


def _journaled(
    op: str,
    *,
    rid: str = "NULL",
    amount: str = "NULL",
    hold: str = "NULL",
    initial: str = "t.initial_microcents",
    remaining: str = "t.remaining_microcents",
    reserved: str = "t.reserved_microcents",
    committed: str = "t.committed_microcents",
    cap: str = "t.max_reserved_microcents",
) -> str:
    """SET list for a tenant UPDATE that also advances the journal chain.

    The hash covers the new balances, so they are spelled out once here and
    used both for the columns and for the chain.
    """
    return f"""initial_microcents = {initial},
        remaining_microcents = {remaining},
        reserved_microcents = {reserved},
        committed_microcents = {committed},
        max_reserved_microcents = {cap},
        journal_seq = t.journal_seq + 1,
        journal_head = {{s}}.journal_hash(
            t.journal_head, t.tenant_id, t.journal_seq + 1, '{op}', {rid}, {amount}, {hold},
            {initial}, {remaining}, {reserved}, {committed}, {cap}, now(), CAST(:ikey AS text))"""


def _journal_insert(
    op: str, source: str, *, rid: str = "NULL", amount: str = "NULL", hold: str = "NULL"
) -> str:
    """Append the journal entry for each row RETURNING'd by ``source``."""
    return f"""INSERT INTO {{s}}.journal (
        tenant_id, seq, op, reservation_id, amount_microcents, hold_microcents,
        initial_microcents, remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, idempotency_key, created_at, entry_hash)
    SELECT j.tenant_id, j.journal_seq, '{op}', {rid}, {amount}, {hold},
           j.initial_microcents, j.remaining_microcents, j.reserved_microcents,
           j.committed_microcents, j.max_reserved_microcents, CAST(:ikey AS text), now(),
           j.journal_head
    FROM {source} AS j"""


_GUARD = """CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {s}.invariant_failed('%s') END"""

# ------------------------------------------------------------------ writes

ENSURE_TENANT = f"""
WITH parked AS (
    DELETE FROM {{s}}.detached_tenants WHERE tenant_id = :tenant_id
    RETURNING max_reserved_microcents, journal_seq, journal_head
), created AS (
    INSERT INTO {{s}}.tenants AS t (
        tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
        committed_microcents, max_reserved_microcents, journal_seq, journal_head)
    SELECT :tenant_id, CAST(:budget AS bigint), CAST(:budget AS bigint), 0, 0,
           COALESCE(p.max_reserved_microcents, 0), COALESCE(p.journal_seq, 0) + 1,
           {{s}}.journal_hash(
               COALESCE(p.journal_head, {{zero}}), :tenant_id, COALESCE(p.journal_seq, 0) + 1,
               'create', NULL, CAST(:budget AS bigint), NULL,
               CAST(:budget AS bigint), CAST(:budget AS bigint), 0, 0,
               COALESCE(p.max_reserved_microcents, 0), now(), CAST(:ikey AS text))
    FROM (SELECT 1) AS one LEFT JOIN parked AS p ON true
    ON CONFLICT (tenant_id) DO NOTHING
    RETURNING *
), logged AS (
    {_journal_insert("create", "created", amount="CAST(:budget AS bigint)")}
)
SELECT count(*) AS created FROM created
"""

SET_CAP = f"""
WITH applied AS (
    UPDATE {{s}}.tenants AS t
    SET {_journaled("cap", amount="CAST(:cap AS bigint)", cap="CAST(:cap AS bigint)")}
    WHERE t.tenant_id = :tenant_id
    RETURNING t.*
), logged AS (
    {_journal_insert("cap", "applied", amount="CAST(:cap AS bigint)")}
)
SELECT tenant_id FROM applied
"""

TOP_UP = f"""
WITH applied AS (
    UPDATE {{s}}.tenants AS t
    SET {
    _journaled(
        "top_up",
        amount="CAST(:amount AS bigint)",
        initial="t.initial_microcents + CAST(:amount AS bigint)",
        remaining="t.remaining_microcents + CAST(:amount AS bigint)",
    )
}
    WHERE t.tenant_id = :tenant_id
      AND t.initial_microcents <= {{max}} - CAST(:amount AS bigint)
      AND t.remaining_microcents <= {{max}} - CAST(:amount AS bigint)
    RETURNING t.*
), logged AS (
    {_journal_insert("top_up", "applied", amount="CAST(:amount AS bigint)")}
), probe AS MATERIALIZED (
    SELECT CASE
        WHEN initial_microcents > {{max}} - CAST(:amount AS bigint) THEN 'overflow'
        WHEN remaining_microcents > {{max}} - CAST(:amount AS bigint) THEN 'overflow'
        ELSE 'retry'
    END AS status
    FROM {{s}}.tenants
    WHERE tenant_id = :tenant_id AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'topped_up' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS new_remaining
FROM applied AS a
UNION ALL
SELECT p.status, NULL, NULL FROM probe AS p
"""

# A reservation id is drawn before the UPDATE because the chain hash covers it;
# a refused reserve therefore leaves a gap in the ids (they stay unique).
TRY_RESERVE = f"""
WITH rid AS MATERIALIZED (
    SELECT nextval('{{s}}.reservation_id_seq') AS id
), applied AS (
    UPDATE {{s}}.tenants AS t
    SET {
    _journaled(
        "reserve",
        rid="(SELECT id FROM rid)",
        amount="CAST(:amount AS bigint)",
        remaining="t.remaining_microcents - CAST(:amount AS bigint)",
        reserved="t.reserved_microcents + CAST(:amount AS bigint)",
    )
}
    WHERE t.tenant_id = :tenant_id
      AND t.remaining_microcents >= CAST(:amount AS bigint)
      AND t.reserved_microcents <= {{max}} - CAST(:amount AS bigint)
      AND (t.max_reserved_microcents = 0
           OR t.reserved_microcents <= t.max_reserved_microcents - CAST(:amount AS bigint))
    RETURNING t.*
), hold AS (
    INSERT INTO {{s}}.reservations (tenant_id, reservation_id, amount_microcents, expires_at)
    SELECT a.tenant_id, (SELECT id FROM rid), CAST(:amount AS bigint),
           CASE WHEN CAST(:ttl_us AS bigint) IS NOT NULL
                THEN now() + CAST(:ttl_us AS bigint) * interval '1 microsecond'
                ELSE CAST(:expires_at AS timestamptz) END
    FROM applied AS a
    RETURNING reservation_id
), logged AS (
    {
    _journal_insert(
        "reserve", "applied", rid="(SELECT id FROM rid)", amount="CAST(:amount AS bigint)"
    )
}
), probe AS MATERIALIZED (
    SELECT remaining_microcents AS remaining, reserved_microcents AS reserved,
           max_reserved_microcents AS cap, CASE
        WHEN reserved_microcents > {{max}} - CAST(:amount AS bigint) THEN 'overflow'
        WHEN max_reserved_microcents > 0
             AND reserved_microcents > max_reserved_microcents - CAST(:amount AS bigint)
            THEN 'exposure_limit_exceeded'
        WHEN remaining_microcents < CAST(:amount AS bigint) THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM {{s}}.tenants
    WHERE tenant_id = :tenant_id AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'reserved' AS status, a.remaining_microcents AS remaining, NULL::bigint AS reserved,
       NULL::bigint AS cap, h.reservation_id, false AS lapsed_holds
FROM applied AS a CROSS JOIN hold AS h
UNION ALL
SELECT p.status, p.remaining, p.reserved, p.cap, NULL,
       p.status <> 'retry' AND EXISTS (
           SELECT 1 FROM {{s}}.reservations
           WHERE tenant_id = :tenant_id AND expires_at <= now())
FROM probe AS p
"""

# Settlements lock the hold row first (holds are only ever inserted and
# deleted, never updated, so locking one and then deleting it in the same
# statement is safe). A second settlement of the same hold waits here, then
# finds it gone. A hold past its deadline is not settled: the caller expires
# it instead ('lapsed'). When the hold is gone, the caller asks the journal
# (EXPIRED_HOLD, a fresh snapshot) whether it expired.
_CLAIM_HOLD = """
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount,
           COALESCE(expires_at <= now(), false) AS lapsed
    FROM {s}.reservations
    WHERE reservation_id = CAST(:reservation_id AS bigint) {tenant_filter}
    FOR UPDATE
)"""

COMMIT = f"""
WITH{_CLAIM_HOLD}, applied AS (
    UPDATE {{s}}.tenants AS t
    SET {
    _journaled(
        "commit",
        rid="CAST(:reservation_id AS bigint)",
        amount="CAST(:actual AS bigint)",
        hold="(SELECT amount FROM hold)",
        remaining="t.remaining_microcents - (CAST(:actual AS bigint) - (SELECT amount FROM hold))",
        reserved="t.reserved_microcents - (SELECT amount FROM hold)",
        committed="t.committed_microcents + CAST(:actual AS bigint)",
    )
}
    WHERE t.tenant_id = (SELECT tenant_id FROM hold)
      AND NOT (SELECT lapsed FROM hold)
      AND t.committed_microcents <= {{max}} - CAST(:actual AS bigint)
      AND t.remaining_microcents >= CAST(:actual AS bigint) - (SELECT amount FROM hold)
    RETURNING t.*
), gone AS (
    DELETE FROM {{s}}.reservations AS r
    WHERE r.reservation_id = CAST(:reservation_id AS bigint)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING r.reservation_id
), logged AS (
    {
    _journal_insert(
        "commit",
        "applied",
        rid="CAST(:reservation_id AS bigint)",
        amount="CAST(:actual AS bigint)",
        hold="(SELECT amount FROM hold)",
    )
}
), probe AS MATERIALIZED (
    SELECT t.remaining_microcents AS remaining, CASE
        WHEN (SELECT lapsed FROM hold) THEN 'lapsed'
        WHEN t.committed_microcents > {{max}} - CAST(:actual AS bigint) THEN 'overflow'
        WHEN CAST(:actual AS bigint) > (SELECT amount FROM hold)
             AND t.remaining_microcents < CAST(:actual AS bigint) - (SELECT amount FROM hold)
            THEN 'overrun'
        ELSE 'retry'
    END AS status
    FROM {{s}}.tenants AS t
    WHERE t.tenant_id = (SELECT tenant_id FROM hold) AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'committed' AS status, a.remaining_microcents AS remaining, NULL::bigint AS returned,
       {_GUARD % "commit settled a tenant without removing its hold"} AS guard
FROM applied AS a
UNION ALL
SELECT p.status, p.remaining, NULL, NULL FROM probe AS p
"""

RELEASE = f"""
WITH{_CLAIM_HOLD}, applied AS (
    UPDATE {{s}}.tenants AS t
    SET {
    _journaled(
        "release",
        rid="CAST(:reservation_id AS bigint)",
        amount="(SELECT amount FROM hold)",
        remaining="t.remaining_microcents + (SELECT amount FROM hold)",
        reserved="t.reserved_microcents - (SELECT amount FROM hold)",
    )
}
    WHERE t.tenant_id = (SELECT tenant_id FROM hold) AND NOT (SELECT lapsed FROM hold)
    RETURNING t.*
), gone AS (
    DELETE FROM {{s}}.reservations AS r
    WHERE r.reservation_id = CAST(:reservation_id AS bigint)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING r.amount_microcents
), logged AS (
    {
    _journal_insert(
        "release",
        "applied",
        rid="CAST(:reservation_id AS bigint)",
        amount="(SELECT amount FROM hold)",
    )
}
)
SELECT 'released' AS status, a.remaining_microcents AS remaining,
       (SELECT amount FROM hold) AS returned,
       {_GUARD % "release refunded a tenant without removing its hold"} AS guard
FROM applied AS a
UNION ALL
SELECT 'lapsed', NULL, NULL, NULL FROM hold WHERE lapsed
"""

EXPIRED_HOLD = """
SELECT amount_microcents AS returned FROM {s}.journal
WHERE reservation_id = CAST(:reservation_id AS bigint) AND op = 'expire'
LIMIT 1
"""

# Expire one lapsed hold and return its amount. {pick} narrows the choice: any
# lapsed hold (the sweeper, with SKIP LOCKED so many sweepers share the work),
# one tenant's (lazily, before a reserve is refused), or one hold by id.
_EXPIRE = f"""
WITH hold AS MATERIALIZED (
    SELECT tenant_id, reservation_id, amount_microcents AS amount
    FROM {{s}}.reservations
    WHERE expires_at <= now() {{pick}}
    ORDER BY expires_at, reservation_id
    LIMIT 1
    FOR UPDATE {{skip}}
), applied AS (
    UPDATE {{s}}.tenants AS t
    SET {
    _journaled(
        "expire",
        rid="(SELECT reservation_id FROM hold)",
        amount="(SELECT amount FROM hold)",
        remaining="t.remaining_microcents + (SELECT amount FROM hold)",
        reserved="t.reserved_microcents - (SELECT amount FROM hold)",
    )
}
    WHERE t.tenant_id = (SELECT tenant_id FROM hold)
    RETURNING t.*
), gone AS (
    DELETE FROM {{s}}.reservations AS r
    WHERE r.reservation_id = (SELECT reservation_id FROM hold)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING r.reservation_id
), logged AS (
    {
    _journal_insert(
        "expire",
        "applied",
        rid="(SELECT reservation_id FROM hold)",
        amount="(SELECT amount FROM hold)",
    )
}
)
SELECT a.tenant_id, (SELECT reservation_id FROM hold) AS reservation_id,
       (SELECT amount FROM hold) AS returned, a.remaining_microcents AS remaining,
       {_GUARD % "expiry refunded a tenant without removing its hold"} AS guard
FROM applied AS a
"""

# ------------------------------------------------------------------ batches

# A batch locks everything it will touch up front, in one fixed order (holds
# by id, then tenants by id), so concurrent batches cannot deadlock, and then
# applies its items one by one inside that lock, which is exactly sequential
# application. Also tells whether any touched tenant has a lapsed hold (then
# the batch takes the slow, item-by-item path that expires them lazily).
BATCH_LOCK_TENANTS = """
WITH locked AS MATERIALIZED (
    SELECT tenant_id FROM {s}.tenants
    WHERE tenant_id = ANY(CAST(:ids AS text[]))
    ORDER BY tenant_id
    FOR NO KEY UPDATE
)
SELECT (SELECT count(*) FROM locked) AS locked,
       EXISTS (SELECT 1 FROM {s}.reservations AS r
               WHERE r.tenant_id IN (SELECT tenant_id FROM locked)
                 AND r.expires_at <= now()) AS lapsed
"""

BATCH_LOCK_HOLDS = """
WITH holds AS MATERIALIZED (
    SELECT tenant_id FROM {s}.reservations
    WHERE reservation_id = ANY(CAST(:rids AS bigint[]))
    ORDER BY reservation_id
    FOR UPDATE
), locked AS MATERIALIZED (
    SELECT tenant_id FROM {s}.tenants
    WHERE tenant_id IN (SELECT tenant_id FROM holds)
    ORDER BY tenant_id
    FOR NO KEY UPDATE
)
SELECT (SELECT count(*) FROM locked) AS locked,
       EXISTS (SELECT 1 FROM {s}.reservations AS r
               WHERE r.tenant_id IN (SELECT tenant_id FROM locked)
                 AND r.expires_at <= now()) AS lapsed
"""

EXPIRED_HOLDS = """
SELECT DISTINCT ON (reservation_id) reservation_id, amount_microcents AS returned
FROM {s}.journal
WHERE reservation_id = ANY(CAST(:rids AS bigint[])) AND op = 'expire'
"""

# ------------------------------------------------------------------ idempotency

IDEMPOTENCY_CLAIM = """
INSERT INTO {s}.idempotency_keys (tenant_id, idempotency_key, request_hash)
VALUES (:tenant_id, :ikey, :request_hash)
ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
RETURNING true AS claimed
"""

IDEMPOTENCY_READ = """
SELECT request_hash, outcome FROM {s}.idempotency_keys
WHERE tenant_id = :tenant_id AND idempotency_key = :ikey
"""

IDEMPOTENCY_RECORD = """
UPDATE {s}.idempotency_keys SET outcome = CAST(:outcome AS jsonb)
WHERE tenant_id = :tenant_id AND idempotency_key = :ikey
"""

IDEMPOTENCY_PRUNE = """
WITH pruned AS (
    DELETE FROM {s}.idempotency_keys
    WHERE created_at < now() - CAST(:age_us AS bigint) * interval '1 microsecond'
    RETURNING 1
)
SELECT count(*) AS pruned FROM pruned
"""

# ------------------------------------------------------------------- reads

TENANT = """
SELECT initial_microcents, remaining_microcents, reserved_microcents,
       committed_microcents, max_reserved_microcents
FROM {s}.tenants WHERE tenant_id = :tenant_id
"""

COUNTS = """
SELECT (SELECT count(*) FROM {s}.tenants) AS tenants,
       (SELECT count(*) FROM {s}.reservations) AS reservations,
       (SELECT COALESCE(sum(committed_microcents), 0) FROM {s}.tenants) AS committed,
       (SELECT committed_microcents FROM {s}.certificate_baseline WHERE id = 1) AS baseline
"""

SNAPSHOT_VERSION = """
SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS version
FROM {s}.snapshot_version_seq
"""

# One statement, so one MVCC snapshot: the version, the hold count and every
# tenant row are mutually consistent even under concurrent writes.
SNAPSHOT = """
WITH v AS MATERIALIZED (
    SELECT nextval('{s}.snapshot_version_seq') AS version
), a AS MATERIALIZED (
    SELECT count(*) AS active FROM {s}.reservations
)
SELECT v.version, a.active, t.tenant_id, t.initial_microcents, t.remaining_microcents,
       t.reserved_microcents, t.committed_microcents
FROM v CROSS JOIN a LEFT JOIN {s}.tenants AS t ON true
ORDER BY t.tenant_id
"""

# The certified snapshot and its checkpoint rows come from the same statement,
# so the checkpoint (chain heads, balances, open holds) is exactly the state
# the certificate's digest covers.
CERTIFY_SNAPSHOT = """
WITH v AS MATERIALIZED (
    SELECT nextval('{s}.snapshot_version_seq') AS version,
           nextval('{s}.checkpoint_id_seq') AS checkpoint_id
), a AS MATERIALIZED (
    SELECT count(*) AS active FROM {s}.reservations
), checkpoint AS (
    INSERT INTO {s}.certificate_checkpoints (
        checkpoint_id, tenant_id, journal_seq, journal_head, initial_microcents,
        remaining_microcents, reserved_microcents, committed_microcents,
        max_reserved_microcents, hold_ids, hold_amounts)
    SELECT v.checkpoint_id, t.tenant_id, t.journal_seq, t.journal_head, t.initial_microcents,
           t.remaining_microcents, t.reserved_microcents, t.committed_microcents,
           t.max_reserved_microcents, COALESCE(h.ids, '{}'), COALESCE(h.amounts, '{}')
    FROM v CROSS JOIN {s}.tenants AS t
    LEFT JOIN LATERAL (
        SELECT array_agg(r.reservation_id ORDER BY r.reservation_id) AS ids,
               array_agg(r.amount_microcents ORDER BY r.reservation_id) AS amounts
        FROM {s}.reservations AS r WHERE r.tenant_id = t.tenant_id
    ) AS h ON true
    RETURNING tenant_id, journal_seq, journal_head, initial_microcents, remaining_microcents,
              reserved_microcents, committed_microcents
)
SELECT v.version, v.checkpoint_id, a.active, c.*
FROM v CROSS JOIN a LEFT JOIN checkpoint AS c ON true
ORDER BY c.tenant_id
"""

# The first tenant, in byte order, that breaks the invariant (numeric sums
# cannot overflow), plus a version bump as the seed's verify_conservation does.
FIRST_UNBALANCED = """
WITH v AS MATERIALIZED (
    SELECT nextval('{s}.snapshot_version_seq') AS version
)
SELECT v.version, t.tenant_id, t.initial_microcents, t.remaining_microcents,
       t.reserved_microcents, t.committed_microcents
FROM v LEFT JOIN LATERAL (
    SELECT * FROM {s}.tenants
    WHERE remaining_microcents::numeric + reserved_microcents + committed_microcents
              <> initial_microcents
       OR remaining_microcents < 0
    ORDER BY tenant_id
    LIMIT 1
) AS t ON true
"""

# ------------------------------------------------------- journal verification

_VERIFY_COLUMNS = """j.tenant_id, j.seq, j.op, j.reservation_id, j.amount_microcents,
       j.hold_microcents, j.initial_microcents, j.remaining_microcents,
       j.reserved_microcents, j.committed_microcents, j.max_reserved_microcents,
       j.idempotency_key, j.created_at, j.entry_hash"""

# A plain ordered scan of the primary key: no join, so no plan can go wrong
# on a journal of millions of rows whose statistics are stale.
VERIFY_JOURNAL = f"""
SELECT {_VERIFY_COLUMNS}
FROM {{s}}.journal AS j
ORDER BY j.tenant_id, j.seq
"""

# From a checkpoint: each tenant's starting point is one primary-key probe.
VERIFY_JOURNAL_SINCE = f"""
SELECT {_VERIFY_COLUMNS}
FROM {{s}}.journal AS j
WHERE j.seq > COALESCE((
    SELECT c.journal_seq FROM {{s}}.certificate_checkpoints AS c
    WHERE c.tenant_id = j.tenant_id AND c.checkpoint_id = CAST(:start_checkpoint AS bigint)
), 0)
ORDER BY j.tenant_id, j.seq
"""

VERIFY_TENANTS = """
SELECT tenant_id, initial_microcents, remaining_microcents, reserved_microcents,
       committed_microcents, max_reserved_microcents, journal_seq, journal_head
FROM {s}.tenants ORDER BY tenant_id
"""

VERIFY_HOLDS = """
SELECT tenant_id, reservation_id, amount_microcents FROM {s}.reservations
ORDER BY tenant_id, reservation_id
"""

VERIFY_DETACHED = """
SELECT tenant_id, max_reserved_microcents, journal_seq, journal_head
FROM {s}.detached_tenants ORDER BY tenant_id
"""

# Checkpoints of certificates that were actually issued, per tenant in seq order.
VERIFY_CHECKPOINTS = """
SELECT c.tenant_id, k.certificate_id, c.journal_seq, c.journal_head
FROM {s}.certificate_checkpoints AS c
JOIN {s}.certificates AS k ON k.checkpoint_id = c.checkpoint_id
ORDER BY c.tenant_id, c.journal_seq, k.certificate_id
"""

VERIFY_START = """
SELECT c.tenant_id, c.journal_seq, c.journal_head, c.initial_microcents,
       c.remaining_microcents, c.reserved_microcents, c.committed_microcents,
       c.max_reserved_microcents, c.hold_ids, c.hold_amounts
FROM {s}.certificate_checkpoints AS c
WHERE c.checkpoint_id = CAST(:start_checkpoint AS bigint)
ORDER BY c.tenant_id
"""

VERIFY_ROOTS = """
SELECT k.certificate_id, k.journal_root, c.tenant_id, c.journal_seq, c.journal_head
FROM {s}.certificates AS k
LEFT JOIN {s}.certificate_checkpoints AS c ON c.checkpoint_id = k.checkpoint_id
WHERE k.journal_root IS NOT NULL
ORDER BY k.certificate_id, c.tenant_id
"""

CERTIFICATE_CHECKPOINT = """
SELECT checkpoint_id FROM {s}.certificates WHERE certificate_id = CAST(:certificate_id AS bigint)
"""

# --------------------------------------------------------------- restore

RESTORE_LOCK = "LOCK TABLE {s}.tenants, {s}.reservations IN ACCESS EXCLUSIVE MODE"

RESTORE_CLEAR_HOLDS = "DELETE FROM {s}.reservations"

# Tenants the snapshot drops get a 'remove' entry; their cap and chain head are
# parked, so re-creating one continues its chain and gets its cap back (the
# seed's cap map survives a restore).
RESTORE_DROP_TENANTS = f"""
WITH gone AS (
    DELETE FROM {{s}}.tenants WHERE NOT (tenant_id = ANY(CAST(:ids AS text[])))
    RETURNING *
), removed AS MATERIALIZED (
    SELECT g.tenant_id, g.max_reserved_microcents, g.journal_seq + 1 AS journal_seq,
           0::bigint AS initial_microcents, 0::bigint AS remaining_microcents,
           0::bigint AS reserved_microcents, 0::bigint AS committed_microcents,
           {{s}}.journal_hash(g.journal_head, g.tenant_id, g.journal_seq + 1, 'remove',
                              NULL, NULL, NULL, 0, 0, 0, 0, g.max_reserved_microcents, now(),
                              CAST(:ikey AS text)) AS journal_head
    FROM gone AS g
), parked AS (
    INSERT INTO {{s}}.detached_tenants (tenant_id, max_reserved_microcents, journal_seq,
                                        journal_head)
    SELECT tenant_id, max_reserved_microcents, journal_seq, journal_head FROM removed
    ON CONFLICT (tenant_id) DO UPDATE
    SET max_reserved_microcents = EXCLUDED.max_reserved_microcents,
        journal_seq = EXCLUDED.journal_seq, journal_head = EXCLUDED.journal_head
), logged AS (
    {_journal_insert("remove", "removed")}
)
SELECT count(*) AS removed FROM removed
"""

_RESTORE_ROWS = """
SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:initials AS bigint[]),
                     CAST(:remainings AS bigint[]), CAST(:committeds AS bigint[]))
       AS u(tenant_id, initial, remaining, committed)
"""

RESTORE_UPDATE = f"""
WITH u AS ({_RESTORE_ROWS}), applied AS (
    UPDATE {{s}}.tenants AS t
    SET {
    _journaled(
        "restore",
        initial="u.initial",
        remaining="u.remaining",
        reserved="0::bigint",
        committed="u.committed",
    )
}
    FROM u WHERE t.tenant_id = u.tenant_id
    RETURNING t.*
), logged AS (
    {_journal_insert("restore", "applied")}
)
SELECT count(*) AS updated FROM applied
"""

RESTORE_INSERT = f"""
WITH u AS ({_RESTORE_ROWS}), fresh AS (
    SELECT u.*, COALESCE(d.max_reserved_microcents, 0) AS cap,
           COALESCE(d.journal_seq, 0) + 1 AS seq, COALESCE(d.journal_head, {{zero}}) AS prev
    FROM u LEFT JOIN {{s}}.detached_tenants AS d ON d.tenant_id = u.tenant_id
    WHERE NOT EXISTS (SELECT 1 FROM {{s}}.tenants AS t WHERE t.tenant_id = u.tenant_id)
), created AS (
    INSERT INTO {{s}}.tenants (tenant_id, initial_microcents, remaining_microcents,
                               reserved_microcents, committed_microcents,
                               max_reserved_microcents, journal_seq, journal_head)
    SELECT f.tenant_id, f.initial, f.remaining, 0, f.committed, f.cap, f.seq,
           {{s}}.journal_hash(f.prev, f.tenant_id, f.seq, 'restore', NULL, NULL, NULL,
                              f.initial, f.remaining, 0, f.committed, f.cap, now(),
                              CAST(:ikey AS text))
    FROM fresh AS f
    RETURNING *
), logged AS (
    {_journal_insert("restore", "created")}
), unparked AS (
    DELETE FROM {{s}}.detached_tenants
    WHERE tenant_id IN (SELECT tenant_id FROM created)
)
SELECT count(*) AS created FROM created
"""

RESTORE_VERSION = "SELECT setval('{s}.snapshot_version_seq', CAST(:version AS bigint), true)"

# ----------------------------------------------------------- certificates

# The baseline row is the lock that serialises concurrent certifiers; it only
# ever moves forward, so no spend is counted by two certificates.
CERTIFY = """
WITH b AS MATERIALIZED (
    SELECT committed_microcents AS baseline FROM {s}.certificate_baseline WHERE id = 1
    FOR UPDATE
), rotated AS (
    UPDATE {s}.certificate_baseline AS c
    SET committed_microcents = GREATEST(b.baseline, CAST(:total_committed AS bigint)),
        updated_at = now()
    FROM b
    WHERE c.id = 1 AND CAST(:representable AS boolean)
    RETURNING c.committed_microcents
), stored AS (
    INSERT INTO {s}.certificates (
        snapshot_version, ledger_digest, tenant_count, active_reservations,
        conservation_balanced, total_initial_microcents, total_committed_microcents,
        aggregate_totals_representable, committed_since_last_certificate,
        baseline_before_microcents, baseline_after_microcents, journal_root, checkpoint_id)
    SELECT CAST(:version AS bigint), CAST(:digest AS bytea), CAST(:tenant_count AS bigint),
           CAST(:active AS bigint), CAST(:balanced AS boolean),
           CAST(:total_initial AS bigint), CAST(:total_committed AS bigint),
           CAST(:representable AS boolean),
           CASE WHEN CAST(:representable AS boolean)
                     AND CAST(:total_committed AS bigint) > b.baseline
                THEN CAST(:total_committed AS bigint) - b.baseline ELSE 0 END,
           b.baseline,
           COALESCE((SELECT committed_microcents FROM rotated), b.baseline),
           CAST(:journal_root AS bytea), CAST(:checkpoint_id AS bigint)
    FROM b
    RETURNING certificate_id, committed_since_last_certificate
)
SELECT certificate_id, committed_since_last_certificate FROM stored
"""


@dataclass(frozen=True)
class Statements:
    """The statements above with the schema name spliced in (validated upstream)."""

    ensure_tenant: TextClause
    set_cap: TextClause
    top_up: TextClause
    try_reserve: TextClause
    commit: TextClause
    commit_for_tenant: TextClause
    release: TextClause
    release_for_tenant: TextClause
    expire_any: TextClause
    expire_for_tenant: TextClause
    expire_hold: TextClause
    expired_hold: TextClause
    batch_lock_tenants: TextClause
    batch_lock_holds: TextClause
    expired_holds: TextClause
    idempotency_claim: TextClause
    idempotency_read: TextClause
    idempotency_record: TextClause
    idempotency_prune: TextClause
    tenant: TextClause
    counts: TextClause
    snapshot_version: TextClause
    snapshot: TextClause
    certify_snapshot: TextClause
    first_unbalanced: TextClause
    verify_journal: TextClause
    verify_journal_since: TextClause
    verify_tenants: TextClause
    verify_holds: TextClause
    verify_detached: TextClause
    verify_checkpoints: TextClause
    verify_start: TextClause
    verify_roots: TextClause
    certificate_checkpoint: TextClause
    restore_lock: TextClause
    restore_clear_holds: TextClause
    restore_drop_tenants: TextClause
    restore_update: TextClause
    restore_insert: TextClause
    restore_version: TextClause
    certify: TextClause

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        def r(template: str) -> TextClause:
            return _render(template, schema)

        def hinted(template: str, tenant_filter: str) -> TextClause:
            return r(template.replace("{tenant_filter}", tenant_filter))

        def expire(pick: str, skip: str) -> TextClause:
            return r(_EXPIRE.replace("{pick}", pick).replace("{skip}", skip))

        special = {
            "commit",
            "commit_for_tenant",
            "release",
            "release_for_tenant",
            "expire_any",
            "expire_for_tenant",
            "expire_hold",
        }
        plain = {f.name: globals()[f.name.upper()] for f in fields(cls) if f.name not in special}
        rendered = {name: r(sql) for name, sql in plain.items()}
        by_tenant = "AND tenant_id = :tenant_id"
        return cls(
            **rendered,
            commit=hinted(COMMIT, ""),
            commit_for_tenant=hinted(COMMIT, by_tenant),
            release=hinted(RELEASE, ""),
            release_for_tenant=hinted(RELEASE, by_tenant),
            expire_any=expire("", "SKIP LOCKED"),
            expire_for_tenant=expire("AND tenant_id = :tenant_id", "SKIP LOCKED"),
            expire_hold=expire("AND reservation_id = CAST(:reservation_id AS bigint)", ""),
        )
