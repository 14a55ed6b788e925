"""Every SQL statement the ledger runs, rendered once per schema.

Each hot-path operation is a single statement: a data-modifying CTE that locks
the tenant row (``FOR NO KEY UPDATE``), decides the outcome from the locked
values with the seed's rules in the seed's order, applies the conditional
``UPDATE ... WHERE remaining >= :amount`` compare-and-swap, and touches the
hold row, all in one round trip. Decisions are computed from the locked row,
never from a snapshot read, so READ COMMITTED's re-check semantics cannot
make two concurrent statements both see "enough".

Lock order is always tenant row first, then hold row, so single-tenant
operations cannot deadlock with each other.

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

TOP_UP = """
WITH cur AS MATERIALIZED (
    SELECT initial_microcents AS initial, remaining_microcents AS remaining
    FROM {s}.tenants WHERE tenant_id = :tenant_id
    FOR NO KEY UPDATE
), decision AS MATERIALIZED (
    SELECT CASE
        WHEN initial > {max} - CAST(:amount AS bigint) THEN 'overflow'
        WHEN remaining > {max} - CAST(:amount AS bigint) THEN 'overflow'
        ELSE 'topped_up'
    END AS status
    FROM cur
), applied AS (
    UPDATE {s}.tenants AS t
    SET initial_microcents = t.initial_microcents + CAST(:amount AS bigint),
        remaining_microcents = t.remaining_microcents + CAST(:amount AS bigint)
    FROM decision AS d
    WHERE t.tenant_id = :tenant_id AND d.status = 'topped_up'
      AND t.initial_microcents <= {max} - CAST(:amount AS bigint)
    RETURNING t.initial_microcents, t.remaining_microcents
)
SELECT d.status, a.initial_microcents AS new_initial, a.remaining_microcents AS new_remaining
FROM decision AS d LEFT JOIN applied AS a ON true
""".replace("{max}", I64_MAX_SQL)

TRY_RESERVE = """
WITH cur AS MATERIALIZED (
    SELECT remaining_microcents AS remaining, reserved_microcents AS reserved,
           max_reserved_microcents AS cap
    FROM {s}.tenants WHERE tenant_id = :tenant_id
    FOR NO KEY UPDATE
), decision AS MATERIALIZED (
    SELECT remaining, reserved, cap, CASE
        WHEN reserved > {max} - CAST(:amount AS bigint) THEN 'overflow'
        WHEN cap > 0 AND reserved + CAST(:amount AS bigint) > cap THEN 'exposure_limit_exceeded'
        WHEN remaining < CAST(:amount AS bigint) THEN 'insufficient'
        ELSE 'reserved'
    END AS status
    FROM cur
), applied AS (
    UPDATE {s}.tenants AS t
    SET remaining_microcents = t.remaining_microcents - CAST(:amount AS bigint),
        reserved_microcents = t.reserved_microcents + CAST(:amount AS bigint)
    FROM decision AS d
    WHERE t.tenant_id = :tenant_id AND d.status = 'reserved'
      AND t.remaining_microcents >= CAST(:amount AS bigint)
    RETURNING t.remaining_microcents
), hold AS (
    INSERT INTO {s}.reservations (tenant_id, reservation_id, amount_microcents)
    SELECT :tenant_id, nextval('{s}.reservation_id_seq'), CAST(:amount AS bigint)
    FROM applied
    RETURNING reservation_id
)
SELECT d.status, d.remaining, d.reserved, d.cap,
       a.remaining_microcents AS new_remaining, h.reservation_id
FROM decision AS d LEFT JOIN applied AS a ON true LEFT JOIN hold AS h ON true
""".replace("{max}", I64_MAX_SQL)

# The hold's tenant is looked up without a lock only to learn which tenant row
# to lock first; the hold itself is then locked FOR UPDATE after the tenant, and
# that locked read is what decides. A hold that vanished in between reads as
# missing_reservation.
_LOCK_TENANT_THEN_HOLD = """
target AS MATERIALIZED (
    SELECT tenant_id FROM {s}.reservations
    WHERE reservation_id = CAST(:reservation_id AS bigint) {tenant_filter}
), cur AS MATERIALIZED (
    SELECT t.tenant_id, t.remaining_microcents AS remaining,
           t.committed_microcents AS committed
    FROM {s}.tenants AS t
    WHERE t.tenant_id = (SELECT tenant_id FROM target)
    FOR NO KEY UPDATE
), hold AS MATERIALIZED (
    SELECT r.amount_microcents AS amount FROM {s}.reservations AS r
    WHERE r.tenant_id = (SELECT tenant_id FROM cur)
      AND r.reservation_id = CAST(:reservation_id AS bigint)
    FOR UPDATE
)"""

COMMIT = (
    "WITH"
    + _LOCK_TENANT_THEN_HOLD
    + """, decision AS MATERIALIZED (
    SELECT cur.tenant_id, cur.remaining, hold.amount, CASE
        WHEN cur.committed > {max} - CAST(:actual AS bigint) THEN 'overflow'
        WHEN CAST(:actual AS bigint) > hold.amount
             AND cur.remaining < CAST(:actual AS bigint) - hold.amount THEN 'overrun'
        ELSE 'committed'
    END AS status
    FROM cur CROSS JOIN hold
), gone AS (
    DELETE FROM {s}.reservations AS r USING decision AS d
    WHERE d.status = 'committed' AND r.tenant_id = d.tenant_id
      AND r.reservation_id = CAST(:reservation_id AS bigint)
    RETURNING r.tenant_id, r.amount_microcents
), applied AS (
    UPDATE {s}.tenants AS t
    SET remaining_microcents = t.remaining_microcents - (CAST(:actual AS bigint) - g.amount_microcents),
        reserved_microcents = t.reserved_microcents - g.amount_microcents,
        committed_microcents = t.committed_microcents + CAST(:actual AS bigint)
    FROM gone AS g
    WHERE t.tenant_id = g.tenant_id
      AND t.remaining_microcents >= CAST(:actual AS bigint) - g.amount_microcents
    RETURNING t.remaining_microcents
)
SELECT d.status, d.remaining, a.remaining_microcents AS new_remaining,
       CASE WHEN (SELECT count(*) FROM gone) <> (SELECT count(*) FROM applied)
            THEN {s}.invariant_failed('commit removed a hold without settling its tenant')
       END AS guard
FROM decision AS d LEFT JOIN applied AS a ON true
"""
).replace("{max}", I64_MAX_SQL)

RELEASE = (
    "WITH"
    + _LOCK_TENANT_THEN_HOLD
    + """, gone AS (
    DELETE FROM {s}.reservations AS r USING cur
    WHERE r.tenant_id = cur.tenant_id AND r.reservation_id = CAST(:reservation_id AS bigint)
      AND EXISTS (SELECT 1 FROM hold)
    RETURNING r.tenant_id, r.amount_microcents
), applied AS (
    UPDATE {s}.tenants AS t
    SET remaining_microcents = t.remaining_microcents + g.amount_microcents,
        reserved_microcents = t.reserved_microcents - g.amount_microcents
    FROM gone AS g
    WHERE t.tenant_id = g.tenant_id
    RETURNING t.remaining_microcents, g.amount_microcents
)
SELECT a.remaining_microcents AS new_remaining, a.amount_microcents AS returned,
       CASE WHEN (SELECT count(*) FROM gone) <> (SELECT count(*) FROM applied)
            THEN {s}.invariant_failed('release removed a hold without refunding its tenant')
       END AS guard
FROM (SELECT 1) AS one LEFT JOIN applied AS a ON true
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
