"""The ledger's SQL: named statements read from ``ledger/sql/*.sql``.

Every statement the ledger sends is written out in full in those files,
under a ``-- name: <name>`` header, in psycopg's ``%(param)s`` style, so a
reviewer reads exactly what runs and every change to it is a plain SQL diff.
The only substitution is ``{schema}``, replaced by the quoted schema name
(validated by :func:`ledger._validate.schema_name` before it gets here).

The names are the fields of :class:`Queries`; loading fails loudly if a file
and the fields disagree, so a statement can always be found with grep.

:class:`Queries` is also the seam between the core and the Citus wing
(:mod:`ledger.citus`): the few steps whose plan differs on a distributed
schema (finding a hold's tenant, the expiry sweep, batches, keyed calls) are
methods here that answer for one server, and
:class:`ledger.citus.queries.DistributedQueries` answers for Citus. The
operations call them and never test which kind of schema they run on, so a
call on plain PostgreSQL never enters ledger/citus/.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, Final, TypeVar

from ._requests import Op, Steps
from .outcomes import Outcome

OutcomeT = TypeVar("OutcomeT", bound=Outcome)
#: A batch's settlement item: (reservation id, actual or 0, tenant id or None, key or None).
Settlement = tuple[int, int, str | None, str | None]


class Gone(enum.Enum):
    """:meth:`Queries.hold_owner`'s answer when the hold does not exist."""

    GONE = "no such hold (settled, expired or never made)"


#: The one value of :class:`Gone`.
GONE: Final = Gone.GONE

_HEADER = "-- name: "


def parse(text: str) -> dict[str, str]:
    """``{name: sql}`` for every ``-- name:`` block; the comment lines before the SQL are docs."""
    queries: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []

    def flush() -> None:
        if name is None:
            return
        lines = list(body)
        while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
            lines.pop(0)
        sql = "\n".join(lines).strip()
        if not sql:
            raise ValueError(f"query {name!r} has no SQL")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = sql

    for line in text.splitlines():
        if line.startswith(_HEADER):
            flush()
            name, body = line[len(_HEADER) :].strip(), []
        elif name is not None:
            body.append(line)
    flush()
    return queries


def read_folder(*folder: str) -> dict[str, str]:
    """``{name: sql}`` of every ``.sql`` file in ``ledger/<folder>`` (not its subfolders)."""
    found: dict[str, str] = {}
    for entry in sorted(resources.files("ledger").joinpath(*folder).iterdir(), key=str):
        if entry.name.endswith(".sql"):
            for name, sql in parse(entry.read_text(encoding="utf-8")).items():
                if name in found:
                    raise ValueError(f"query {name!r} is defined in two .sql files")
                found[name] = sql
    return found


@functools.cache
def _templates() -> dict[str, str]:
    return read_folder("sql")


@dataclass(frozen=True, slots=True)
class Queries:
    """Every statement of the ledger, with the schema name spliced in.

    The methods at the end are the steps that differ on Citus, as they run on
    one server (see the module's docstring).
    """

    # tenants.sql
    ensure_tenant: str
    set_cap: str
    top_up: str
    set_parent: str
    children: str
    subtree: str
    # spend.sql
    try_reserve: str
    commit: str
    commit_for_tenant: str
    release: str
    release_for_tenant: str
    nested_reserve: str
    nested_settle: str
    expired_hold: str
    # expiry.sql
    expire_any: str
    expire_for_tenant: str
    expire_hold: str
    expire_hold_for_tenant: str
    expire_through: str
    # distributed.sql
    routed_functions: str
    hold_tenant: str
    expire_candidates: str
    lock_tenant: str
    lock_hold: str
    shard_map: str
    # batches.sql
    batch_reserve_begin: str
    batch_draw_ids: str
    batch_settle_begin: str
    batch_apply: str
    expired_holds: str
    # idempotency.sql
    idempotency_claim: str
    idempotency_read: str
    idempotency_record: str
    idempotency_unclaim: str
    idempotency_prune: str
    # reads.sql
    tenant: str
    counts: str
    snapshot_version: str
    snapshot: str
    first_unbalanced: str
    tenant_scoped: str
    # certificates.sql
    certify_snapshot: str
    certify: str
    certificate_checkpoint: str
    outside_latest: str
    outside_certificate: str
    outside_chain: str
    # verify.sql
    verify_journal: str
    verify_journal_since: str
    verify_tenants: str
    verify_holds: str
    verify_detached: str
    verify_checkpoints: str
    verify_start: str
    verify_roots: str
    # restore.sql
    restore_lock: str
    restore_clear_holds: str
    restore_clear_tree: str
    restore_drop_tenants: str
    restore_update: str
    restore_insert: str
    restore_tree: str
    restore_version: str
    # periods.sql
    renew_tenant: str
    renew_tenants: str
    renew_due: str
    try_renew_tenant: str
    set_allowance: str
    clear_allowance: str
    period_spend: str
    # corrections.sql
    refund: str
    nested_refund: str
    adjust: str
    # stats.sql
    stats_holds: str
    stats_drift: str
    stats: str
    # asof.sql
    asof_balance: str
    asof_balances: str
    asof_spend: str
    asof_spends: str
    asof_checkpoint: str
    # alerts.sql
    lock_tenant_for_thresholds: str
    set_threshold: str
    clear_threshold: str
    thresholds: str
    claim_alerts: str
    ack_alerts: str
    release_alerts: str
    alerts_list: str
    alert_backlog: str

    # ----------------------------------------- the steps Citus answers differently

    def idempotent(
        self,
        operation: tuple[str, Mapping[str, Any]] | None,
        request_hash: bytes,
        replayed: Callable[[Any, Any], OutcomeT],
        three_statements: Op[OutcomeT],
    ) -> Op[OutcomeT]:
        """A keyed call: claim, operation and record, here in one transaction of three
        statements. ``operation`` (its name and parameters) lets Citus make it one call."""
        return three_statements

    def check_nested(self, what: str) -> None:
        """Nested budgets (a parent, a move) are available on one server: nothing to refuse.

        A Citus-distributed schema refuses them with NestedNotSupported until
        they are distributed too (DistributedQueries.check_nested).
        """

    def trees(self) -> bool:
        """Whether tenants may have parents here (one server: yes).

        A refund asks it to pick its statement: ``nested_refund`` refunds a
        commit at every level it settled at (and hands a flat one to
        ``refund_commit``); where there are no trees (a Citus-distributed
        schema, DistributedQueries.trees) the flat ``refund`` is enough, and
        finding a commit's levels by reservation id alone would read every shard.
        """
        return True

    def hold_owner(self, rid: int, tenant_id: str | None) -> Steps[str | Gone | None]:
        """The tenant to settle hold ``rid`` under: the caller's ``tenant_id``.

        With a tenant the settlement is one tenant-keyed statement; without one,
        one server settles by id alone (None), in one statement: nothing is sent
        here. Citus must find the hold's tenant first, or :data:`GONE`.
        """
        return tenant_id
        yield  # a generator, like the steps Citus answers with

    def sweep(
        self, count: int, skipped: dict[str, str], one_server: Callable[[], Steps[int]]
    ) -> Steps[int]:
        """The expiry sweep of up to ``count`` holds: ``one_server``'s ``expire_any`` loop."""
        return one_server()

    def reserve_batch(
        self,
        tenants: list[str],
        singles: Callable[[], Iterator[Op[OutcomeT]]],
        one_server: Callable[[], Steps[list[OutcomeT]]],
    ) -> Steps[list[OutcomeT]]:
        """A reserve batch: ``one_server`` locks every tenant in one statement and decides."""
        return one_server()

    def settle_batch(
        self,
        prepared: list[Settlement],
        single: Callable[[Settlement], Op[OutcomeT]],
        one_server: Callable[[], Steps[list[OutcomeT]]],
    ) -> Steps[list[OutcomeT]]:
        """A commit or release batch: ``one_server`` locks holds and tenants in one statement."""
        return one_server()


@functools.cache
def for_schema(schema: str) -> Queries:
    """The statements for one (already validated) schema, rendered once and shared."""
    templates = _templates()
    expected = {f.name for f in fields(Queries)}
    if set(templates) != expected:
        raise ValueError(
            "ledger/sql/*.sql and ledger._queries.Queries disagree: "
            f"missing {sorted(expected - set(templates))}, "
            f"unknown {sorted(set(templates) - expected)}"
        )
    quoted = f'"{schema}"'
    return Queries(**{name: sql.replace("{schema}", quoted) for name, sql in templates.items()})
