"""Hostile input, fuzzed with hypothesis, across the API, the CLI and restore files.

Every call either works on valid input or raises a typed ledger error; a
refused call leaves the database byte-for-byte as it was (balances, holds,
journal length and every chain head).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledger
from ledger import cli, errors

from .conftest import FIGURES
from .helpers import I64_MAX, I64_MIN, state

tenant_ids = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=300),
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "x" * 10_000,
            "'; DROP TABLE ledger.journal; --",
            "Robert'); DELETE FROM ledger.tenants; --",
            "\udcff",
            "🙂" * 70,
            " ",
        ]
    ),
    st.none(),
    st.integers(),
    st.binary(max_size=10),
)
amounts = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([I64_MAX, I64_MAX + 1, I64_MIN, I64_MIN - 1, 0, -1, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.decimals(allow_nan=False),
    st.text(max_size=5),
    st.none(),
)
rids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(),
    st.text(max_size=3),
    st.none(),
)

CALLS = {
    "ensure_tenant": lambda b, t, a, r: b.ensure_tenant(t, a),
    "top_up_tenant": lambda b, t, a, r: b.top_up_tenant(t, a),
    "set_max_reserved_microcents": lambda b, t, a, r: b.set_max_reserved_microcents(t, a),
    "try_reserve": lambda b, t, a, r: b.try_reserve(t, a),
    "try_reserve(ttl)": lambda b, t, a, r: b.try_reserve(t, 1, ttl=a),
    "try_reserve(key)": lambda b, t, a, r: b.try_reserve("seed", 1, idempotency_key=t),
    "commit": lambda b, t, a, r: b.commit(r, a, tenant_id=t),
    "release": lambda b, t, a, r: b.release(r, tenant_id=t),
    "tenant": lambda b, t, a, r: b.tenant(t),
    "remaining_microcents": lambda b, t, a, r: b.remaining_microcents(t),
    "try_reserve_many": lambda b, t, a, r: b.try_reserve_many([(t, a)]),
    "commit_many": lambda b, t, a, r: b.commit_many([(r, a, t)]),
    "release_many": lambda b, t, a, r: b.release_many([r]),
    "expire_holds": lambda b, t, a, r: b.expire_holds(limit=a),
    "verify_journal": lambda b, t, a, r: b.verify_journal(since_certificate=r),
}

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
COUNT = {"api": 0, "cli": 0, "restore": 0}


@FUZZ
@given(call=st.sampled_from(sorted(CALLS)), tenant=tenant_ids, amount=amounts, rid=rids)
def test_api_fuzz(
    book: ledger.Ledger, raw: psycopg.Connection, call: str, tenant: Any, amount: Any, rid: Any
) -> None:
    if book.tenant("seed") is None:
        book.ensure_tenant("seed", 10**6)
    before = state(raw)
    COUNT["api"] += 1
    try:
        CALLS[call](book, tenant, amount, rid)
    except errors.LedgerError:
        assert state(raw) == before, call


cli_args = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "tenant",
                "create",
                "top-up",
                "limit",
                "show",
                "reserve",
                "commit",
                "release",
                "--units",
                "--ttl",
                "--json",
                "restore",
                "verify",
                "-1",
                "0",
                "1.5",
                "x" * 300,
            ]
        ),
        st.text(max_size=20),
    ),
    max_size=6,
)


@FUZZ
@given(args=cli_args)
def test_cli_fuzz(db_url: str, raw: psycopg.Connection, args: list[str]) -> None:
    before = state(raw)
    COUNT["cli"] += 1
    result = CliRunner().invoke(cli.main, ["--database-url", db_url, *args], catch_exceptions=True)
    assert result.exit_code in (0, 1, 2, 3, 4), result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), f"{args}: {result.exception!r}"
    assert "Traceback" not in result.output
    if result.exit_code == cli.EXIT_BAD_INPUT:
        assert state(raw) == before


def tenant_doc(tid: Any, i: Any, r: Any, res: Any, c: Any) -> dict[str, Any]:
    return {
        "tenant_id": tid,
        "initial_microcents": i,
        "remaining_microcents": r,
        "reserved_microcents": res,
        "committed_microcents": c,
    }


ledger_amounts = st.one_of(
    st.integers(min_value=I64_MIN, max_value=I64_MAX),
    st.sampled_from([I64_MAX, I64_MIN, 0, -1, I64_MAX + 1]),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
adversarial_snapshots = st.fixed_dictionaries(
    {
        "version": st.one_of(
            st.integers(min_value=-1, max_value=2**64 + 1), st.floats(), st.none()
        ),
        "active_reservations": st.one_of(st.integers(min_value=-1, max_value=3), st.booleans()),
        "tenants": st.lists(
            st.builds(
                tenant_doc,
                st.sampled_from(["a", "b", "a", "", "\x00"]),
                ledger_amounts,
                ledger_amounts,
                ledger_amounts,
                ledger_amounts,
            ),
            max_size=4,
        ),
    }
)


@FUZZ
@given(doc=adversarial_snapshots, extra=st.sampled_from([None, "junk", "drop-key"]))
def test_restore_fuzz(
    book: ledger.Ledger, raw: psycopg.Connection, doc: dict[str, Any], extra: Any
) -> None:
    if book.tenant("seed") is None:
        book.ensure_tenant("seed", 10**6)
    if extra == "junk":
        doc = {**doc, "junk": 1}
    elif extra == "drop-key":
        doc = {k: v for k, v in doc.items() if k != "version"}
    before = state(raw)
    COUNT["restore"] += 1
    text = json.dumps(doc, default=str)
    try:
        snap = ledger.BudgetSnapshot.from_json(text)
        book.restore_from_snapshot(snap)
    except errors.LedgerError:
        assert state(raw) == before
        return
    # it was valid: it must have been applied exactly
    assert [t.to_dict() for t in book.snapshot().tenants] == sorted(
        doc["tenants"], key=lambda t: t["tenant_id"].encode()
    )
    book.restore_from_snapshot(
        ledger.BudgetSnapshot(0, (ledger.TenantLedger("seed", 10**6, 10**6, 0, 0),), 0)
    )


def test_fuzz_figures() -> None:
    FIGURES.append(
        (
            "hostile input (hypothesis)",
            "API, CLI and restore files",
            f"{COUNT['api']} API calls, {COUNT['cli']} CLI runs, {COUNT['restore']} restores",
            "driver tracebacks 0, changes on refusal 0",
        )
    )
    assert sum(COUNT.values()) > 0
