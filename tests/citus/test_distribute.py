"""ledger.distribute() and `ledger distribute`: placement, idempotence, refusals, the journal
triggers on every shard, reservation ids across nodes, migrations after distribution."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import make_url

import ledger
from ledger import distribute, errors, migrator
from ledger.cli import main
from ledger.errors import CitusNotAvailable
from tests.helpers import state

from .conftest import SHARDS, Recorder, alchemy, fresh_schema, plain

TENANT_KEYED = {
    "tenants",
    "reservations",
    "detached_tenants",
    "journal",
    "idempotency_keys",
    "certificate_checkpoints",
    "allowances",  # revision 0006
    "refusals",
    "asof_checkpoints",
    "thresholds",  # revision 0010
    "threshold_spend",
    "alerts",
}
LEDGER_WIDE = {"certificates", "certificate_baseline"}
#: Tenant-keyed tables that revisions after 0005 add (distributed by the next distribute()).
ADDED_AFTER_0005 = {
    "allowances",
    "refusals",
    "asof_checkpoints",
    "thresholds",
    "threshold_spend",
    "alerts",
}


def placement(raw: psycopg.Connection, schema: str) -> dict[str, tuple[str, str, int, int]]:
    rows = raw.execute(
        "SELECT table_name::text, citus_table_type, distribution_column, colocation_id,"
        " shard_count FROM citus_tables WHERE table_name::text LIKE %s",
        (f"{schema}.%",),
    ).fetchall()
    return {name.split(".", 1)[1]: tuple(rest) for name, *rest in rows}  # type: ignore[misc]


def test_tables_are_placed_by_tenant(schema: str, raw: psycopg.Connection) -> None:
    placed = placement(raw, schema)
    assert set(placed) == TENANT_KEYED | LEDGER_WIDE  # alembic_version stays local
    colocation = placed["tenants"][2]
    for name in TENANT_KEYED:
        assert placed[name] == ("distributed", "tenant_id", colocation, SHARDS), name
    for name in LEDGER_WIDE:
        assert placed[name][0] == "reference", name
    # every worker holds shards of the tenant tables
    nodes = raw.execute(
        "SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = %s::regclass",
        (f"{schema}.tenants",),
    ).fetchone()
    workers = raw.execute("SELECT count(*) FROM citus_get_active_worker_nodes()").fetchone()
    assert nodes == workers


def test_distribute_is_idempotent_and_keeps_data(citus_url: str, raw: psycopg.Connection) -> None:
    with fresh_schema(citus_url, distributed=False) as s:
        book = ledger.Ledger(alchemy(citus_url), schema=s)
        book.ensure_tenant("acme", 1_000)
        hold = book.try_reserve("acme", 100)
        book.certify()
        before = state(raw, s)
        first = distribute(alchemy(citus_url), s, shard_count=SHARDS)
        assert set(first.distributed) == TENANT_KEYED and set(first.reference) == LEDGER_WIDE
        assert first.changed and first.shard_count == SHARDS
        second = distribute(alchemy(citus_url), s)
        assert second.changed == () and second.shard_count == SHARDS
        after = state(raw, s)
        after.pop("reservation_seq")
        before.pop("reservation_seq")
        assert after == before  # rows moved to the shards, none lost or doubled
        assert book.release(hold.reservation_id, tenant_id="acme").ok  # type: ignore[arg-type]
        assert book.verify_journal().ok
        book.close()


def test_cli_distribute(citus_url: str) -> None:
    with fresh_schema(citus_url, distributed=False) as s:
        runner = CliRunner()
        args = ["--database-url", citus_url, "--schema", s, "--json", "distribute"]
        result = runner.invoke(main, [*args, "--shard-count", str(SHARDS)])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.output)
        assert set(payload["distributed"]) == TENANT_KEYED and payload["changed"]
        again = runner.invoke(main, args)
        assert again.exit_code == 0 and json.loads(again.output)["changed"] == []


def test_refused_without_citus(citus_url: str) -> None:
    """A database without the extension gets a typed error, and nothing changes."""
    name = f"plain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(plain(citus_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(plain(citus_url)).set(database=name).render_as_string(hide_password=False)
        ledger.migrate(alchemy(url))
        with pytest.raises(CitusNotAvailable, match="no Citus extension"):
            distribute(alchemy(url))
        assert issubclass(CitusNotAvailable, errors.LedgerError)
        result = CliRunner().invoke(main, ["--database-url", url, "distribute"])
        assert result.exit_code == 3 and "no Citus extension" in result.output
        with ledger.Ledger(alchemy(url)) as book:  # plain PostgreSQL keeps working
            book.ensure_tenant("acme", 5)
            assert book.try_reserve("acme", 5).ok
    finally:
        with psycopg.connect(plain(citus_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_refused_on_an_unmigrated_schema(citus_url: str) -> None:
    with pytest.raises(errors.SchemaNotMigrated, match=r"ledger\.migrate"):
        distribute(alchemy(citus_url), f"nothing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(errors.InvalidSchemaName):
        distribute(alchemy(citus_url), "Bad-Name")


def _workers(raw: psycopg.Connection, schema: str, table: str) -> list[tuple[str, int, str]]:
    return raw.execute(
        "SELECT nodename, nodeport, shard_name FROM citus_shards"
        " WHERE table_name = %s::regclass ORDER BY shard_name",
        (f"{schema}.{table}",),
    ).fetchall()


@pytest.mark.parametrize(
    "sql",
    ["UPDATE {t} SET amount_microcents = 1", "DELETE FROM {t}", "TRUNCATE {t}"],
)
def test_journal_refuses_changes_on_every_shard(
    book: ledger.Ledger, schema: str, raw: psycopg.Connection, citus_url: str, sql: str
) -> None:
    for i in range(12):  # entries on every shard
        book.ensure_tenant(f"t{i}", 10)
    count = raw.execute(f'SELECT count(*) FROM "{schema}".journal').fetchone()
    with pytest.raises(psycopg.DatabaseError, match="append-only") as caught:
        raw.execute(sql.format(t=f'"{schema}".journal'))
    assert caught.value.sqlstate == "LG002"
    shards = _workers(raw, schema, "journal")
    assert len(shards) == SHARDS
    for host, port, shard in shards:
        conninfo = make_url(plain(citus_url)).set(host=host, port=port)
        with psycopg.connect(
            conninfo.render_as_string(hide_password=False), autocommit=True
        ) as worker:
            # Citus guards shards from direct writes; with the guard off the trigger still refuses
            worker.execute("SET citus.enable_manual_changes_to_shards = on")
            with pytest.raises(psycopg.DatabaseError, match="append-only") as caught:
                worker.execute(sql.format(t=f'"{schema}".{shard.split(".", 1)[1]}'))
            assert caught.value.sqlstate == "LG002", (port, shard)
    assert raw.execute(f'SELECT count(*) FROM "{schema}".journal').fetchone() == count
    assert book.verify_journal().ok


def test_reservation_ids_stay_unique_whichever_node_draws_them(
    schema: str, raw: psycopg.Connection, citus_url: str
) -> None:
    seq = f'"{schema}".reservation_id_seq'
    drawn = [raw.execute(f"SELECT nextval('{seq}')").fetchone()[0] for _ in range(3)]  # type: ignore[index]
    nodes = raw.execute(
        "SELECT node_name, node_port FROM citus_get_active_worker_nodes()"
    ).fetchall()
    for host, port in nodes:
        url = make_url(plain(citus_url)).set(host=host, port=port)
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as worker:
            drawn += [worker.execute(f"SELECT nextval('{seq}')").fetchone()[0] for _ in range(3)]  # type: ignore[index]
    assert len(set(drawn)) == len(drawn) == 3 * (len(nodes) + 1)
    # one range per node: a node would need 2**48 ids to reach the next one's
    assert len({i >> 48 for i in drawn}) == len(nodes) + 1
    with pytest.raises(psycopg.errors.InternalError_, match="distributed sequence"):
        raw.execute(f"ALTER SEQUENCE {seq} RESTART WITH 1")  # Citus keeps the ranges apart


def test_downgrade_and_upgrade_after_distribution(
    citus_url: str, schema: str, raw: psycopg.Connection
) -> None:
    url = alchemy(citus_url)
    with ledger.Ledger(url, schema=schema) as book:
        book.ensure_tenant("acme", 1_000)
        book.try_reserve("acme", 10)
        migrator.downgrade(url, "0002", schema=schema)
        migrator.migrate(url, schema=schema)
        # The tables the downgrade dropped come back local; distribute() picks up just those
        # (and makes the shard functions that named their old shards again).
        changed = distribute(url, schema).changed
        assert {c for c in changed if not c.startswith("created ")} == {
            f"distributed {name} by tenant_id" for name in ADDED_AFTER_0005
        }
        assert any(c.startswith("created ") and "shard functions" in c for c in changed)
        assert distribute(url, schema).changed == ()
        assert raw.execute(f'SELECT open_holds FROM "{schema}".balances').fetchone() == (1,)
        assert book.try_reserve("acme", 10).ok
        assert book.verify_journal().ok


def test_migrating_to_head_after_distributing_an_earlier_revision(citus_url: str) -> None:
    """Distribute at 0002 (the journal's revision), then migrate to head.

    The later revisions (audit views, an index built CONCURRENTLY, a function
    change) run on the distributed schema. 0002 itself must run before
    distributing: its backfill walks each tenant's holds with a recursive CTE,
    which Citus cannot plan on a distributed table (docs/scale-out.md).
    """
    url = alchemy(citus_url)
    with fresh_schema(citus_url, distributed=False, revision="0002") as s:
        first = distribute(url, s, shard_count=SHARDS)
        assert set(first.distributed) == TENANT_KEYED - ADDED_AFTER_0005
        migrator.migrate(url, schema=s)
        again = distribute(url, s)
        assert set(again.distributed) == TENANT_KEYED
        assert {c for c in again.changed if c.startswith("distributed")} == {
            f"distributed {name} by tenant_id" for name in ADDED_AFTER_0005
        }
        with ledger.Ledger(url, schema=s) as book:
            book.ensure_tenant("acme", 1_000)
            assert book.try_reserve("acme", 10).ok
            assert book.verify_journal().ok


def test_a_ledger_before_the_journal_is_refused_until_migrated(citus_url: str) -> None:
    """Revision 0001 is refused (0002's backfill on distributed tables with open holds
    wrote entries that did not verify: this test was a strict xfail until the refusal);
    migrated to head first, the same ledger distributes and its journal verifies."""
    url = alchemy(citus_url)
    with fresh_schema(citus_url, distributed=False, revision="0001") as s:
        with psycopg.connect(plain(citus_url), autocommit=True) as raw:
            raw.execute(
                f'INSERT INTO "{s}".tenants (tenant_id, initial_microcents, remaining_microcents,'
                " reserved_microcents, committed_microcents) VALUES ('acme', 100, 90, 10, 0)"
            )
            raw.execute(
                f'INSERT INTO "{s}".reservations (tenant_id, reservation_id, amount_microcents)'
                " VALUES ('acme', 1, 10)"
            )
        with pytest.raises(errors.SchemaNotMigrated, match="revision 0001, before the journal"):
            distribute(url, s, shard_count=SHARDS)
        with psycopg.connect(plain(citus_url)) as raw:  # nothing was distributed
            assert raw.execute(
                "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE %s",
                (f"{s}.%",),
            ).fetchone() == (0,)
        migrator.migrate(url, schema=s)
        distribute(url, s, shard_count=SHARDS)
        with ledger.Ledger(url, schema=s) as book:
            report = book.verify_journal()
            assert report.ok, report.discrepancies
            assert book.commit(1, 10, tenant_id="acme").ok
            assert book.tenant("acme") == ledger.TenantLedger("acme", 100, 90, 0, 10)


def test_functions_with_a_tenant_argument_are_delegated_to_the_tenants_worker(
    citus_url: str, recorder: Recorder
) -> None:
    """The convention for the SQL redesign: a ``p_tenant_id`` argument means "run it there"."""
    with fresh_schema(citus_url) as s:
        with psycopg.connect(plain(citus_url), autocommit=True) as raw:
            raw.execute(
                f'CREATE FUNCTION "{s}".remaining_of(p_tenant_id text) RETURNS bigint'
                " LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT remaining_microcents"
                f' FROM "{s}".tenants WHERE tenant_id = p_tenant_id); END $$'
            )
        done = distribute(alchemy(citus_url), s)
        assert [f for f in done.functions if ".routed_" not in f] == [f"{s}.remaining_of(text)"]
        assert distribute(alchemy(citus_url), s).changed == ()
        with ledger.Ledger(alchemy(citus_url), schema=s) as book:
            book.ensure_tenant("acme", 42)
        with psycopg.connect(
            plain(citus_url), autocommit=True, options="-c citus.log_remote_commands=on"
        ) as conn:
            conn.add_notice_handler(recorder.notice)
            with recorder.capture("delegated function call (autocommit)") as remote:
                value = conn.execute(f"SELECT \"{s}\".remaining_of('acme')").fetchone()
        assert value == (42,)
        assert remote.one_round_trip(), remote.summary()


def _shard_functions(raw: psycopg.Connection, schema: str, port: int | None = None) -> set[str]:
    rows = raw.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = CAST(%s AS regnamespace)"
        " AND proname ~ '^routed_.*_s[0-9]+$'",
        (f'"{schema}"',),
    ).fetchall()
    return {r[0] for r in rows}


def test_every_shard_group_gets_static_functions_and_the_fallback_still_works(
    citus_url: str,
    schema: str,
    book: ledger.Ledger,
    raw: psycopg.Connection,
    recorder: Recorder,
) -> None:
    """One static-SQL function per routed statement and shard group, on every node.

    Without it (a shard group made after distribute, e.g. by a split) the routed
    function rewrites its statement to the shards and EXECUTEs it: same result,
    one command; ``distribute`` makes the missing ones again.
    """
    from ledger.citus.functions import ROUTED_STATEMENTS
    from ledger.citus.keyed import KEYED

    made = _shard_functions(raw, schema)
    assert len(made) == (len(ROUTED_STATEMENTS) + len(KEYED)) * SHARDS
    workers = raw.execute("SELECT nodeport FROM pg_dist_node WHERE groupid > 0").fetchall()
    for (port,) in workers:
        url = make_url(plain(citus_url)).set(port=port).render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as worker:
            assert _shard_functions(worker, schema) == made
    for name in [n for n in made if n.startswith("routed_try_reserve_")]:
        raw.execute(f'DROP FUNCTION "{schema}".{name}')
    book.ensure_tenant("acme", 100)
    with recorder.capture() as remote:
        out = book.try_reserve("acme", 40)
    assert out.status == "reserved" and remote.one_round_trip(), remote.summary()
    assert book.verify_journal().ok
    again = distribute(alchemy(citus_url), schema)
    assert any("shard functions of routed_try_reserve_" in c for c in again.changed)
    assert _shard_functions(raw, schema) == made
    assert distribute(alchemy(citus_url), schema).changed == ()

    # A keyed function's shard group without its function: nothing done there, the
    # call runs the three statements (one worker, no 2PC); distribute makes it again.
    for name in [n for n in made if n.startswith("routed_keyed_try_reserve_")]:
        raw.execute(f'DROP FUNCTION "{schema}".{name}')
    with recorder.capture() as remote:
        keyed = book.try_reserve("acme", 10, idempotency_key="k")
    assert keyed.status == "reserved" and len(remote.statements) == 4, remote.summary()
    assert len(remote.nodes) == 1 and not remote.two_phase, remote.summary()
    again = distribute(alchemy(citus_url), schema)
    assert any("shard functions of routed_keyed_try_reserve_" in c for c in again.changed)
    assert _shard_functions(raw, schema) == made
    with recorder.capture() as remote:
        assert book.try_reserve("acme", 10, idempotency_key="k") == keyed
    assert remote.one_round_trip(), remote.summary()
    assert book.tenant("acme") == ledger.TenantLedger("acme", 100, 50, 50, 0)
    assert book.verify_journal().ok


def test_a_temp_pg_dist_placement_does_not_change_lock_shard_here(
    citus_url: str, schema: str, book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    """Issue 22, finding 12: the SECURITY DEFINER guards search pg_catalog, then pg_temp.

    With ``search_path = pg_catalog`` alone PostgreSQL searches the caller's
    temporary schema first, so a caller's TEMP ``pg_dist_placement`` decided
    whether a shard was "here". Checked on the tenant's worker (the shard is
    here: an empty fake must not hide it) and on the other (it is not: a fake
    row must not place it here). A guard made by an earlier version, with the
    old search path, is made again by ``distribute``.
    """
    from ledger.citus.names import SHARD_HERE, SHARD_LOCK

    book.ensure_tenant("acme", 100)
    q = f'"{schema}"'
    shard, port = raw.execute(
        "SELECT s.shardid, s.nodeport FROM citus_shards AS s"
        " WHERE s.shardid = get_shard_id_for_distribution_column(%s::regclass, 'acme')",
        (f"{q}.tenants",),
    ).fetchone()  # type: ignore[misc]
    workers = [p for (p,) in raw.execute("SELECT nodeport FROM pg_dist_node WHERE groupid > 0")]
    assert port in workers and len(workers) >= 2
    for worker_port in workers:
        url = make_url(plain(citus_url)).set(port=worker_port).render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as worker:
            for function in (SHARD_HERE, SHARD_LOCK):
                assert worker.execute(
                    "SELECT proconfig FROM pg_proc WHERE oid = to_regprocedure(%s)",
                    (f"{q}.{function}(bigint)",),
                ).fetchone() == (["search_path=pg_catalog, pg_temp"],), (function, worker_port)
            here = worker_port == port
            worker.execute("CREATE TEMP TABLE pg_dist_placement (shardid bigint, groupid int)")
            if not here:  # claim the shard for this node
                worker.execute(
                    "INSERT INTO pg_temp.pg_dist_placement"
                    " SELECT %s, groupid FROM pg_catalog.pg_dist_local_group",
                    (shard,),
                )
            for path in ("pg_temp, pg_catalog", "pg_catalog"):
                worker.execute(f"SET search_path = {path}")
                answer = worker.execute(f"SELECT {q}.{SHARD_HERE}(%s)", (shard,)).fetchone()
                assert answer == (here,), (worker_port, path)
    # An old guard (search path without pg_temp) is replaced by the next distribute.
    raw.execute(f"ALTER FUNCTION {q}.{SHARD_HERE}(bigint) SET search_path = pg_catalog")
    changed = distribute(alchemy(citus_url), schema).changed
    assert f"created {SHARD_HERE}" in changed
    assert raw.execute(
        "SELECT proconfig FROM pg_proc WHERE oid = to_regprocedure(%s)",
        (f"{q}.{SHARD_HERE}(bigint)",),
    ).fetchone() == (["search_path=pg_catalog, pg_temp"],)
    assert book.try_reserve("acme", 10).ok
    assert book.verify_journal().ok


def test_thresholds_on_a_distributed_schema(book: ledger.Ledger) -> None:
    """The trigger runs with the tenant's shard: a crossing records its alert, once.

    Claiming is not supported on a distributed schema yet (docs/alerts.md,
    "Upgrading"): Citus refuses FOR UPDATE over many shards. This pins both.
    """
    book.ensure_tenant("th", 1_000)
    book.set_threshold("th", "half", spent_percent=50)
    book.set_threshold("th", "low", remaining_below_microcents=1)  # reserves check it
    for _ in range(2):
        hold = book.try_reserve("th", 300).raise_for_status()
        book.commit(hold.reservation_id, 300, tenant_id="th").raise_for_status()  # type: ignore[arg-type]
    [record] = book.list_alerts("th")
    assert (record.alert.threshold, record.alert.spent_microcents) == ("half", 600)
    assert book.alert_backlog().undelivered == 1
    with pytest.raises(ledger.errors.DatabaseError, match="FOR UPDATE"):
        book.claim_alerts(10)
