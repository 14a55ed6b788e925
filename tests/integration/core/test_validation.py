"""Bad input raises a typed error before any SQL runs, and nothing changes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledger
from ledger import BudgetSnapshot, errors
from tests.helpers import I64_MAX, I64_MIN, state

NOT_PLAIN_INTS = [True, False, 1.0, 1.5, float("nan"), Decimal("1"), "1", b"1", None, [1], 1j]
OUT_OF_RANGE = [I64_MAX + 1, I64_MIN - 1, 2**200, -(2**200)]
BAD_TENANTS = ["", "a\x00b", "x" * 256, "é" * 128, "\udcff", None, 7, b"bytes", ["t"]]


@pytest.fixture
def seeded(book: ledger.Ledger, raw: psycopg.Connection) -> tuple[ledger.Ledger, int]:
    book.ensure_tenant("t", 1_000_000)
    book.set_max_reserved_microcents("t", 900_000)
    rid = book.try_reserve("t", 10_000).reservation_id
    assert rid is not None
    return book, rid


AMOUNT_CALLS: dict[str, Callable[[ledger.Ledger, int, Any], object]] = {
    "ensure_tenant": lambda b, rid, v: b.ensure_tenant("new", v),
    "top_up_tenant": lambda b, rid, v: b.top_up_tenant("t", v),
    "set_max_reserved_microcents": lambda b, rid, v: b.set_max_reserved_microcents("t", v),
    "try_reserve": lambda b, rid, v: b.try_reserve("t", v),
    "commit": lambda b, rid, v: b.commit(rid, v),
}

TENANT_CALLS: dict[str, Callable[[ledger.Ledger, int, Any], object]] = {
    "ensure_tenant": lambda b, rid, v: b.ensure_tenant(v, 1),
    "top_up_tenant": lambda b, rid, v: b.top_up_tenant(v, 1),
    "set_max_reserved_microcents": lambda b, rid, v: b.set_max_reserved_microcents(v, 1),
    "try_reserve": lambda b, rid, v: b.try_reserve(v, 1),
    "commit(tenant_id=)": lambda b, rid, v: b.commit(rid, 1, tenant_id=v),
    "release(tenant_id=)": lambda b, rid, v: b.release(rid, tenant_id=v),
    "remaining_microcents": lambda b, rid, v: b.remaining_microcents(v),
    "tenant": lambda b, rid, v: b.tenant(v),
}

ID_CALLS: dict[str, Callable[[ledger.Ledger, Any], object]] = {
    "commit": lambda b, v: b.commit(v, 1),
    "release": lambda b, v: b.release(v),
}


@pytest.mark.parametrize("call", AMOUNT_CALLS)
@pytest.mark.parametrize("value", NOT_PLAIN_INTS, ids=repr)
def test_amount_type_errors(seeded: tuple, raw: psycopg.Connection, call: str, value: Any) -> None:  # type: ignore[type-arg]
    book, rid = seeded
    before = state(raw)
    with pytest.raises(TypeError) as info:
        AMOUNT_CALLS[call](book, rid, value)
    assert isinstance(info.value, errors.LedgerError)
    assert state(raw) == before


@pytest.mark.parametrize("call", AMOUNT_CALLS)
@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_amount_range_errors(seeded: tuple, raw: psycopg.Connection, call: str, value: int) -> None:  # type: ignore[type-arg]
    book, rid = seeded
    before = state(raw)
    with pytest.raises(ValueError, match="signed 64-bit") as info:
        AMOUNT_CALLS[call](book, rid, value)
    assert isinstance(info.value, errors.AmountValueError)
    assert state(raw) == before


@pytest.mark.parametrize("call", TENANT_CALLS)
@pytest.mark.parametrize("value", BAD_TENANTS, ids=lambda v: repr(v)[:20])
def test_tenant_id_errors(seeded: tuple, raw: psycopg.Connection, call: str, value: Any) -> None:  # type: ignore[type-arg]
    book, rid = seeded
    before = state(raw)
    if value is None and "tenant_id=" in call:
        # None is the default ("no hint") for the optional tenant_id= keyword.
        assert TENANT_CALLS[call](book, rid, value) is not None
        return
    with pytest.raises(errors.InvalidTenantId) as info:
        TENANT_CALLS[call](book, rid, value)
    assert isinstance(info.value, ValueError)
    assert state(raw) == before


@pytest.mark.parametrize("call", ID_CALLS)
@pytest.mark.parametrize("value", [*NOT_PLAIN_INTS, -1, 2**64])
def test_reservation_id_errors(
    seeded: tuple, raw: psycopg.Connection, call: str, value: Any
) -> None:  # type: ignore[type-arg]
    book, _ = seeded
    before = state(raw)
    with pytest.raises((TypeError, ValueError)) as info:
        ID_CALLS[call](book, value)
    assert isinstance(info.value, errors.LedgerError)
    assert state(raw) == before


@pytest.mark.parametrize("rid", [0, I64_MAX, I64_MAX + 1, 2**64 - 1])
def test_unknown_but_valid_ids_are_missing_reservation(seeded: tuple, rid: int) -> None:  # type: ignore[type-arg]
    book, _ = seeded
    assert book.commit(rid, 1).status == "missing_reservation"
    assert book.release(rid).status == "missing_reservation"


def test_max_length_and_unicode_tenant_ids_work(book: ledger.Ledger) -> None:
    for tid in ["x" * 255, "é" * 127, "租户-🙂", "'; DROP TABLE ledger.tenants; --", " spaced "]:
        assert book.ensure_tenant(tid, 5)
        assert book.remaining_microcents(tid) == 5
    assert book.tenant_count() == 5


def test_set_cap_on_unknown_tenant_raises(book: ledger.Ledger, raw: psycopg.Connection) -> None:
    # Documented deviation: the seed stores a cap for a tenant that does not exist.
    before = state(raw)
    with pytest.raises(errors.TenantNotFound) as info:
        book.set_max_reserved_microcents("ghost", 5)
    assert info.value.tenant_id == "ghost"
    assert state(raw) == before


@pytest.mark.parametrize("value", [None, {}, "{}", GOOD := {"version": 1}])
def test_restore_refuses_non_snapshots(
    book: ledger.Ledger, raw: psycopg.Connection, value: Any
) -> None:
    before = state(raw)
    with pytest.raises(errors.MalformedSnapshot):
        book.restore_from_snapshot(value)
    assert state(raw) == before


def test_restore_refuses_hand_built_snapshot_with_bad_fields(
    book: ledger.Ledger, raw: psycopg.Connection
) -> None:
    book.ensure_tenant("t", 5)
    before = state(raw)
    bad = BudgetSnapshot(1, (ledger.TenantLedger("t", 1.5, 1.5, 0, 0),), 0)  # type: ignore[arg-type]
    with pytest.raises(errors.MalformedSnapshot):
        book.restore_from_snapshot(bad)
    huge_version = BudgetSnapshot(2**63, (), 0)
    with pytest.raises(ValueError, match="bigint sequence"):
        book.restore_from_snapshot(huge_version)
    assert state(raw) == before


@pytest.mark.parametrize(
    "bad",
    [
        "sqlite:///x.db",
        "mysql://u@h/db",
        12,
    ],
)
def test_non_postgres_targets_are_refused(bad: Any) -> None:
    with pytest.raises(errors.InputError):
        ledger.Ledger(bad)


@pytest.mark.parametrize("schema", ["", "Ledger", "a-b", "x;drop", "1abc", "a" * 64, None])
def test_bad_schema_names_are_refused(db_url: str, schema: Any) -> None:
    with pytest.raises(errors.InvalidSchemaName):
        ledger.Ledger(db_url, schema=schema)


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.decimals(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.lists(st.integers(), max_size=2),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    op=st.sampled_from(sorted(AMOUNT_CALLS)),
    value=anything,
    tenant=st.one_of(st.text(max_size=300), anything),
)
def test_fuzzed_inputs_never_leak_driver_errors(
    seeded: tuple,
    raw: psycopg.Connection,
    op: str,
    value: Any,
    tenant: Any,  # type: ignore[type-arg]
) -> None:
    """Any argument either works or raises a LedgerError; never a driver traceback."""
    book, rid = seeded
    for call in (
        lambda: AMOUNT_CALLS[op](book, rid, value),
        lambda: book.try_reserve(tenant, 1),
        lambda: book.remaining_microcents(tenant),
    ):
        with contextlib.suppress(errors.LedgerError):
            call()
    snap = book.snapshot()
    assert ledger.conservation_status_for_snapshot(snap).is_balanced


@pytest.mark.parametrize(
    "schema", ["pg_catalog", "pg_toast", "pg_temp", "pg_anything", "information_schema"]
)
def test_system_schema_names_are_refused(db_url: str, schema: str) -> None:
    """Issue 22 finding 9: these raised a raw ReservedName, or were accepted."""
    with pytest.raises(errors.InvalidSchemaName, match="reserved"):
        ledger.Ledger(db_url, schema=schema)
    with pytest.raises(errors.InvalidSchemaName):
        ledger.migrate(db_url, schema=schema)


def test_migrating_into_a_schema_with_someone_elses_tables_is_refused(
    db_url: str, raw: psycopg.Connection
) -> None:
    """``migrate(schema="public")`` over an application's own public.tenants (finding 9)."""
    with raw.transaction():
        raw.execute("CREATE TABLE public.tenants (id int PRIMARY KEY, name text)")
        raw.execute("INSERT INTO public.tenants VALUES (1, 'theirs')")
    with pytest.raises(errors.SchemaOccupied, match="tenants"):
        ledger.migrate(db_url, schema="public")
    assert raw.execute("SELECT * FROM public.tenants").fetchall() == [(1, "theirs")]
    assert raw.execute("SELECT to_regclass('public.alembic_version')").fetchone() == (None,)
    assert raw.execute("SELECT to_regclass('public.journal')").fetchone() == (None,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": timedelta(microseconds=2**63 - 1)},
        {"ttl": timedelta(days=36_601)},
        {"ttl": 10**12},
        {"expires_at": datetime.now(UTC) - timedelta(seconds=1)},
        {"expires_at": datetime(2000, 1, 1, tzinfo=UTC)},
        {"expires_at": datetime(9999, 1, 1, tzinfo=UTC)},
    ],
    ids=["ttl-max", "ttl-century", "ttl-seconds", "expires-past", "expires-2000", "expires-9999"],
)
def test_deadlines_out_of_range_are_typed_errors_and_change_nothing(
    book: ledger.Ledger, raw: psycopg.Connection, kwargs: dict[str, Any]
) -> None:
    """Finding 9: a huge ttl raised DatabaseError 22008; a past expires_at made a lapsed hold."""
    book.ensure_tenant("t", 100)
    before = state(raw)
    with pytest.raises(errors.InputError):
        book.try_reserve("t", 1, **kwargs)
    with pytest.raises(errors.InputError):
        book.try_reserve_many([ledger.ReserveItem("t", 1, **kwargs)])
    assert state(raw) == before
    assert book.try_reserve("t", 1, ttl=timedelta(days=36_600)).ok  # the longest allowed


def test_period_spend_outside_the_calendar_is_a_typed_error(book: ledger.Ledger) -> None:
    """Finding 9: period -1 of a schedule anchored near year 1 raised DatabaseError."""
    book.ensure_tenant("t", 100)
    book.set_allowance("t", 10, anchor=datetime(1, 1, 2, tzinfo=UTC), days=1)
    for index in (-1, -(2**62), 2**62):
        with pytest.raises(errors.InputError):
            book.period_spend("t", index)
    with pytest.raises(errors.InputError, match="years 1 to 9999"):
        book.period_spend("t", -1)
    assert book.period_spend("t", 0).starts_at == datetime(1, 1, 2, tzinfo=UTC)
