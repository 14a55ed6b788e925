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

from dataclasses import dataclass, field, replace

from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from .. import _routing, _validate, errors
from .._engine import EngineLike, as_engine
from .._translate import translate
from .functions import create_routed
from .names import ANCHOR, DISTRIBUTION_COLUMN, FUNCTION_ARGUMENT, ROUTED_PREFIX
from .sql import render

__all__ = ["Distribution", "distribute"]

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
            create_routed(conn, schema, _tenant_keyed(conn, schema), changed)
            functions = _distribute_functions(conn, schema, changed)
        _routing.forget(schema)
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
        if conn.execute(text(render("procedure_exists")), {"f": function}).scalar():
            conn.execute(text(render("make_immutable", function=function)))


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
            text(render("distribute_anchor")),
            {"t": f"{q}.{name}", "c": DISTRIBUTION_COLUMN, "n": shard_count},
        )
    else:
        conn.execute(
            text(render("distribute_colocated")),
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
    conn.execute(text(render("allow_unsafe_triggers")))
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
            conn.execute(text(render("make_reference_table")), {"t": f"{q}.{name}"})
            copied.append(name)
            changed.append(f"made {name} a reference table")
        elif state[0] != "n" or not _is_reference(conn, schema, name):
            raise errors.DistributionConflict(
                f"{schema}.{name} is ledger-wide and must be a reference table, but it is already "
                f"a Citus table ({_describe(state[0], state[1])}); run SELECT undistribute_table("
                f"'{q}.{name}') and distribute again"
            )

    _drop_local_copies(conn, schema, copied)
    count = conn.execute(text(render("shard_count")), {"t": f"{q}.{ANCHOR}"}).scalar_one()
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


def _migrated_revision(conn: Connection, schema: str, tables: dict[str, bool]) -> str | None:
    """The schema's revision; refused when it was never migrated or is before the journal."""
    if ANCHOR not in tables or "alembic_version" not in tables:
        raise errors.SchemaNotMigrated(
            f"schema {schema!r} has no migrated ledger in this database; run "
            f"ledger.migrate(url, schema={schema!r}) (or `ledger migrate`) on the coordinator first"
        )
    revision = conn.execute(text(render("migrated_revision", schema=f'"{schema}"'))).scalar()
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
    conn.execute(text(render("migration_lock")), {"key": f"sql-ledger:{schema}"})


def _citus_version(conn: Connection) -> str:
    version = conn.execute(text(render("citus_version"))).scalar()
    if version is None:
        server = conn.execute(text(render("server_version"))).scalar()
        database = conn.execute(text(render("current_database"))).scalar()
        raise errors.CitusNotAvailable(
            f"database {database!r} (PostgreSQL {server}) has no Citus extension, so there is "
            "nothing to distribute: on plain PostgreSQL the ledger needs no distribution step. "
            "On Citus, connect to the coordinator's database where CREATE EXTENSION citus ran"
        )
    if not conn.execute(text(render("is_coordinator"))).scalar():
        raise errors.CitusNotAvailable(
            "this Citus node is a worker; run the distribution on the coordinator"
        )
    return str(version)


def _tables(conn: Connection, schema: str) -> dict[str, bool]:
    """The schema's tables and whether each has a ``tenant_id`` column (shards excluded)."""
    rows = conn.execute(
        text(render("schema_tables")),
        {"schema": schema, "column": DISTRIBUTION_COLUMN},
    ).all()
    return {name: bool(has_key) for name, has_key in rows}


def _tenant_keyed(conn: Connection, schema: str) -> list[str]:
    """The schema's tables with a ``tenant_id`` column, sorted: those the functions rewrite."""
    return sorted(t for t, has_key in _tables(conn, schema).items() if has_key)


def _collation(conn: Connection, schema: str, table: str) -> str | None:
    value = conn.execute(
        text(render("column_collation")), {"t": f'"{schema}".{table}', "c": DISTRIBUTION_COLUMN}
    ).scalar()
    return None if value is None else str(value)


def _citus_state(conn: Connection, schema: str, table: str) -> tuple[str, str | None, int] | None:
    """(partition method, distribution column, colocation id), or None for a plain table."""
    row = conn.execute(text(render("citus_state")), {"t": f'"{schema}".{table}'}).first()
    if row is None:
        return None
    return str(row[0]), (None if row[1] is None else str(row[1])), int(row[2])


def _is_reference(conn: Connection, schema: str, table: str) -> bool:
    kind = conn.execute(text(render("citus_table_type")), {"t": f'"{schema}".{table}'}).scalar()
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
    exists = conn.execute(text(render("relation_exists")), {"s": f"{q}.{sequence}"}).scalar()
    if not exists:
        return False
    current = conn.execute(
        text(render("column_default")), {"t": f"{q}.{table}", "c": column}
    ).scalar()
    if current is not None and sequence in str(current):
        return False
    conn.execute(
        text(
            render("set_sequence_default", schema=q, table=table, column=column, sequence=sequence)
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
            for t in conn.execute(text(render("truncate_triggers")), {"t": f"{q}.{name}"}).scalars()
        ]
        conn.execute(text(render("ddl_propagation_off")))
        for trigger in triggers:
            conn.execute(text(render("disable_trigger", schema=q, table=name, trigger=trigger)))
        conn.execute(text(render("truncate_local_data")), {"t": f"{q}.{name}"})
        for trigger in triggers:
            conn.execute(text(render("enable_trigger", schema=q, table=name, trigger=trigger)))
        conn.execute(text(render("ddl_propagation_on")))


def _distribute_functions(conn: Connection, schema: str, changed: list[str]) -> tuple[str, ...]:
    """Delegate every function with a ``p_tenant_id`` argument to the tenant's worker."""
    q = f'"{schema}"'
    rows = conn.execute(
        text(render("tenant_functions")),
        {"arg": FUNCTION_ARGUMENT, "schema": q, "anchor": f"{q}.{ANCHOR}", "prefix": ROUTED_PREFIX},
    ).all()
    done: list[str] = []
    for signature, arg_index, current_index, current_colocation, force, routed, anchor in rows:
        # Routed statements are force-delegated: inside a transaction too (an idempotent
        # call's claim, operation and record) each call runs on the tenant's worker.
        if current_index != arg_index or current_colocation != anchor or force != routed:
            conn.execute(
                text(render("delegate_function")),
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
