"""Turn a migrated ledger schema on a Citus coordinator into a distributed one.

Every tenant-keyed table (one with a ``tenant_id`` column) is hash-distributed
by ``tenant_id`` and colocated with ``tenants``, so all of one tenant's rows
(balances, holds, journal, idempotency keys, checkpoints) live in the same
shard group on the same worker. Ledger-wide tables (certificates and their
baseline) become reference tables, copied to every node. ``alembic_version``
stays a plain table on the coordinator, where migrations run.

Three things need more than ``create_distributed_table``:

- **The journal's append-only triggers.** Citus refuses to distribute a table
  with triggers unless ``citus.enable_unsafe_triggers`` is on; it is turned on
  for this transaction only (``SET LOCAL``). The triggers are then created on
  every shard, so UPDATE, DELETE and TRUNCATE are refused there too.
- **Reservation ids.** A statement that Citus delegates to a worker (a
  distributed function) draws ``nextval`` from that worker's copy of the
  sequence. Making ``reservation_id_seq`` the default of
  ``reservations.reservation_id`` lets Citus create those copies with a
  disjoint range per node (node group id << 48), so ids stay unique across the
  cluster whichever node draws them. Citus then refuses ``ALTER SEQUENCE`` on
  it; ``setval`` stays local.
- **Data already in the tables.** ``create_distributed_table`` copies it to
  the shards and leaves the coordinator's copy invisible on disk; it is
  removed with ``truncate_local_data_after_distributing_table`` (the journal's
  TRUNCATE trigger is suspended on the coordinator's empty shell for that
  statement only, with DDL propagation off, so no shard is affected).

Functions with a ``p_tenant_id`` argument are distributed with
``create_distributed_function`` on that argument, colocated with
``tenants``: a call then runs on the worker that holds the tenant.

The tables are distributed in one transaction and the functions in a second
(Citus refuses ``create_distributed_function`` after parallel shard commands
in the same transaction), both under the same advisory lock as
:func:`ledger.migrate`. Every step checks first, so running it again (also
after a later migration added a table or a function) does only what is new.
Details and the managed-service recipe: docs/scale-out.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

import psycopg
from sqlalchemy import URL, Connection, text
from sqlalchemy import exc as sa_exc

from . import _validate, errors
from ._engine import EngineLike, as_engine
from ._keyed import ANSWER, KEYED, OUTCOME, REQUEST_HASH, KeyedOperation, missing_sql, outcome_sql
from ._queries import DistributedQueries, Queries, for_schema
from ._requests import Fetch, Op, Steps
from ._translate import translate

__all__ = ["Distribution", "distribute"]

#: Distributed first; every other tenant-keyed table is colocated with it.
ANCHOR = "tenants"
#: The column every tenant-keyed table is distributed by.
DISTRIBUTION_COLUMN = "tenant_id"
#: Argument name that marks a function for delegation to the tenant's worker.
FUNCTION_ARGUMENT = "p_tenant_id"
#: Stays on the coordinator: migrations read and write it there.
LOCAL_TABLES = frozenset({"alembic_version"})
#: Sequences drawn per tenant operation, which may run on a worker: (sequence, table, column).
WORKER_SEQUENCES = (("reservation_id_seq", "reservations", "reservation_id"),)


@dataclass(frozen=True)
class Distribution:
    """What :func:`distribute` found and did, table by table."""

    schema: str
    citus_version: str
    revision: str | None
    shard_count: int
    #: Tenant-keyed tables distributed by ``tenant_id`` (all of them, new or not).
    distributed: tuple[str, ...]
    #: Ledger-wide tables replicated to every node.
    reference: tuple[str, ...]
    #: Functions delegated to the tenant's worker.
    functions: tuple[str, ...]
    #: What this call changed (empty when the schema was already distributed).
    changed: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {
            "schema": self.schema,
            "citus_version": self.citus_version,
            "revision": self.revision,
            "shard_count": self.shard_count,
            "distributed": list(self.distributed),
            "reference": list(self.reference),
            "functions": list(self.functions),
            "changed": list(self.changed),
        }


def distribute(
    engine_or_url: EngineLike, schema: str = "ledger", *, shard_count: int | None = None
) -> Distribution:
    """Distribute a migrated ledger schema across a Citus cluster; safe to run again.

    Run it on the coordinator after :func:`ledger.migrate`, and again after
    every later migration (new tables are distributed, the rest is left as
    it is). ``shard_count`` sets the number of shards when ``tenants`` is
    first distributed (default: the server's ``citus.shard_count``, 32); the
    other tables follow ``tenants``.

    Raises :class:`~ledger.errors.CitusNotAvailable` on a server without Citus or on a
    worker, :class:`~ledger.errors.SchemaNotMigrated` when the schema was
    never migrated, and :class:`~ledger.errors.DistributionConflict` when a table is already
    distributed by another column or not colocated with ``tenants``.
    """
    schema = _validate.schema_name(schema)
    if shard_count is not None:
        shard_count = _validate.positive_count("shard_count", shard_count)
    engine, owned = as_engine(engine_or_url)
    try:
        with engine.begin() as conn:
            done = _distribute(conn, schema, shard_count)
        # Citus refuses create_distributed_function in a transaction that already ran
        # parallel shard commands (the table distribution above), so functions come second.
        with engine.begin() as conn:
            _lock(conn, schema)
            changed = list(done.changed)
            _create_routed(conn, schema, changed)
            functions = _distribute_functions(conn, schema, changed)
        # Ledgers created from now on in this process see the new routed functions;
        # other processes pick them up when they next start (docs/scale-out.md).
        for key in [k for k in _ROUTED if k[1] == schema]:
            del _ROUTED[key]
        return replace(done, functions=functions, changed=tuple(changed))
    except sa_exc.DBAPIError as exc:
        raise translate(exc) from exc
    finally:
        if owned:
            engine.dispose()


#: Revisions ``distribute`` refuses: migrating them later on distributed tables would
#: write journal entries that do not verify (tests/citus/test_distribute.py).
_BEFORE_JOURNAL = frozenset({"0001"})

_JOURNAL_HASHES = (
    "{q}.journal_hash(bytea, text, bigint, text, bigint, bigint, bigint, bigint, bigint, "
    "bigint, bigint, bigint, timestamptz, text)",
    # revision 0006: the overload with a period index and a reason
    "{q}.journal_hash(bytea, text, bigint, text, bigint, bigint, bigint, bigint, bigint, "
    "bigint, bigint, bigint, timestamptz, text, bigint, text)",
)


def _journal_hash_immutable(conn: Connection, q: str) -> None:
    """Revision 0005 declares journal_hash STABLE so plain PostgreSQL inlines it.

    Citus refuses STABLE functions called with column references in UPDATEs,
    which is how every journaled write calls it; on a distributed schema it is
    IMMUTABLE again (the bytes it computes are the same).
    """
    for signature in _JOURNAL_HASHES:
        function = signature.format(q=q)
        if conn.execute(text("SELECT to_regprocedure(:f) IS NOT NULL"), {"f": function}).scalar():
            conn.execute(text(f"ALTER FUNCTION {function} IMMUTABLE"))


def _create_distributed(
    conn: Connection, schema: str, name: str, anchor_collation: str | None, shard_count: int | None
) -> None:
    """Distribute one tenant-keyed table by tenant_id, colocated with the tenants table."""
    q = f'"{schema}"'
    if _collation(conn, schema, name) != anchor_collation:
        raise errors.DistributionConflict(
            f"{schema}.{name}.{DISTRIBUTION_COLUMN} must have the same collation as "
            f'{schema}.{ANCHOR}.{DISTRIBUTION_COLUMN} (COLLATE "C") to be colocated '
            "with it; fix the migration that created it"
        )
    if name == ANCHOR:
        conn.execute(
            text(
                "SELECT create_distributed_table(CAST(:t AS regclass), :c,"
                " shard_count => CAST(:n AS int))"
            ),
            {"t": f"{q}.{name}", "c": DISTRIBUTION_COLUMN, "n": shard_count},
        )
    else:
        conn.execute(
            text(
                "SELECT create_distributed_table(CAST(:t AS regclass), :c,"
                " colocate_with => :anchor)"
            ),
            {"t": f"{q}.{name}", "c": DISTRIBUTION_COLUMN, "anchor": f"{q}.{ANCHOR}"},
        )


def _distribute(conn: Connection, schema: str, shard_count: int | None) -> Distribution:
    version = _citus_version(conn)
    _lock(conn, schema)
    tables = _tables(conn, schema)
    revision = _migrated_revision(conn, schema, tables)
    q = f'"{schema}"'
    changed: list[str] = []
    # Only for this transaction: lets Citus distribute the journal with its triggers.
    conn.execute(text("SET LOCAL citus.enable_unsafe_triggers = on"))
    _journal_hash_immutable(conn, q)

    tenant_keyed = sorted(
        (name for name, has_key in tables.items() if has_key and name not in LOCAL_TABLES),
        key=lambda name: (name != ANCHOR, name),
    )
    ledger_wide = sorted(
        name for name, has_key in tables.items() if not has_key and name not in LOCAL_TABLES
    )
    anchor_collation = _collation(conn, schema, ANCHOR)

    for sequence, table, column in WORKER_SEQUENCES:
        if table in tables and _ensure_default(conn, schema, sequence, table, column):
            changed.append(f"{table}.{column} DEFAULT nextval('{sequence}')")

    copied: list[str] = []
    anchor_colocation = None
    for name in tenant_keyed:
        state = _citus_state(conn, schema, name)
        if state is None:
            _create_distributed(conn, schema, name, anchor_collation, shard_count)
            copied.append(name)
            changed.append(f"distributed {name} by {DISTRIBUTION_COLUMN}")
            state = _citus_state(conn, schema, name)
            assert state is not None
        method, by, colocation = state
        if method != "h" or by != DISTRIBUTION_COLUMN:
            raise errors.DistributionConflict(
                f"{schema}.{name} is already a Citus table ({_describe(method, by)}), not "
                f"distributed by {DISTRIBUTION_COLUMN}; run "
                f"SELECT undistribute_table('{q}.{name}') and distribute again"
            )
        if name == ANCHOR:
            anchor_colocation = colocation
        elif colocation != anchor_colocation:
            raise errors.DistributionConflict(
                f"{schema}.{name} is distributed by {DISTRIBUTION_COLUMN} but not colocated with "
                f"{schema}.{ANCHOR}; run SELECT update_distributed_table_colocation("
                f"'{q}.{name}', colocate_with => '{q}.{ANCHOR}')"
            )

    for name in ledger_wide:
        state = _citus_state(conn, schema, name)
        if state is None:
            conn.execute(
                text("SELECT create_reference_table(CAST(:t AS regclass))"), {"t": f"{q}.{name}"}
            )
            copied.append(name)
            changed.append(f"made {name} a reference table")
        elif state[0] != "n" or not _is_reference(conn, schema, name):
            raise errors.DistributionConflict(
                f"{schema}.{name} is ledger-wide and must be a reference table, but it is already "
                f"a Citus table ({_describe(state[0], state[1])}); run SELECT undistribute_table("
                f"'{q}.{name}') and distribute again"
            )

    _drop_local_copies(conn, schema, copied)
    count = conn.execute(
        text("SELECT shard_count FROM citus_tables WHERE table_name = CAST(:t AS regclass)"),
        {"t": f"{q}.{ANCHOR}"},
    ).scalar_one()
    return Distribution(
        schema=schema,
        citus_version=version,
        revision=revision,
        shard_count=int(count),
        distributed=tuple(tenant_keyed),
        reference=tuple(ledger_wide),
        functions=(),
        changed=tuple(changed),
    )


def _function_exists(conn: Connection, schema: str, name: str) -> bool:
    """Does ``schema`` have a function called ``name`` (any arguments)?"""
    found = conn.execute(
        text(
            "SELECT 1 FROM pg_proc WHERE pronamespace = CAST(:s AS regnamespace) AND proname = :f"
        ),
        {"s": f'"{schema}"', "f": name},
    ).first()
    return found is not None


def _migrated_revision(conn: Connection, schema: str, tables: dict[str, bool]) -> str | None:
    """The schema's revision; refused when it was never migrated or is before the journal."""
    if ANCHOR not in tables or "alembic_version" not in tables:
        raise errors.SchemaNotMigrated(
            f"schema {schema!r} has no migrated ledger in this database; run "
            f"ledger.migrate(url, schema={schema!r}) (or `ledger migrate`) on the coordinator first"
        )
    revision = conn.execute(text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar()
    if revision in _BEFORE_JOURNAL:
        # Revision 0002 backfills the journal with one statement that uses now(): on
        # distributed tables the worker's part and the coordinator's part see
        # different clocks, and the open holds' entries would not verify.
        raise errors.SchemaNotMigrated(
            f"schema {schema!r} is at revision {revision}, before the journal (0002); run "
            f"ledger.migrate(url, schema={schema!r}) (or `ledger migrate`) on the coordinator, "
            "then distribute"
        )
    return None if revision is None else str(revision)


def _lock(conn: Connection, schema: str) -> None:
    """The same lock as ledger.migrate: a migration and a distribution never interleave."""
    conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"sql-ledger:{schema}"}
    )


def _citus_version(conn: Connection) -> str:
    version = conn.execute(
        text("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
    ).scalar()
    if version is None:
        server = conn.execute(text("SHOW server_version")).scalar()
        database = conn.execute(text("SELECT current_database()")).scalar()
        raise errors.CitusNotAvailable(
            f"database {database!r} (PostgreSQL {server}) has no Citus extension, so there is "
            "nothing to distribute: on plain PostgreSQL the ledger needs no distribution step. "
            "On Citus, connect to the coordinator's database where CREATE EXTENSION citus ran"
        )
    if not conn.execute(text("SELECT citus_is_coordinator()")).scalar():
        raise errors.CitusNotAvailable(
            "this Citus node is a worker; run the distribution on the coordinator"
        )
    return str(version)


def _tables(conn: Connection, schema: str) -> dict[str, bool]:
    """The schema's tables and whether each has a ``tenant_id`` column (shards excluded)."""
    rows = conn.execute(
        text(
            """
            SELECT c.relname,
                   EXISTS (SELECT 1 FROM pg_attribute AS a
                           WHERE a.attrelid = c.oid AND a.attname = :column
                             AND NOT a.attisdropped) AS has_key
            FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND NOT relation_is_a_known_shard(c.oid)
            """
        ),
        {"schema": schema, "column": DISTRIBUTION_COLUMN},
    ).all()
    return {name: bool(has_key) for name, has_key in rows}


def _collation(conn: Connection, schema: str, table: str) -> str | None:
    value = conn.execute(
        text(
            "SELECT co.collname FROM pg_attribute AS a"
            " LEFT JOIN pg_collation AS co ON co.oid = a.attcollation"
            " WHERE a.attrelid = CAST(:t AS regclass) AND a.attname = :c"
        ),
        {"t": f'"{schema}".{table}', "c": DISTRIBUTION_COLUMN},
    ).scalar()
    return None if value is None else str(value)


def _citus_state(conn: Connection, schema: str, table: str) -> tuple[str, str | None, int] | None:
    """(partition method, distribution column, colocation id), or None for a plain table."""
    row = conn.execute(
        text(
            "SELECT partmethod, column_to_column_name(logicalrelid, partkey), colocationid"
            " FROM pg_dist_partition WHERE logicalrelid = CAST(:t AS regclass)"
        ),
        {"t": f'"{schema}".{table}'},
    ).first()
    if row is None:
        return None
    return str(row[0]), (None if row[1] is None else str(row[1])), int(row[2])


def _is_reference(conn: Connection, schema: str, table: str) -> bool:
    kind = conn.execute(
        text("SELECT citus_table_type FROM citus_tables WHERE table_name = CAST(:t AS regclass)"),
        {"t": f'"{schema}".{table}'},
    ).scalar()
    return kind == "reference"


def _describe(method: str, column: str | None) -> str:
    if method == "h":
        return f"hash-distributed by {column}"
    if method == "n":
        return "a reference or Citus-managed local table"
    return f"partition method {method!r}"


def _ensure_default(conn: Connection, schema: str, sequence: str, table: str, column: str) -> bool:
    """Make ``sequence`` the column's default, so Citus gives each node its own id range."""
    q = f'"{schema}"'
    exists = conn.execute(
        text("SELECT to_regclass(:s) IS NOT NULL"), {"s": f"{q}.{sequence}"}
    ).scalar()
    if not exists:
        return False
    current = conn.execute(
        text(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef AS d"
            " JOIN pg_attribute AS a ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
            " WHERE d.adrelid = CAST(:t AS regclass) AND a.attname = :c"
        ),
        {"t": f"{q}.{table}", "c": column},
    ).scalar()
    if current is not None and sequence in str(current):
        return False
    conn.execute(
        text(
            f"ALTER TABLE {q}.{table} ALTER COLUMN {column} "
            f"SET DEFAULT nextval('{q}.{sequence}'::regclass)"
        )
    )
    return True


def _drop_local_copies(conn: Connection, schema: str, tables: list[str]) -> None:
    """Remove the coordinator's leftover copy of rows that were moved to the shards.

    Only after every table is distributed: truncating ``tenants`` cascades to
    the local copies of the tables that reference it. The journal's TRUNCATE
    trigger would refuse this on the coordinator's shell table; it is
    suspended there alone (DDL propagation off, so no shard sees it) for the
    one statement, inside this transaction.
    """
    q = f'"{schema}"'
    for name in tables:
        triggers = [
            str(t)
            for t in conn.execute(
                text(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass)"
                    " AND NOT tgisinternal AND tgenabled <> 'D'"
                    " AND (tgtype & 32) <> 0"  # TRIGGER_TYPE_TRUNCATE
                ),
                {"t": f"{q}.{name}"},
            ).scalars()
        ]
        conn.execute(text("SET LOCAL citus.enable_ddl_propagation = off"))
        for trigger in triggers:
            conn.execute(text(f'ALTER TABLE {q}.{name} DISABLE TRIGGER "{trigger}"'))
        conn.execute(
            text("SELECT truncate_local_data_after_distributing_table(CAST(:t AS regclass))"),
            {"t": f"{q}.{name}"},
        )
        for trigger in triggers:
            conn.execute(text(f'ALTER TABLE {q}.{name} ENABLE TRIGGER "{trigger}"'))
        conn.execute(text("SET LOCAL citus.enable_ddl_propagation = on"))


def _distribute_functions(conn: Connection, schema: str, changed: list[str]) -> tuple[str, ...]:
    """Delegate every function with a ``p_tenant_id`` argument to the tenant's worker."""
    q = f'"{schema}"'
    rows = conn.execute(
        text(
            """
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
            """
        ),
        {"arg": FUNCTION_ARGUMENT, "schema": q, "anchor": f"{q}.{ANCHOR}", "prefix": ROUTED_PREFIX},
    ).all()
    done: list[str] = []
    for signature, arg_index, current_index, current_colocation, force, routed, anchor in rows:
        # Routed statements are force-delegated: inside a transaction too (an idempotent
        # call's claim, operation and record) each call runs on the tenant's worker.
        if current_index != arg_index or current_colocation != anchor or force != routed:
            conn.execute(
                text(
                    "SELECT create_distributed_function(:f, :arg, colocate_with => :anchor,"
                    " force_delegation => CAST(:force AS bool))"
                ),
                {
                    "f": signature,
                    "arg": FUNCTION_ARGUMENT,
                    "anchor": f"{q}.{ANCHOR}",
                    "force": bool(routed),
                },
            )
            changed.append(f"delegated {signature} by {FUNCTION_ARGUMENT}")
        done.append(str(signature))
    return tuple(done)


# ------------------------------------------------------------------ routed statements
#
# Citus plans a data-modifying CTE statement (the shape of every ledger write) as
# several subplans sent over several connections, ending in a two-phase commit. A
# PL/pgSQL function distributed on its tenant argument runs on the tenant's worker
# as ONE command, and the statement inside it touches only that worker's shards.
# So ``distribute`` wraps each single-tenant statement of ledger/sql/*.sql, as it
# is (no second copy: the body is the statement's own text, with its %(x)s
# parameters turned into the function's $n arguments), in a function
# ``routed_<name>_<hash>`` and delegates it; a Ledger on a distributed schema calls
# those functions instead (:func:`routed_queries`). The hash of the statement text
# is in the name, so a ledger whose statements changed (a new release) never calls
# a stale function: it finds none and sends its statements as they are until
# ``ledger distribute`` runs again.

#: The single-tenant statements a Ledger calls through a routed function on Citus.
ROUTED_STATEMENTS = (
    "ensure_tenant",
    "set_cap",
    "top_up",
    "try_reserve",
    "commit_for_tenant",
    "release_for_tenant",
    "expire_for_tenant",
    "expire_hold_for_tenant",
    "adjust",
    "idempotency_claim",
    "idempotency_read",
    "idempotency_record",
    "idempotency_unclaim",
    "lock_tenant",
    "lock_hold",
)
ROUTED_PREFIX = "routed_"
#: Part of every routed function's hash: bumped when the generated body changes shape.
_GENERATION = 5
#: SECURITY DEFINER wrapper of Citus's lock_shard_metadata (ShareLock only), which
#: checks table ownership: the application role calls the routed functions too.
SHARD_LOCK = "lock_tenant_shard"
#: The shard functions' guard: :data:`SHARD_LOCK`'s lock, then "is the placement on
#: this node?". PL/pgSQL, so its statements keep their plans for the session (a
#: SQL function is parsed and planned on every call: 9% of a worker's CPU in a
#: reserve->commit cycle, measured with perf).
SHARD_HERE = "lock_shard_here"
_SHARD_HERE_BODY = """
BEGIN
    PERFORM pg_catalog.lock_shard_metadata(5, ARRAY[shard]);  -- 5 = ShareLock, as SHARD_LOCK
    RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement AS p
                   WHERE p.shardid = shard
                     AND p.groupid = (SELECT l.groupid FROM pg_catalog.pg_dist_local_group AS l));
END
"""
_SHARD_LOCK_BODY = "SELECT pg_catalog.lock_shard_metadata(5, ARRAY[shard])"  # 5 = ShareLock
#: Every SECURITY DEFINER function here runs with this search path and names every
#: relation and function with its schema: ``pg_temp`` last, or a caller's TEMP table
#: (a TEMP ``pg_dist_placement``, say) would come first and change the answer
#: (issue 22, finding 12; PostgreSQL's "Writing SECURITY DEFINER Functions Safely").
_DEFINER_SEARCH_PATH = "pg_catalog, pg_temp"
#: ``routed_<statement>_<hash>_s<anchor shard id>``: the statement on one shard group.
SHARD_SUFFIX = "_s"
#: ``journal_hash``'s STABLE twin, for statements on the shards themselves: Citus
#: needs ``journal_hash`` IMMUTABLE (:func:`_journal_hash_immutable`), which keeps
#: PostgreSQL from inlining it (its body is only STABLE): about 0.1 ms more CPU
#: per reserve->commit cycle on a worker, measured.
SHARD_HASH = "journal_hash_on_shard"
_PARAM = re.compile(r"%\((\w+)\)s")


def _routed_parameters(sql: str) -> list[str]:
    """The statement's parameter names in order of first use, ``tenant_id`` first."""
    names: list[str] = []
    for match in _PARAM.finditer(sql):
        if match.group(1) not in names:
            names.append(match.group(1))
    names.remove(DISTRIBUTION_COLUMN)
    return [DISTRIBUTION_COLUMN, *names]


def routed_function_name(name: str, sql: str) -> str:
    """``routed_<statement>_<8 hex of the statement text>``: a changed statement gets a new name."""
    digest = hashlib.sha256(f"{_GENERATION}:{sql}".encode()).hexdigest()[:8]
    return f"{ROUTED_PREFIX}{name}_{digest}"


def _describe_statement(conn: Connection, sql: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(parameter types, [(column, type)]) of a statement, from the server's own parse."""
    # distribute() runs on the psycopg driver (ledger's engines use postgresql+psycopg).
    driver = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
    name = b"ledger_routed_describe"
    result = driver.pgconn.prepare(name, sql.encode())
    if result.status != psycopg.pq.ExecStatus.COMMAND_OK:  # pragma: no cover - our own SQL
        raise errors.DistributionConflict(
            f"cannot describe a ledger statement: {(result.error_message or b'').decode()}"
        )
    try:
        described = driver.pgconn.describe_prepared(name)
        params = [described.param_type(i) for i in range(described.nparams)]
        columns = [
            ((described.fname(i) or b"").decode(), described.ftype(i))
            for i in range(described.nfields)
        ]
    finally:
        driver.pgconn.exec_(b"DEALLOCATE ledger_routed_describe")

    def type_name(oid: int) -> str:
        if oid == 0:
            return "text"
        name = conn.execute(text("SELECT format_type(:o, NULL)"), {"o": oid}).scalar()
        return "text" if name in (None, "unknown") else str(name)

    return [type_name(o) for o in params], [(c, type_name(o)) for c, o in columns]


def _routed_definition(
    conn: Connection, schema: str, name: str, sql: str, tenant_keyed: list[str]
) -> tuple[str, str, str, list[str]]:
    """(function name, signature, CREATE FUNCTION text, argument types) for one statement.

    On the tenant's worker the function runs the statement on that tenant's shards
    directly (each ``"schema".<table>`` replaced by its shard, ``EXECUTE ... USING``):
    plain PostgreSQL execution, one local transaction. Given the distributed table
    names instead, Citus would plan the data-modifying CTEs as subplans, ship their
    intermediate results to every node and end in a two-phase commit, even inside a
    delegated call (measured: 26 ms for a release). Where a shard is not on this
    node (the function runs elsewhere than its tenant's worker, e.g. a shard moved
    and the caller's metadata is older), it runs the statement as written and
    Citus routes it.
    """
    q = f'"{schema}"'
    params = _routed_parameters(sql)
    body = _PARAM.sub(lambda m: f"${params.index(m.group(1)) + 1}", sql)
    types, columns = _describe_statement(conn, body)
    function = routed_function_name(name, sql)
    arguments = ", ".join(f"p_{p} {t}" for p, t in zip(params, types, strict=True))
    returns = ", ".join(f'"{c}" {t}' for c, t in columns)
    tables = [t for t in tenant_keyed if re.search(rf"{re.escape(q)}\.{t}\b", body)]
    shards = "\n".join(
        f"        statement := regexp_replace(statement, '{q}\\.{t}\\M', shard_name("
        f"'{q}.{t}'::regclass, get_shard_id_for_distribution_column('{q}.{t}'::regclass, $1)),"
        f" 'g');"
        for t in tables
    )
    using = ", ".join(f"${i + 1}" for i in range(len(params)))
    # use_column: the RETURNS TABLE columns (status, tenant_id, ...) are PL/pgSQL
    # variables too; inside the statement a name always means the table's column.
    # The shard lock is the one Citus's own executor takes before writing a shard
    # (ShareLock on the colocated shards' metadata): a shard move blocks writes with
    # it, so after it the placement read here is current, and a write never lands
    # in a shard that has just moved away.
    # The statement runs in the shard function of the tenant's shard group when
    # there is one (_create_shard_functions: static SQL, so PL/pgSQL keeps its plan
    # for the session); otherwise its text is rewritten to the shards and EXECUTEd,
    # which parses and plans it on every call.
    create = (
        f"CREATE OR REPLACE FUNCTION {q}.{function}({arguments})\n"
        f"RETURNS TABLE({returns}) LANGUAGE plpgsql VOLATILE AS $routed$\n"
        f"#variable_conflict use_column\n"
        f"DECLARE\n    statement text := $statement$\n{body}\n$statement$;\n"
        f"    anchor bigint := get_shard_id_for_distribution_column(\n"
        f"        '{q}.{ANCHOR}'::regclass, $1);\n"
        f"    inner_function text := '{function}{SHARD_SUFFIX}' || anchor;\n"
        f"BEGIN\n"
        f"    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function\n"
        f"               AND pronamespace = '{q}'::regnamespace) THEN\n"
        f"        -- the shard function takes the shard lock and checks the placement\n"
        f"        RETURN QUERY EXECUTE 'SELECT * FROM {q}.' || quote_ident(inner_function)\n"
        f"            || '({using})'\n"
        f"            USING {using};\n"
        f"        RETURN;\n"
        f"    END IF;\n"
        f"    PERFORM {q}.{SHARD_LOCK}(anchor);\n"
        f"    IF NOT EXISTS (SELECT 1 FROM pg_dist_placement WHERE shardid = anchor\n"
        f"               AND groupid = (SELECT groupid FROM pg_dist_local_group)) THEN\n"
        f"        RETURN QUERY\n{body};\n"
        f"    ELSE\n"
        f"{shards}\n"
        f"        RETURN QUERY EXECUTE statement USING {using};\n"
        f"    END IF;\nEND\n$routed$"
    )
    return function, f"{q}.{function}({', '.join(types)})", create, types


def _shard_source(schema: str, sql: str, anchor: int, shards: dict[str, str]) -> str:
    """The body of a shard function: the statement, on one shard group's tables.

    It takes the shard lock and checks that the group's placement is on this
    node itself (:data:`SHARD_HERE`), because it is called two ways: by the routed function on the
    tenant's worker, and by a client connected to that worker directly
    (``Ledger(..., route_to_workers=True)``, ledger/_direct.py), whose map of
    the shards may be older than a shard move. Where the placement is not here
    it runs the statement on the distributed tables and Citus routes it (the
    same result, slower). On the shards it hashes with the STABLE twin of
    ``journal_hash`` (:data:`SHARD_HASH`), which PostgreSQL inlines.
    """
    q = f'"{schema}"'
    params = _routed_parameters(sql)
    body = _PARAM.sub(lambda m: f"${params.index(m.group(1)) + 1}", sql)
    local = body.replace(f"{q}.journal_hash(", f"{q}.{SHARD_HASH}(")
    for table, shard in shards.items():
        local = re.sub(rf"{re.escape(q)}\.{table}\b", shard.replace("\\", r"\\"), local)
    return (
        "\n#variable_conflict use_column\nBEGIN\n"
        f"    IF {q}.{SHARD_HERE}({anchor}) THEN\n"
        f"        RETURN QUERY\n{local};\n"
        "    ELSE\n"
        f"        RETURN QUERY\n{body};\n"
        "    END IF;\nEND\n"
    )


def _shard_function(
    schema: str, function: str, sql: str, types: list[str], columns: str, source: str
) -> str:
    """CREATE FUNCTION text of ``function``'s statement on one shard group, as static SQL.

    Its arguments are named ``a_*``, not ``p_tenant_id``, so it is never delegated
    itself: the routed function calls it on the worker that holds the shards.
    """
    q = f'"{schema}"'
    params = _routed_parameters(sql)
    arguments = ", ".join(f"a_{p} {t}" for p, t in zip(params, types, strict=True))
    return (
        f"CREATE OR REPLACE FUNCTION {q}.{function}({arguments})\n"
        f"RETURNS TABLE({columns}) LANGUAGE plpgsql VOLATILE AS $shard${source}$shard$"
    )


def _create_routed(conn: Connection, schema: str, changed: list[str]) -> None:
    """Create the routed function of every statement in ROUTED_STATEMENTS; drop stale ones."""
    queries = for_schema(schema)
    tenant_keyed = sorted(t for t, has_key in _tables(conn, schema).items() if has_key)
    q = f'"{schema}"'
    # Made again when missing or stale (a body or search path of an earlier version).
    if _definer_source(conn, f"{q}.{SHARD_LOCK}(bigint)") != _SHARD_LOCK_BODY:
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {q}.{SHARD_LOCK}(shard bigint) RETURNS void"
            " LANGUAGE sql VOLATILE SECURITY DEFINER"
            f" SET search_path = {_DEFINER_SEARCH_PATH} AS $lock${_SHARD_LOCK_BODY}$lock$"
        )
        changed.append(f"created {SHARD_LOCK}")
    if _definer_source(conn, f"{q}.{SHARD_HERE}(bigint)") != _SHARD_HERE_BODY:
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {q}.{SHARD_HERE}(shard bigint) RETURNS boolean"
            " LANGUAGE plpgsql VOLATILE SECURITY DEFINER"
            f" SET search_path = {_DEFINER_SEARCH_PATH} AS $here${_SHARD_HERE_BODY}$here$"
        )
        changed.append(f"created {SHARD_HERE}")
    _create_shard_hash(conn, schema, changed)
    wanted: set[str] = set()
    groups = _shard_groups(conn, schema)
    for name in ROUTED_STATEMENTS:
        sql = getattr(queries, name)
        function = routed_function_name(name, sql)
        wanted.add(function)
        if not _function_exists(conn, schema, function):
            # A schema at an older revision than this code (distributed before a later
            # migration) may lack a column the statement uses: no routed function then,
            # the ledger sends the statement as it is; the next distribute makes it.
            savepoint = conn.begin_nested()
            try:
                _, _, create, _ = _routed_definition(conn, schema, name, sql, tenant_keyed)
            except errors.DistributionConflict:
                savepoint.rollback()
                wanted.discard(function)
                continue
            conn.exec_driver_sql(create)
            savepoint.commit()
            changed.append(f"created {function}")
        _create_shard_functions(conn, schema, function, sql, groups, changed)
    _create_keyed(conn, schema, queries, groups, wanted, changed)
    stale = conn.execute(
        text(
            "SELECT p.oid::regprocedure::text, p.proname FROM pg_proc AS p"
            " WHERE p.pronamespace = CAST(:s AS regnamespace) AND starts_with(p.proname, :prefix)"
        ),
        {"s": f'"{schema}"', "prefix": ROUTED_PREFIX},
    ).all()
    for signature, function in stale:
        if re.sub(rf"{SHARD_SUFFIX}\d+$", "", function) not in wanted:
            conn.execute(text(f"DROP FUNCTION {signature}"))
            changed.append(f"dropped {function}")


def _definer_source(conn: Connection, signature: str) -> str | None:
    """A SECURITY DEFINER function's body, or None if it is missing or has another search path."""
    found = conn.execute(
        text("SELECT prosrc, proconfig FROM pg_catalog.pg_proc WHERE oid = to_regprocedure(:f)"),
        {"f": signature},
    ).first()
    if found is None or list(found.proconfig or ()) != [f"search_path={_DEFINER_SEARCH_PATH}"]:
        return None
    return str(found.prosrc)


def _create_shard_hash(conn: Connection, schema: str, changed: list[str]) -> None:
    """Make :data:`SHARD_HASH`: each ``journal_hash`` overload again, STABLE (if missing or stale).

    The same body, read from the catalog (so there is one definition, the
    migration's): on the shards PostgreSQL inlines it into the statement
    instead of calling a SQL function per row.
    """

    def overloads(name: str) -> dict[str, str]:
        rows = conn.execute(
            text(
                "SELECT pg_get_function_arguments(oid), prosrc FROM pg_proc"
                " WHERE pronamespace = CAST(:s AS regnamespace) AND proname = :f"
            ),
            {"s": f'"{schema}"', "f": name},
        ).all()
        return {str(a): str(src) for a, src in rows}

    made = overloads(SHARD_HASH)
    for arguments, source in overloads("journal_hash").items():
        if made.get(arguments) != source:
            conn.exec_driver_sql(
                f'CREATE OR REPLACE FUNCTION "{schema}".{SHARD_HASH}({arguments}) RETURNS bytea'
                f" LANGUAGE sql STABLE PARALLEL SAFE AS $hash${source}$hash$"
            )
            changed.append(f"created {SHARD_HASH}({arguments})")


def _shard_groups(conn: Connection, schema: str) -> dict[int, dict[str, str]]:
    """anchor shard id -> {tenant-keyed table: its shard in that group}, from Citus's metadata.

    Colocated tables have the same hash ranges, so a group's shards are the
    ones with the anchor shard's minimum value.
    """
    rows = conn.execute(
        text(
            """
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
            """
        ),
        {"anchor": f'"{schema}".{ANCHOR}', "s": f'"{schema}"'},
    ).all()
    groups: dict[int, dict[str, str]] = {}
    for anchor, table, shard in rows:
        groups.setdefault(int(anchor), {})[str(table)] = str(shard)
    return groups


def _create_shard_functions(
    conn: Connection,
    schema: str,
    function: str,
    sql: str,
    groups: dict[int, dict[str, str]],
    changed: list[str],
) -> None:
    """One static-SQL function per shard group for a routed statement (the missing ones).

    ``EXECUTE`` of a text keeps no plan: the routed function parsed and planned
    the whole statement on every call (measured on the worker: 3.8 ms per
    reserve->commit cycle against 1.4 ms with these). Static SQL in a PL/pgSQL
    function is planned once per session, but must name its tables, hence one
    function per shard group. Created on the coordinator, Citus propagates them
    to every node (also to workers added later); a shard split makes new
    groups, whose calls take the EXECUTE path until ``ledger distribute`` runs
    again.
    """
    if not groups:
        return
    existing: dict[str, str] = dict(
        conn.execute(
            text(
                "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = CAST(:s AS regnamespace)"
                " AND starts_with(proname, :f)"
            ),
            {"s": f'"{schema}"', "f": function + SHARD_SUFFIX},
        ).all()
    )
    # Missing, or naming shards that are gone (a table a migration dropped and
    # created again has new shards): made again.
    wanted = {a: _shard_source(schema, sql, a, shards) for a, shards in groups.items()}
    stale = [a for a in sorted(wanted) if existing.get(f"{function}{SHARD_SUFFIX}{a}") != wanted[a]]
    if not stale:
        return
    params = _routed_parameters(sql)
    body = _PARAM.sub(lambda m: f"${params.index(m.group(1)) + 1}", sql)
    types, columns = _describe_statement(conn, body)
    returns = ", ".join(f'"{c}" {t}' for c, t in columns)
    for anchor in stale:
        name = f"{function}{SHARD_SUFFIX}{anchor}"
        conn.exec_driver_sql(_shard_function(schema, name, sql, types, returns, wanted[anchor]))
    changed.append(f"created {len(stale)} shard functions of {function}")


#: (engine url, schema) -> the Queries a Ledger or AsyncLedger uses there (routed on Citus).
_ROUTED: dict[tuple[str, str], Queries] = {}


def _key(url: URL, schema: str) -> tuple[str, str]:
    return (url.render_as_string(hide_password=True), schema)


def lookup(schema: str) -> Op[Queries]:
    """Find the schema's routed functions (one catalog read) and the statements to use.

    An operation like any other, so :class:`~ledger.Ledger` and
    :class:`~ledger.AsyncLedger` run the same lookup on their own back-ends.
    In a transaction of its own (not coalesced with other callers' statements).
    """
    q = for_schema(schema)

    def steps() -> Steps[Queries]:
        rows = yield Fetch(q.routed_functions, {})
        return routed_variant(q, schema, {str(r.name) for r in rows})

    return Op(steps, "READ COMMITTED")


def routed_queries(url: URL, schema: str, run: Callable[[Op[Queries]], Queries]) -> Queries | None:
    """The statements for ``schema``: routed function calls where ``distribute`` made them.

    On plain PostgreSQL and on an undistributed schema this is
    :func:`~ledger._queries.for_schema` unchanged. Found once per URL and
    schema (``run`` carries out :func:`lookup`) and cached; when the lookup
    itself fails (server down), None is returned and it runs again next time.
    """
    key = _key(url, schema)
    found = _ROUTED.get(key)
    if found is None:
        try:
            found = _ROUTED[key] = run(lookup(schema))
        except errors.DatabaseError:
            return None
    return found


async def routed_queries_async(
    url: URL, schema: str, run: Callable[[Op[Queries]], Awaitable[Queries]]
) -> Queries | None:
    """:func:`routed_queries` for :class:`~ledger.AsyncLedger`: the same lookup and cache."""
    key = _key(url, schema)
    found = _ROUTED.get(key)
    if found is None:
        try:
            found = _ROUTED[key] = await run(lookup(schema))
        except errors.DatabaseError:
            return None
    return found


def routed_variant(plain: Queries, schema: str, functions: set[str]) -> Queries:
    """``plain`` with each routed statement whose function exists replaced by its call.

    A schema with the shard lock function is distributed: its statements are a
    :class:`~ledger._queries.DistributedQueries` (settlements without a tenant
    look it up first), even where a routed function is missing (a schema at an
    older revision: that statement is sent as it is, and Citus routes it).
    """
    if SHARD_LOCK not in functions:
        return plain
    q = f'"{schema}"'
    calls: dict[str, str] = {}
    for name in ROUTED_STATEMENTS:
        sql = getattr(plain, name)
        function = routed_function_name(name, sql)
        if function in functions:
            args = ", ".join(f"%({p})s" for p in _routed_parameters(sql))
            calls[name] = f"SELECT * FROM {q}.{function}({args})"
    statements = {f.name: calls.get(f.name, getattr(plain, f.name)) for f in fields(plain)}
    keyed = []
    for name, operation in KEYED.items():
        function = keyed_function_name(plain, name)
        if function in functions:
            args = ", ".join(f"%({p})s" for p in _keyed_parameters(plain, operation))
            keyed.append((name, f"SELECT * FROM {q}.{function}({args})"))
    return DistributedQueries(**statements, keyed=tuple(keyed))


# ------------------------------------------------------------------ keyed calls
#
# An idempotent call is claim -> operation -> record in one transaction: on Citus
# BEGIN, three routed calls and COMMIT. ``routed_keyed_<operation>_<hash>`` does the
# three on the tenant's worker in one call (ledger/_keyed.py says what it answers).
# Like the routed functions it is distributed on p_tenant_id with force_delegation,
# takes the shard lock and checks the placement, then runs a function of the
# tenant's shard group, ``..._s<anchor>``, whose body calls the shard functions of
# the claim, the operation, the record (and the unclaim) as static SQL. Where the
# placement is not local or the group has no function (a shard split since the
# last distribute), it answers 'fallback' having done nothing: the ledger then
# runs the three-statement path, which Citus routes statement by statement.

KEYED_PREFIX = f"{ROUTED_PREFIX}keyed_"
#: The idempotency statements every keyed function calls (their shard functions).
KEYED_PARTS = ("idempotency_claim", "idempotency_read", "idempotency_record", "idempotency_unclaim")
#: Part of every keyed function's hash: bumped when the generated body changes shape.
_KEYED_GENERATION = 3


def _keyed_parameters(queries: Queries, operation: KeyedOperation) -> list[str]:
    """The keyed function's parameters: the operation's, then the claim's (request_hash)."""
    names = _routed_parameters(getattr(queries, operation.statement))
    for part in KEYED_PARTS:
        for name in _routed_parameters(getattr(queries, part)):
            if name not in names and name != "outcome":  # the outcome is the function's own
                names.append(name)
    return names


def _keyed_arguments(queries: Queries, operation: KeyedOperation) -> dict[str, str]:
    return {p: f"a_{p}" for p in _keyed_parameters(queries, operation)}


def keyed_function_name(queries: Queries, name: str) -> str:
    """``routed_keyed_<operation>_<8 hex>``; the hash covers every statement it calls and
    the outcome JSON it records (derived from the outcome mappers), so a release that
    changed any of them calls no stale function."""
    operation = KEYED[name]
    parts = [
        routed_function_name(s, getattr(queries, s)) for s in (operation.statement, *KEYED_PARTS)
    ]
    arguments = _keyed_arguments(queries, operation)
    recorded = outcome_sql(operation, "r", arguments) + missing_sql(operation, arguments)
    digest = hashlib.sha256(
        f"{_KEYED_GENERATION}:{':'.join(parts)}:{recorded}".encode()
    ).hexdigest()[:8]
    return f"{KEYED_PREFIX}{name}_{digest}"


def _keyed_source(
    schema: str,
    queries: Queries,
    operation: KeyedOperation,
    anchor: int,
    op_columns: list[tuple[str, str]],
) -> str:
    """The body of a keyed function's shard-group function: claim, operation, record."""
    q = f'"{schema}"'
    arguments = _keyed_arguments(queries, operation)

    def call(statement: str, sql: str) -> str:
        args = ", ".join(
            "v_outcome" if p == "outcome" else arguments[p] for p in _routed_parameters(sql)
        )
        function = routed_function_name(statement, sql)
        return f'{q}."{function}{SHARD_SUFFIX}{anchor}"({args})'

    nulls = ", ".join(f"NULL::{t}" for _, t in op_columns)
    row = ", ".join(f'r."{c}"' for c, _ in op_columns)
    recorded = outcome_sql(operation, "r", arguments)
    missing = missing_sql(operation, arguments)
    claim = call("idempotency_claim", queries.idempotency_claim)
    read = call("idempotency_read", queries.idempotency_read)
    apply = call(operation.statement, getattr(queries, operation.statement))
    unclaim = call("idempotency_unclaim", queries.idempotency_unclaim)
    record = call("idempotency_record", queries.idempotency_record)
    return f"""
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
            PERFORM {q}.invariant_failed('a keyed call could not take back its own claim');
        END IF;
        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb, {nulls};
        RETURN;
    END IF;
    SELECT count(*) INTO v_count FROM {record} AS w;
    IF v_count <> 1 THEN
        PERFORM {q}.invariant_failed('a keyed call recorded its outcome on ' || v_count || ' keys');
    END IF;
    IF v_found THEN
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, {row};
    ELSE
        RETURN QUERY SELECT 'applied'::text, NULL::bytea, v_outcome, {nulls};
    END IF;
END
"""


def _create_keyed(
    conn: Connection,
    schema: str,
    queries: Queries,
    groups: dict[int, dict[str, str]],
    wanted: set[str],
    changed: list[str],
) -> None:
    """Create the keyed function of every operation in KEYED whose statements are routed."""
    q = f'"{schema}"'
    described: dict[str, tuple[list[str], list[tuple[str, str]]]] = {}

    def describe(statement: str) -> tuple[list[str], list[tuple[str, str]]]:
        if statement not in described:
            sql = getattr(queries, statement)
            params = _routed_parameters(sql)
            body = _PARAM.sub(lambda m: f"${params.index(m.group(1)) + 1}", sql)
            described[statement] = _describe_statement(conn, body)
        return described[statement]

    for name, operation in KEYED.items():
        statements = (operation.statement, *KEYED_PARTS)
        if any(routed_function_name(s, getattr(queries, s)) not in wanted for s in statements):
            continue  # a statement without its routed function: keyed calls take three
        function = keyed_function_name(queries, name)
        wanted.add(function)
        types: dict[str, str] = {}
        for statement in statements:
            for param, kind in zip(
                _routed_parameters(getattr(queries, statement)),
                describe(statement)[0],
                strict=True,
            ):
                types.setdefault(param, kind)
        params = _keyed_parameters(queries, operation)
        op_columns = describe(operation.statement)[1]
        stored = dict(describe("idempotency_read")[1])
        returns = ", ".join(
            [
                f'"{ANSWER}" text',
                f'"{REQUEST_HASH}" {stored["request_hash"]}',
                f'"{OUTCOME}" {stored["outcome"]}',
                *(f'"{c}" {t}' for c, t in op_columns),
            ]
        )
        if not _function_exists(conn, schema, function):
            arguments = ", ".join(f"p_{p} {types[p]}" for p in params)
            using = ", ".join(f"${i + 1}" for i in range(len(params)))
            nulls = ", ".join(f"NULL::{t}" for _, t in op_columns)
            conn.exec_driver_sql(
                f"CREATE OR REPLACE FUNCTION {q}.{function}({arguments})\n"
                f"RETURNS TABLE({returns}) LANGUAGE plpgsql VOLATILE AS $routed$\n"
                f"DECLARE\n"
                f"    anchor bigint := get_shard_id_for_distribution_column(\n"
                f"        '{q}.{ANCHOR}'::regclass, $1);\n"
                f"    inner_function text := '{function}{SHARD_SUFFIX}' || anchor;\n"
                f"BEGIN\n"
                f"    -- No guard of its own: each shard function it calls takes the shard\n"
                f"    -- lock and checks the placement (the first one's lock holds until COMMIT).\n"
                f"    IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = inner_function\n"
                f"               AND pronamespace = '{q}'::regnamespace) THEN\n"
                f"        RETURN QUERY EXECUTE 'SELECT * FROM {q}.'\n"
                f"            || quote_ident(inner_function) || '({using})'\n"
                f"            USING {using};\n"
                f"    ELSE\n"
                f"        -- No function for this shard group (a split since distribute):\n"
                f"        -- nothing done, the ledger runs the three statements.\n"
                f"        RETURN QUERY SELECT 'fallback'::text, NULL::bytea, NULL::jsonb,\n"
                f"            {nulls};\n"
                f"    END IF;\nEND\n$routed$"
            )
            changed.append(f"created {function}")
        existing: dict[str, str] = dict(
            conn.execute(
                text(
                    "SELECT proname, prosrc FROM pg_proc"
                    " WHERE pronamespace = CAST(:s AS regnamespace) AND starts_with(proname, :f)"
                ),
                {"s": q, "f": function + SHARD_SUFFIX},
            ).all()
        )
        made = 0
        for anchor in sorted(groups):
            inner = f"{function}{SHARD_SUFFIX}{anchor}"
            source = _keyed_source(schema, queries, operation, anchor, op_columns)
            if existing.get(inner) == source:
                continue
            arguments = ", ".join(f"a_{p} {types[p]}" for p in params)
            conn.exec_driver_sql(
                f"CREATE OR REPLACE FUNCTION {q}.{inner}({arguments})\n"
                f"RETURNS TABLE({returns}) LANGUAGE plpgsql VOLATILE AS $shard${source}$shard$"
            )
            made += 1
        if made:
            changed.append(f"created {made} shard functions of {function}")


def shard_variant(routed: Queries, anchor: int, functions: set[str]) -> Queries:
    """``routed`` with each routed call made a call of that shard group's shard function.

    For a client connected to the worker that holds the group
    (ledger/_direct.py): the shard function locks the shard, checks its
    placement and runs the statement as static SQL, without the routed
    function's lookup and ``EXECUTE``. A statement whose shard function is
    missing (a shard split since ``ledger distribute``) keeps its routed call,
    which also runs on this worker.
    """

    def on_shards(sql: str) -> str:
        match = _ROUTED_CALL.match(sql)
        if match is not None and f"{match.group(2)}{SHARD_SUFFIX}{anchor}" in functions:
            return f"{match.group(1)}{match.group(2)}{SHARD_SUFFIX}{anchor}({match.group(3)}"
        return sql

    statements: dict[str, Any] = {}
    for f in fields(routed):
        value = getattr(routed, f.name)
        if f.name == "keyed":  # (operation, call of its keyed function) pairs
            value = tuple((name, on_shards(call)) for name, call in value)
        elif isinstance(value, str):
            value = on_shards(value)
        statements[f.name] = value
    return type(routed)(**statements)


#: ``SELECT * FROM "schema".routed_<name>_<hash>(<args>``, as :func:`routed_variant` writes it.
_ROUTED_CALL = re.compile(
    rf'^(SELECT \* FROM "[^"]+"\.)({ROUTED_PREFIX}\w+_[0-9a-f]{{8}})\((.*)$', re.S
)
