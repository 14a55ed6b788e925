"""The names ``ledger distribute`` gives things on Citus, shared by the DDL and the runtime.

:mod:`ledger.citus.distribute` distributes by them, :mod:`ledger.citus.functions`
makes functions called by them, and :mod:`ledger.citus.queries` recognises a
distributed schema by them (its routed functions and its shard lock), so they
are defined once, here.
"""

from __future__ import annotations

#: Distributed first; every other tenant-keyed table is colocated with it.
ANCHOR = "tenants"
#: The column every tenant-keyed table is distributed by.
DISTRIBUTION_COLUMN = "tenant_id"
#: Argument name that marks a function for delegation to the tenant's worker.
FUNCTION_ARGUMENT = "p_tenant_id"
#: Every generated function's name starts with this: ``routed_<statement>_<hash>``.
ROUTED_PREFIX = "routed_"
#: ``routed_keyed_<operation>_<hash>``: claim -> operation -> record in one call.
KEYED_PREFIX = f"{ROUTED_PREFIX}keyed_"
#: SECURITY DEFINER wrapper of Citus's lock_shard_metadata (ShareLock only), which
#: checks table ownership: the application role calls the routed functions too. A
#: schema that has it is distributed (:func:`ledger.citus.queries.routed_variant`).
SHARD_LOCK = "lock_tenant_shard"
#: The shard functions' guard: :data:`SHARD_LOCK`'s lock, then "is the placement on
#: this node?". PL/pgSQL, so its statements keep their plans for the session (a
#: SQL function is parsed and planned on every call: 9% of a worker's CPU in a
#: reserve->commit cycle, measured with perf).
SHARD_HERE = "lock_shard_here"
#: ``routed_<statement>_<hash>_s<anchor shard id>``: the statement on one shard group.
SHARD_SUFFIX = "_s"
#: ``journal_hash``'s STABLE twin, for statements on the shards themselves: Citus
#: needs ``journal_hash`` IMMUTABLE (``_journal_hash_immutable`` in
#: :mod:`ledger.citus.distribute`), which keeps PostgreSQL from inlining it (its
#: body is only STABLE): about 0.1 ms more CPU per reserve->commit cycle on a
#: worker, measured.
SHARD_HASH = "journal_hash_on_shard"
