"""Every SQL statement the ledger runs, rendered once per schema.

Each hot-path operation is a single statement (a data-modifying CTE), so it
costs one round trip: the conditional ``UPDATE ... WHERE remaining >= :amount``
compare-and-swap plus the hold insert or delete, and, only on refusal, a
locked re-read that names the reason. The shape is described above TOP_UP.

Values produced by other CTEs reach each UPDATE/DELETE through scalar
subqueries, never through a join, so READ COMMITTED's re-check of a row that
a concurrent transaction changed (EvalPlanQual) sees stable values.

Amounts are passed through ``CAST(:x AS bigint)`` so that every statement has
one stable parameter type and psycopg's prepared-statement cache can reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import TextClause, text

I64_MAX_SQL = "9223372036854775807"


def _render(template: str, schema: str) -> TextClause:
    return text(template.replace("{s}", f'"{schema}"'))


# ------------------------------------------------------------------ writes

ENSURE_TENANT = """
WITH cap AS (
    DELETE FROM {s}.detached_caps WHERE tenant_id = :tenant_id
    RETURNING max_reserved_microcents
), created AS (
    INSERT INTO {s}.tenants (tenant_id, initial_microcents, remaining_microcents,
                             reserved_microcents, committed_microcents, max_reserved_microcents)
    VALUES (:tenant_id, CAST(:budget AS bigint), CAST(:budget AS bigint), 0, 0,
            COALESCE((SELECT max_reserved_microcents FROM cap), 0))
    ON CONFLICT (tenant_id) DO NOTHING
    RETURNING tenant_id
)
SELECT count(*) AS created FROM created
"""

SET_CAP = """
UPDATE {s}.tenants SET max_reserved_microcents = CAST(:cap AS bigint)
WHERE tenant_id = :tenant_id
RETURNING tenant_id
"""

# Each write below follows the same shape:
#
# 1. ``applied``: the conditional UPDATE is the first thing to touch the tenant
#    row. Its WHERE clause is the compare-and-swap; under READ COMMITTED,
#    PostgreSQL waits for any concurrent writer and re-checks the WHERE against
#    the newest row version, so two statements can never both see "enough".
# 2. Dependent writes (the hold insert or delete) run only if ``applied``
#    produced a row.
# 3. ``probe``: only when nothing was applied, the row is read again under a
#    lock to say *why*, with the seed's checks in the seed's order. If the
#    probe finds the operation would now succeed (the row changed between the
#    CAS and the probe), it answers 'retry' and the caller runs the statement
#    again: the seed's CAS loop, in SQL.
#
# The tenant row is never locked by one CTE and then updated by another in the
# same statement: that pattern can make READ COMMITTED's re-check skip the
# update silently under contention.

TOP_UP = """
WITH applied AS (
    UPDATE {s}.tenants AS t
    SET initial_microcents = t.initial_microcents + CAST(:amount AS bigint),
        remaining_microcents = t.remaining_microcents + CAST(:amount AS bigint)
    WHERE t.tenant_id = :tenant_id
      AND t.initial_microcents <= {max} - CAST(:amount AS bigint)
      AND t.remaining_microcents <= {max} - CAST(:amount AS bigint)
    RETURNING t.initial_microcents, t.remaining_microcents
), probe AS MATERIALIZED (
    SELECT CASE
        WHEN initial_microcents > {max} - CAST(:amount AS bigint) THEN 'overflow'
        WHEN remaining_microcents > {max} - CAST(:amount AS bigint) THEN 'overflow'
        ELSE 'retry'
    END AS status
    FROM {s}.tenants
    WHERE tenant_id = :tenant_id AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'topped_up' AS status, a.initial_microcents AS new_initial,
       a.remaining_microcents AS new_remaining
FROM applied AS a
UNION ALL
SELECT p.status, NULL, NULL FROM probe AS p
""".replace("{max}", I64_MAX_SQL)

TRY_RESERVE = """
WITH applied AS (
    UPDATE {s}.tenants AS t
    SET remaining_microcents = t.remaining_microcents - CAST(:amount AS bigint),
        reserved_microcents = t.reserved_microcents + CAST(:amount AS bigint)
    WHERE t.tenant_id = :tenant_id
      AND t.remaining_microcents >= CAST(:amount AS bigint)
      AND t.reserved_microcents <= {max} - CAST(:amount AS bigint)
      AND (t.max_reserved_microcents = 0
           OR t.reserved_microcents <= t.max_reserved_microcents - CAST(:amount AS bigint))
    RETURNING t.remaining_microcents
), hold AS (
    INSERT INTO {s}.reservations (tenant_id, reservation_id, amount_microcents)
    SELECT :tenant_id, nextval('{s}.reservation_id_seq'), CAST(:amount AS bigint)
    FROM applied
    RETURNING reservation_id
), probe AS MATERIALIZED (
    SELECT remaining_microcents AS remaining, reserved_microcents AS reserved,
           max_reserved_microcents AS cap, CASE
        WHEN reserved_microcents > {max} - CAST(:amount AS bigint) THEN 'overflow'
        WHEN max_reserved_microcents > 0
             AND reserved_microcents > max_reserved_microcents - CAST(:amount AS bigint)
            THEN 'exposure_limit_exceeded'
        WHEN remaining_microcents < CAST(:amount AS bigint) THEN 'insufficient'
        ELSE 'retry'
    END AS status
    FROM {s}.tenants
    WHERE tenant_id = :tenant_id AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'reserved' AS status, a.remaining_microcents AS remaining, NULL::bigint AS reserved,
       NULL::bigint AS cap, h.reservation_id
FROM applied AS a CROSS JOIN hold AS h
UNION ALL
SELECT p.status, p.remaining, p.reserved, p.cap, NULL FROM probe AS p
""".replace("{max}", I64_MAX_SQL)

# Settlements lock the hold row first (holds are only ever inserted and
# deleted, never updated, so locking and then deleting one in the same
# statement is safe). A second settlement of the same hold waits here and then
# finds it gone: missing_reservation.
_CLAIM_HOLD = """
hold AS MATERIALIZED (
    SELECT tenant_id, amount_microcents AS amount FROM {s}.reservations
    WHERE reservation_id = CAST(:reservation_id AS bigint) {tenant_filter}
    FOR UPDATE
)"""

COMMIT = (
    "WITH"
    + _CLAIM_HOLD
    + """, applied AS (
    UPDATE {s}.tenants AS t
    SET remaining_microcents = t.remaining_microcents
            - (CAST(:actual AS bigint) - (SELECT amount FROM hold)),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold),
        committed_microcents = t.committed_microcents + CAST(:actual AS bigint)
    WHERE t.tenant_id = (SELECT tenant_id FROM hold)
      AND t.committed_microcents <= {max} - CAST(:actual AS bigint)
      AND t.remaining_microcents >= CAST(:actual AS bigint) - (SELECT amount FROM hold)
    RETURNING t.tenant_id, t.remaining_microcents
), gone AS (
    DELETE FROM {s}.reservations AS r
    WHERE r.reservation_id = CAST(:reservation_id AS bigint)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING r.reservation_id
), probe AS MATERIALIZED (
    SELECT t.remaining_microcents AS remaining, CASE
        WHEN t.committed_microcents > {max} - CAST(:actual AS bigint) THEN 'overflow'
        WHEN CAST(:actual AS bigint) > (SELECT amount FROM hold)
             AND t.remaining_microcents < CAST(:actual AS bigint) - (SELECT amount FROM hold)
            THEN 'overrun'
        ELSE 'retry'
    END AS status
    FROM {s}.tenants AS t
    WHERE t.tenant_id = (SELECT tenant_id FROM hold) AND NOT EXISTS (SELECT 1 FROM applied)
    FOR NO KEY UPDATE
)
SELECT 'committed' AS status, a.remaining_microcents AS remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {s}.invariant_failed('commit settled a tenant without removing its hold')
       END AS guard
FROM applied AS a
UNION ALL
SELECT p.status, p.remaining, NULL FROM probe AS p
"""
).replace("{max}", I64_MAX_SQL)

RELEASE = (
    "WITH"
    + _CLAIM_HOLD
    + """, applied AS (
    UPDATE {s}.tenants AS t
    SET remaining_microcents = t.remaining_microcents + (SELECT amount FROM hold),
        reserved_microcents = t.reserved_microcents - (SELECT amount FROM hold)
    WHERE t.tenant_id = (SELECT tenant_id FROM hold)
    RETURNING t.tenant_id, t.remaining_microcents
), gone AS (
    DELETE FROM {s}.reservations AS r
    WHERE r.reservation_id = CAST(:reservation_id AS bigint)
      AND r.tenant_id = (SELECT tenant_id FROM applied)
    RETURNING r.amount_microcents
)
SELECT a.remaining_microcents AS remaining, g.amount_microcents AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> 1
            THEN {s}.invariant_failed('release refunded a tenant without removing its hold')
       END AS guard
FROM applied AS a LEFT JOIN gone AS g ON true
"""
)

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

# --------------------------------------------------------------- restore

RESTORE_LOCK = "LOCK TABLE {s}.tenants, {s}.reservations IN ACCESS EXCLUSIVE MODE"

# Caps live with the tenant row; the seed keeps them in a separate map that a
# restore does not clear. Park the caps of tenants the snapshot drops so that
# re-creating such a tenant gets its cap back, exactly as in the seed.
RESTORE_PARK_CAPS = """
INSERT INTO {s}.detached_caps (tenant_id, max_reserved_microcents)
SELECT tenant_id, max_reserved_microcents FROM {s}.tenants
WHERE max_reserved_microcents > 0 AND NOT (tenant_id = ANY(CAST(:ids AS text[])))
ON CONFLICT (tenant_id) DO UPDATE SET max_reserved_microcents = EXCLUDED.max_reserved_microcents
"""

RESTORE_CLEAR_HOLDS = "DELETE FROM {s}.reservations"

RESTORE_DROP_TENANTS = """
DELETE FROM {s}.tenants WHERE NOT (tenant_id = ANY(CAST(:ids AS text[])))
"""

RESTORE_UPSERT = """
INSERT INTO {s}.tenants AS t (tenant_id, initial_microcents, remaining_microcents,
                              reserved_microcents, committed_microcents, max_reserved_microcents)
SELECT u.tenant_id, u.initial, u.remaining, 0, u.committed, COALESCE(d.max_reserved_microcents, 0)
FROM unnest(CAST(:ids AS text[]), CAST(:initials AS bigint[]), CAST(:remainings AS bigint[]),
            CAST(:committeds AS bigint[]))
     AS u(tenant_id, initial, remaining, committed)
LEFT JOIN {s}.detached_caps AS d ON d.tenant_id = u.tenant_id
ON CONFLICT (tenant_id) DO UPDATE
SET initial_microcents = EXCLUDED.initial_microcents,
    remaining_microcents = EXCLUDED.remaining_microcents,
    reserved_microcents = 0,
    committed_microcents = EXCLUDED.committed_microcents
"""

RESTORE_UNPARK_CAPS = """
DELETE FROM {s}.detached_caps WHERE tenant_id = ANY(CAST(:ids AS text[]))
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
        baseline_before_microcents, baseline_after_microcents)
    SELECT CAST(:version AS bigint), CAST(:digest AS bytea), CAST(:tenant_count AS bigint),
           CAST(:active AS bigint), CAST(:balanced AS boolean),
           CAST(:total_initial AS bigint), CAST(:total_committed AS bigint),
           CAST(:representable AS boolean),
           CASE WHEN CAST(:representable AS boolean)
                     AND CAST(:total_committed AS bigint) > b.baseline
                THEN CAST(:total_committed AS bigint) - b.baseline ELSE 0 END,
           b.baseline,
           COALESCE((SELECT committed_microcents FROM rotated), b.baseline)
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
    tenant: TextClause
    counts: TextClause
    snapshot_version: TextClause
    snapshot: TextClause
    first_unbalanced: TextClause
    restore_lock: TextClause
    restore_park_caps: TextClause
    restore_clear_holds: TextClause
    restore_drop_tenants: TextClause
    restore_upsert: TextClause
    restore_unpark_caps: TextClause
    restore_version: TextClause
    certify: TextClause

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        def r(template: str) -> TextClause:
            return _render(template, schema)

        def hinted(template: str, with_tenant: bool) -> TextClause:
            clause = "AND tenant_id = :tenant_id" if with_tenant else ""
            return r(template.replace("{tenant_filter}", clause))

        return cls(
            ensure_tenant=r(ENSURE_TENANT),
            set_cap=r(SET_CAP),
            top_up=r(TOP_UP),
            try_reserve=r(TRY_RESERVE),
            commit=hinted(COMMIT, False),
            commit_for_tenant=hinted(COMMIT, True),
            release=hinted(RELEASE, False),
            release_for_tenant=hinted(RELEASE, True),
            tenant=r(TENANT),
            counts=r(COUNTS),
            snapshot_version=r(SNAPSHOT_VERSION),
            snapshot=r(SNAPSHOT),
            first_unbalanced=r(FIRST_UNBALANCED),
            restore_lock=r(RESTORE_LOCK),
            restore_park_caps=r(RESTORE_PARK_CAPS),
            restore_clear_holds=r(RESTORE_CLEAR_HOLDS),
            restore_drop_tenants=r(RESTORE_DROP_TENANTS),
            restore_upsert=r(RESTORE_UPSERT),
            restore_unpark_caps=r(RESTORE_UNPARK_CAPS),
            restore_version=r(RESTORE_VERSION),
            certify=r(CERTIFY),
        )
