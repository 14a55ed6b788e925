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
from .sql import render, render_body

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
        name = conn.execute(text(render("type_name")), {"o": oid}).scalar()
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
    # Indented here: the file's statements start at their first keyword.
    shards = "\n".join(
        "        " + render("routed_shard_rewrite", schema=q, table=t) for t in tables
    )
    using = ", ".join(f"${i + 1}" for i in range(len(params)))
    # The shard lock is the one Citus's own executor takes before writing a shard
    # (ShareLock on the colocated shards' metadata): a shard move blocks writes with
    # it, so after it the placement read here is current, and a write never lands
    # in a shard that has just moved away.
    # The statement runs in the shard function of the tenant's shard group when
    # there is one (_create_shard_functions: static SQL, so PL/pgSQL keeps its plan
    # for the session); otherwise its text is rewritten to the shards and EXECUTEd,
    # which parses and plans it on every call.
    create = render(
        "routed_function",
        schema=q,
        function=function,
        arguments=arguments,
        returns=returns,
        statement=body,
        anchor=ANCHOR,
        shard_suffix=SHARD_SUFFIX,
        using=using,
        shard_lock=SHARD_LOCK,
        shards=shards,
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
    return render_body(
        "shard_body", schema=q, shard_here=SHARD_HERE, anchor=anchor, local=local, statement=body
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
    return render(
        "shard_function",
        schema=q,
        function=function,
        arguments=arguments,
        returns=columns,
        body=source,
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
    for function, template, source in (
        (SHARD_LOCK, "shard_lock_function", render("shard_lock_body")),
        (SHARD_HERE, "shard_here_function", render_body("shard_here_body")),
    ):
        if _definer_source(conn, f"{q}.{function}(bigint)") != source:
            conn.exec_driver_sql(
                render(
                    template,
                    schema=q,
                    function=function,
                    search_path=_DEFINER_SEARCH_PATH,
                    body=source,
                )
            )
            changed.append(f"created {function}")
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
        text(render("generated_functions")), {"s": f'"{schema}"', "prefix": ROUTED_PREFIX}
    ).all()
    for signature, function in stale:
        if re.sub(rf"{SHARD_SUFFIX}\d+$", "", function) not in wanted:
            conn.execute(text(render("drop_function", signature=signature)))
            changed.append(f"dropped {function}")


def function_exists(conn: Connection, schema: str, name: str) -> bool:
    """Does ``schema`` have a function called ``name`` (any arguments)?"""
    found = conn.execute(text(render("function_exists")), {"s": f'"{schema}"', "f": name}).first()
    return found is not None


def _functions_named(conn: Connection, schema: str, prefix: str) -> dict[str, str]:
    """name -> body of the schema's functions whose names start with ``prefix``."""
    rows = conn.execute(text(render("functions_named")), {"s": f'"{schema}"', "f": prefix})
    return {str(name): str(source) for name, source in rows.all()}


def _definer_source(conn: Connection, signature: str) -> str | None:
    """A SECURITY DEFINER function's body, or None if it is missing or has another search path."""
    found = conn.execute(text(render("definer_source")), {"f": signature}).first()
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
        rows = conn.execute(text(render("overloads")), {"s": f'"{schema}"', "f": name}).all()
        return {str(a): str(src) for a, src in rows}

    made = overloads(SHARD_HASH)
    for arguments, source in overloads("journal_hash").items():
        if made.get(arguments) != source:
            conn.exec_driver_sql(
                render(
                    "shard_hash_function",
                    schema=f'"{schema}"',
                    function=SHARD_HASH,
                    arguments=arguments,
                    body=source,
                )
            )
            changed.append(f"created {SHARD_HASH}({arguments})")


def _shard_groups(conn: Connection, schema: str) -> dict[int, dict[str, str]]:
    """anchor shard id -> {tenant-keyed table: its shard in that group}, from Citus's metadata.

    Colocated tables have the same hash ranges, so a group's shards are the
    ones with the anchor shard's minimum value.
    """
    rows = conn.execute(
        text(render("shard_groups")), {"anchor": f'"{schema}".{ANCHOR}', "s": f'"{schema}"'}
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
    existing = _functions_named(conn, schema, function + SHARD_SUFFIX)
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
    return render_body(
        "keyed_body",
        schema=q,
        claim=claim,
        read=read,
        apply=apply,
        unclaim=unclaim,
        record=record,
        recorded=recorded,
        missing=missing,
        nulls=nulls,
        row=row,
    )


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
                render(
                    "keyed_function",
                    schema=q,
                    function=function,
                    arguments=arguments,
                    returns=returns,
                    anchor=ANCHOR,
                    shard_suffix=SHARD_SUFFIX,
                    using=using,
                    nulls=nulls,
                )
            )
            changed.append(f"created {function}")
        existing = _functions_named(conn, schema, function + SHARD_SUFFIX)
        made = 0
        for anchor in sorted(groups):
            inner = f"{function}{SHARD_SUFFIX}{anchor}"
            source = _keyed_source(schema, queries, operation, anchor, op_columns)
            if existing.get(inner) == source:
                continue
            arguments = ", ".join(f"a_{p} {types[p]}" for p in params)
            conn.exec_driver_sql(
                render(
                    "shard_function",
                    schema=q,
                    function=inner,
                    arguments=arguments,
                    returns=returns,
                    body=source,
                )
            )
            made += 1
        if made:
            changed.append(f"created {made} shard functions of {function}")
