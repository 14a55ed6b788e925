"""The Citus wing: everything the ledger does only on a schema spread over Citus workers.

- :mod:`ledger.citus.distribute`: ``ledger distribute``'s DDL (tables, sequences,
  delegated functions), run once per migration on the coordinator;
- :mod:`ledger.citus.functions`: the PL/pgSQL functions it generates from the
  named queries (routed, per shard group, keyed);
- :mod:`ledger.citus.queries`: the statements of a distributed schema
  (:class:`~ledger.citus.queries.DistributedQueries`) and the steps that differ
  there (:mod:`ledger.citus.steps`);
- :mod:`ledger.citus.keyed`: idempotent calls in one command;
- :mod:`ledger.citus.routing`: clients that send a tenant's calls to its worker
  (``route_to_workers=True``), with :mod:`ledger.citus.hash` (PostgreSQL's
  ``hashtext`` in Python);
- :mod:`ledger.citus.names`: the names all of them share.

The core reaches this package at one seam, :mod:`ledger._routing` (plus the
public :func:`ledger.distribute` and the CLI command that calls it): on plain
PostgreSQL no code here runs (docs/scale-out.md, "Where the Citus code lives").
"""
