"""The PL/pgSQL functions ``ledger distribute`` makes: one call per single-tenant statement.

Citus plans a data-modifying CTE statement (the shape of every ledger write) as
several subplans sent over several connections, ending in a two-phase commit. A
PL/pgSQL function distributed on its tenant argument runs on the tenant's worker
as ONE command, and the statement inside it touches only that worker's shards.
So ``distribute`` wraps each single-tenant statement of ledger/sql/*.sql, as it
is (no second copy: the body is the statement's own text, with its %(x)s
parameters turned into the function's $n arguments), in a function
``routed_<name>_<hash>`` and delegates it; a Ledger on a distributed schema calls
those functions instead (:func:`ledger.citus.queries.routed_variant`). The hash
of the statement text is in the name, so a ledger whose statements changed (a
new release) never calls a stale function: it finds none and sends its
statements as they are until ``ledger distribute`` runs again.

Three kinds, all generated from the named queries:

- ``routed_<statement>_<hash>``: the statement, delegated to the tenant's worker;
- ``..._s<anchor>``: the same statement as static SQL on one shard group's tables
  (PL/pgSQL keeps its plan for the session);
- ``routed_keyed_<operation>_<hash>``: claim -> operation -> record in one call
  (:mod:`ledger.citus.keyed` says what it answers).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, text

from .. import errors
from .._queries import Queries, for_schema
from .keyed import ANSWER, KEYED, OUTCOME, REQUEST_HASH, KeyedOperation, missing_sql, outcome_sql
from .names import (
    ANCHOR,
    DISTRIBUTION_COLUMN,
    KEYED_PREFIX,
    ROUTED_PREFIX,
    SHARD_HASH,
    SHARD_HERE,
    SHARD_LOCK,
    SHARD_SUFFIX,
)

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
#: Part of every routed function's hash: bumped when the generated body changes shape.
_GENERATION = 5
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
_PARAM = re.compile(r"%\((\w+)\)s")


def routed_parameters(sql: str) -> list[str]:
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
    params = routed_parameters(sql)
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
    (``Ledger(..., route_to_workers=True)``, ledger/citus/routing.py), whose map of
    the shards may be older than a shard move. Where the placement is not here
    it runs the statement on the distributed tables and Citus routes it (the
    same result, slower). On the shards it hashes with the STABLE twin of
    ``journal_hash`` (:data:`SHARD_HASH`), which PostgreSQL inlines.
    """
    q = f'"{schema}"'
    params = routed_parameters(sql)
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
    params = routed_parameters(sql)
    arguments = ", ".join(f"a_{p} {t}" for p, t in zip(params, types, strict=True))
    return (
        f"CREATE OR REPLACE FUNCTION {q}.{function}({arguments})\n"
        f"RETURNS TABLE({columns}) LANGUAGE plpgsql VOLATILE AS $shard${source}$shard$"
    )


def create_routed(
    conn: Connection, schema: str, tenant_keyed: list[str], changed: list[str]
) -> None:
    """Create the routed function of every statement in ROUTED_STATEMENTS; drop stale ones.

    ``tenant_keyed``: the schema's tables with a ``tenant_id`` column, which a routed
    function rewrites to their shards.
    """
    queries = for_schema(schema)
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
        if not function_exists(conn, schema, function):
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


def function_exists(conn: Connection, schema: str, name: str) -> bool:
    """Does ``schema`` have a function called ``name`` (any arguments)?"""
    found = conn.execute(
        text(
            "SELECT 1 FROM pg_proc WHERE pronamespace = CAST(:s AS regnamespace) AND proname = :f"
        ),
        {"s": f'"{schema}"', "f": name},
    ).first()
    return found is not None


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
    params = routed_parameters(sql)
    body = _PARAM.sub(lambda m: f"${params.index(m.group(1)) + 1}", sql)
    types, columns = _describe_statement(conn, body)
    returns = ", ".join(f'"{c}" {t}' for c, t in columns)
    for anchor in stale:
        name = f"{function}{SHARD_SUFFIX}{anchor}"
        conn.exec_driver_sql(_shard_function(schema, name, sql, types, returns, wanted[anchor]))
    changed.append(f"created {len(stale)} shard functions of {function}")


# ------------------------------------------------------------------ keyed calls
#
# An idempotent call is claim -> operation -> record in one transaction: on Citus
# BEGIN, three routed calls and COMMIT. ``routed_keyed_<operation>_<hash>`` does the
# three on the tenant's worker in one call (ledger/citus/keyed.py says what it answers).
# Like the routed functions it is distributed on p_tenant_id with force_delegation,
# takes the shard lock and checks the placement, then runs a function of the
# tenant's shard group, ``..._s<anchor>``, whose body calls the shard functions of
# the claim, the operation, the record (and the unclaim) as static SQL. Where the
# placement is not local or the group has no function (a shard split since the
# last distribute), it answers 'fallback' having done nothing: the ledger then
# runs the three-statement path, which Citus routes statement by statement.

#: The idempotency statements every keyed function calls (their shard functions).
KEYED_PARTS = ("idempotency_claim", "idempotency_read", "idempotency_record", "idempotency_unclaim")
#: Part of every keyed function's hash: bumped when the generated body changes shape.
_KEYED_GENERATION = 3


def keyed_parameters(queries: Queries, operation: KeyedOperation) -> list[str]:
    """The keyed function's parameters: the operation's, then the claim's (request_hash)."""
    names = routed_parameters(getattr(queries, operation.statement))
    for part in KEYED_PARTS:
        for name in routed_parameters(getattr(queries, part)):
            if name not in names and name != "outcome":  # the outcome is the function's own
                names.append(name)
    return names


def _keyed_arguments(queries: Queries, operation: KeyedOperation) -> dict[str, str]:
    return {p: f"a_{p}" for p in keyed_parameters(queries, operation)}


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
            "v_outcome" if p == "outcome" else arguments[p] for p in routed_parameters(sql)
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
            params = routed_parameters(sql)
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
                routed_parameters(getattr(queries, statement)),
                describe(statement)[0],
                strict=True,
            ):
                types.setdefault(param, kind)
        params = keyed_parameters(queries, operation)
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
        if not function_exists(conn, schema, function):
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
