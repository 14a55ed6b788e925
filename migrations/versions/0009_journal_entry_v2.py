"""Journal entry format 2: an encoding in which no two entries hash alike.

Issue 22, finding 7. Format 1 (tag ``sqlledger/journal/v1``) encodes an
absent number as 0, an absent key or reason as '', and appends the period
index and reason (revision 0006) only when either is present, a NULL period
then as -1. So ``(period_index -1, reason NULL)`` and ``(period_index NULL,
reason '')`` give the same bytes, and so do -1 and NULL next to a reason:
whoever can write the journal could turn one into the other and every hash,
and every chain head, stayed the same. Negative period indexes are ordinary.

Format 2 (tag ``sqlledger/journal/v2``, docs/journal.md) always encodes every
field; each nullable one starts with a presence byte (0 = NULL, 1 = a value
follows) and every string carries its length, so the encoding is injective.

- ``journal.entry_format`` (smallint): NULL for every row written before this
  revision (format 1), 2 for new rows. Added without a default, so no row is
  rewritten or filled, then given DEFAULT 2 for the rows to come.
- ``journal_hash`` (both overloads, same names and signatures) computes
  format 2 from now on, so every writer, in ledger/sql/ and in the PL/pgSQL
  functions of revisions 0006 and 0007, writes format 2 without a body of
  theirs changing. Still STABLE and a single expression, so PostgreSQL keeps
  inlining it into the writes (revision 0005); IMMUTABLE on a Citus
  coordinator, as before.
- ``journal_hash_v1`` (both overloads): the format 1 bodies, for verifying
  old entries in SQL.
- ``journal_hash_on_shard``, the STABLE copy of ``journal_hash`` that
  ``ledger distribute`` makes for the shard functions, is replaced with the
  new bodies where it exists, so a distributed ledger writes format 2 on its
  shards too before ``ledger distribute`` runs again.

Zero-downtime: ADD COLUMN without a default and SET DEFAULT are metadata
only (the journal's exclusive lock is held for an instant, under
``lock_timeout``); functions are replaced in place. Writers that have a plan
with the old body inlined plan again: PostgreSQL invalidates plans that
inlined a function when it is replaced, and the new column's default when
the table is altered. All of it commits at once, so no entry is hashed in one
format and labelled with the other.

Downgrade puts the format 1 bodies back into ``journal_hash``, drops
``journal_hash_v1`` and the column. Code older than this revision does not
know format 2, so its ``verify_journal`` reports the format-2 entries as
``hash_mismatch``; upgraded again, they verify (their labels are gone, but
replay accepts a stored hash that matches either format, which costs no
tamper-evidence: docs/journal.md).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-14
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from ledger import migrator

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The arguments of the two overloads (revision 0002, and 0006 with period and reason).
ARGUMENTS_14 = (
    "prev bytea, tenant text, seq bigint, op text, reservation bigint, amount bigint, "
    "hold bigint, initial bigint, remaining bigint, reserved bigint, committed bigint, "
    "cap bigint, at timestamptz, ikey text"
)
ARGUMENTS_16 = ARGUMENTS_14 + ", period bigint, reason text"
SIGNATURE_14 = (
    "bytea, text, bigint, text, bigint, bigint, bigint, bigint, bigint, bigint, bigint, "
    "bigint, timestamptz, text"
)
SIGNATURE_16 = SIGNATURE_14 + ", bigint, text"

# Format 1, exactly as revisions 0002 (14 arguments) and 0006 (16) wrote it.
_V1_HEAD = """
            SELECT sha256(
                '\\x73716c6c65646765722f6a6f75726e616c2f763100'::bytea
                || prev
                || int4send(octet_length(convert_to(tenant, 'UTF8'))) || convert_to(tenant, 'UTF8')
                || int8send(seq)
                || int2send(octet_length(op)::smallint) || convert_to(op, 'UTF8')
                || int8send(coalesce(reservation, 0))
                || int8send(coalesce(amount, 0))
                || int8send(coalesce(hold, 0))
                || int8send(initial) || int8send(remaining) || int8send(reserved)
                || int8send(committed) || int8send(cap)
                || int8send((extract(epoch FROM at) * 1000000)::bigint)
                || int4send(octet_length(convert_to(coalesce(ikey, ''), 'UTF8')))
                || convert_to(coalesce(ikey, ''), 'UTF8')"""
V1_BODY_14 = _V1_HEAD + "\n            )\n        "
V1_BODY_16 = (
    _V1_HEAD
    + """
                || CASE WHEN period IS NULL AND reason IS NULL THEN ''::bytea
                        ELSE int8send(coalesce(period, -1))
                             || int4send(octet_length(convert_to(coalesce(reason, ''), 'UTF8')))
                             || convert_to(coalesce(reason, ''), 'UTF8')
                   END
            )
        """
)


# Each argument appears once (a string twice, as in format 1): PostgreSQL does
# not inline a SQL function that uses an expensive argument, such as the
# writers' ``(SELECT id FROM rid)``, more than once. ``||`` is strict, so the
# value's bytes are NULL for a NULL value and coalesce() gives the 0x00.
def _some_i64(name: str) -> str:
    return f"coalesce('\\x01'::bytea || int8send({name}), '\\x00'::bytea)"


def _some_text(name: str) -> str:
    return (
        f"coalesce('\\x01'::bytea || int4send(octet_length(convert_to({name}, 'UTF8')))"
        f" || convert_to({name}, 'UTF8'), '\\x00'::bytea)"
    )


def _v2_body(period: str, reason: str) -> str:
    """Format 2 (docs/journal.md); ledger.journal.entry_hash_v2_us mirrors it byte for byte."""
    return f"""
            SELECT sha256(
                '\\x73716c6c65646765722f6a6f75726e616c2f763200'::bytea
                || prev
                || int4send(octet_length(convert_to(tenant, 'UTF8'))) || convert_to(tenant, 'UTF8')
                || int8send(seq)
                || int2send(octet_length(op)::smallint) || convert_to(op, 'UTF8')
                || {_some_i64("reservation")}
                || {_some_i64("amount")}
                || {_some_i64("hold")}
                || int8send(initial) || int8send(remaining) || int8send(reserved)
                || int8send(committed) || int8send(cap)
                || int8send((extract(epoch FROM at) * 1000000)::bigint)
                || {_some_text("ikey")}
                || {_some_i64(period)}
                || {_some_text(reason)}
            )
        """


#: The 14-argument overload is the 16-argument one without a period or a reason.
V2_BODY_14 = _v2_body("NULL::bigint", "NULL::text")
V2_BODY_16 = _v2_body("period", "reason")


def _schema() -> str:
    schema: str = context.config.attributes["ledger_schema"]
    return schema


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _hash_function(q: str, name: str, arguments: str, body: str) -> None:
    op.execute(
        sa.text(
            f"CREATE OR REPLACE FUNCTION {q}.{name}({arguments}) RETURNS bytea\n"
            f"        LANGUAGE sql STABLE PARALLEL SAFE AS $${body}$$"
        )
    )


def _journal_hash(q: str, body_14: str, body_16: str) -> None:
    """``journal_hash`` with these bodies, as revisions 0005/0006 label it, and its shard copy."""
    _hash_function(q, "journal_hash", ARGUMENTS_14, body_14)
    _hash_function(q, "journal_hash", ARGUMENTS_16, body_16)
    # On Citus the hash functions stay IMMUTABLE (revision 0005 says why); the
    # shard functions' STABLE copy (ledger._distribute.SHARD_HASH) gets the same
    # bodies, read from the catalog as `ledger distribute` reads them.
    op.execute(
        sa.text(f"""
        DO $$
        DECLARE
            r record;
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
                ALTER FUNCTION {q}.journal_hash({SIGNATURE_14}) IMMUTABLE;
                ALTER FUNCTION {q}.journal_hash({SIGNATURE_16}) IMMUTABLE;
            END IF;
            FOR r IN
                SELECT pg_catalog.pg_get_function_arguments(p.oid) AS arguments,
                       pg_catalog.oidvectortypes(p.proargtypes) AS identity,
                       p.prosrc
                FROM pg_catalog.pg_proc AS p
                WHERE p.pronamespace = {_literal(q)}::regnamespace AND p.proname = 'journal_hash'
            LOOP
                IF pg_catalog.to_regprocedure(
                       {_literal(q)} || '.journal_hash_on_shard(' || r.identity || ')'
                   ) IS NOT NULL THEN
                    EXECUTE 'CREATE OR REPLACE FUNCTION {q}.journal_hash_on_shard('
                        || r.arguments || ') RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS '
                        || pg_catalog.quote_literal(r.prosrc);
                END IF;
            END LOOP;
        END
        $$
    """)
    )


def _one_connection_per_node_on_citus() -> None:
    """As revisions 0006 and 0007: shard DDL and function DDL share one transaction on Citus.

    Citus sends a function's DDL to every node over one connection per node,
    which it refuses after the ALTER TABLE on the distributed journal has run
    in parallel over several; sequential mode uses one connection throughout.
    """
    op.execute(
        sa.text("""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
                PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
            END IF;
        END
        $$
    """)
    )


def upgrade() -> None:
    migrator.locked(_expand)


def _expand() -> None:
    _one_connection_per_node_on_citus()
    s = _schema()
    q = f'"{s}"'
    # Metadata only: no default while the column is added, so no row is filled.
    # A format number, not a counter: smallint cannot run out.
    op.execute(
        sa.text(
            "-- squawk-ignore prefer-bigint-over-smallint\n"
            f"ALTER TABLE {q}.journal ADD COLUMN entry_format smallint"
        )
    )
    _hash_function(q, "journal_hash_v1", ARGUMENTS_14, V1_BODY_14)
    _hash_function(q, "journal_hash_v1", ARGUMENTS_16, V1_BODY_16)
    _journal_hash(q, V2_BODY_14, V2_BODY_16)
    op.execute(sa.text(f"ALTER TABLE {q}.journal ALTER COLUMN entry_format SET DEFAULT 2"))


def downgrade() -> None:
    migrator.locked(_contract)


def _contract() -> None:
    _one_connection_per_node_on_citus()
    s = _schema()
    q = f'"{s}"'
    op.execute(sa.text(f"ALTER TABLE {q}.journal ALTER COLUMN entry_format DROP DEFAULT"))
    _journal_hash(q, V1_BODY_14, V1_BODY_16)
    op.execute(sa.text(f"DROP FUNCTION {q}.journal_hash_v1({SIGNATURE_16})"))
    op.execute(sa.text(f"DROP FUNCTION {q}.journal_hash_v1({SIGNATURE_14})"))
    op.drop_column("journal", "entry_format", schema=s)
