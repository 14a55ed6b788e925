"""Idempotent single-tenant calls in one command on Citus (docs/scale-out.md, "Keyed calls").

With an idempotency key an operation claims the key, applies itself and
records its outcome in one transaction (:func:`ledger._operations.idempotent`):
three statements between BEGIN and COMMIT. On a distributed schema that is
five remote commands to the tenant's worker. ``ledger distribute`` also makes,
per keyed operation listed in :data:`KEYED`, one routed function that does
claim -> operation -> record on the worker in a single call
(``routed_keyed_<operation>_<hash>``, built in :mod:`ledger.citus.functions`), and
the call of it is the operation's first step here.

One meaning of a recorded outcome: the stored JSON is always
``outcome.to_dict()``, whoever wrote it (this function, the three-statement
path on Citus, or plain PostgreSQL), so a key replays the same everywhere.
The function builds that JSON in SQL, but the SQL is not written by hand: it
is derived from the outcome mappers themselves (:func:`outcome_sql` runs each
mapper on a symbolic row, one per final status, and renders what
``to_dict()`` returns), and Python maps the row the function returns with the
same mapper, checking that it equals what was recorded.

An answer the Python steps decide with more statements (a CAS ``retry``, a
period ``renew``, a lapsed hold to expire, a hold that is gone) is not final:
the function takes its claim back (``idempotency_unclaim``, the only write it
made) and answers ``fallback``; the call then runs the three-statement path
in a transaction of its own. Correct, slower, and rare.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import errors
from .._requests import Fetch, Op, Steps
from ..outcomes import (
    Outcome,
    adjust_outcome,
    commit_outcome,
    release_outcome,
    reserve_outcome,
    top_up_outcome,
)

OutcomeT = TypeVar("OutcomeT", bound=Outcome)

#: The answer column the keyed functions add in front of the operation's own columns.
ANSWER = "ledger_answer"
#: The stored request hash (a replay), or NULL.
REQUEST_HASH = "ledger_request_hash"
#: The outcome JSON the call recorded (applied) or found (replay), or NULL (fallback).
OUTCOME = "ledger_outcome"


@dataclass(frozen=True)
class KeyedOperation:
    """How one keyed operation runs in one function call.

    ``outcome`` is the operation's own row -> outcome mapping, given the row
    (None when the statement returned none) and the call's parameters;
    ``final`` the statuses it maps (any other answer falls back);
    ``missing_is_final`` whether "no row" is an outcome (a missing tenant) or
    needs the Python steps (a hold that is gone: expired or never made?);
    ``not_final_if`` a boolean column that makes any row non-final (lapsed
    holds a reserve must expire first).
    """

    statement: str
    outcome: Callable[[Any, Mapping[str, Any]], Outcome]
    final: tuple[str, ...]
    missing_is_final: bool
    not_final_if: str | None = None


#: Operation name (the ``routed=`` of :func:`ledger._operations.idempotent`) -> how.
KEYED: dict[str, KeyedOperation] = {
    "top_up": KeyedOperation(
        "top_up",
        lambda row, p: top_up_outcome(row, p["amount"]),
        ("topped_up", "overflow"),
        missing_is_final=True,
    ),
    "try_reserve": KeyedOperation(
        "try_reserve",
        lambda row, p: reserve_outcome(row, p["amount"]),
        ("reserved", "insufficient", "overflow", "exposure_limit_exceeded"),
        missing_is_final=True,
        not_final_if="lapsed_holds",
    ),
    "commit": KeyedOperation(
        "commit_for_tenant",
        lambda row, p: commit_outcome(row, p["actual"]),
        ("committed", "overflow", "overrun"),
        missing_is_final=False,
    ),
    "release": KeyedOperation(
        "release_for_tenant",
        lambda row, p: release_outcome(row),
        ("released",),
        missing_is_final=False,
    ),
    "adjust": KeyedOperation(
        "adjust",
        lambda row, p: adjust_outcome(row, p["amount"]),
        ("adjusted", "insufficient", "overflow"),
        missing_is_final=True,
    ),
}


# ------------------------------------------------- the outcome JSON, derived in SQL


class _Symbol:
    """A value known only in SQL (a column of the operation's row, an argument)."""

    __slots__ = ("sql",)

    def __init__(self, sql: str) -> None:
        self.sql = sql

    def __neg__(self) -> _Symbol:
        return _Symbol(f"(-{self.sql})")

    def __bool__(self) -> bool:
        raise TypeError(
            "an outcome mapper branched on a value other than the row's status; "
            "keyed calls on Citus cannot derive its outcome in SQL (ledger/citus/keyed.py)"
        )

    def __eq__(self, other: object) -> bool:
        return self.__bool__()

    __hash__ = None  # type: ignore[assignment]


class _SymbolicRow:
    """The operation's row with a known status; every other column is its SQL reference."""

    def __init__(self, status: str, row: str) -> None:
        self.status = status
        self._row = row

    def __getattr__(self, name: str) -> _Symbol:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Symbol(f'{self._row}."{name}"')


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"cannot render {value!r} as a JSON constant in SQL")


def _object_sql(outcome: Outcome) -> str:
    """SQL that builds exactly ``outcome.to_dict()`` (symbols become SQL values).

    ``to_dict()`` leaves out fields that are None; a symbol is only known in
    SQL, so symbolic fields go through ``jsonb_strip_nulls``, and constants
    (the status, a field ``to_dict`` keeps as null) are added as they are.
    """
    symbolic: list[str] = []
    constant: list[str] = []
    for key, value in outcome.to_dict().items():
        pair = f"{_literal(key)}, "
        if isinstance(value, _Symbol):
            symbolic.append(pair + value.sql)
        else:
            constant.append(pair + _literal(value))
    built = f"jsonb_build_object({', '.join(constant)})"
    if symbolic:
        built = f"jsonb_strip_nulls(jsonb_build_object({', '.join(symbolic)})) || {built}"
    return built


def outcome_sql(operation: KeyedOperation, row: str, arguments: Mapping[str, str]) -> str:
    """A SQL expression: the outcome JSON of the operation's row, NULL if not final.

    ``row`` names the record holding the statement's row, ``arguments`` maps
    each parameter to its SQL name.
    """
    symbols = {name: _Symbol(sql) for name, sql in arguments.items()}
    branches = []
    if operation.not_final_if is not None:
        branches.append(f'WHEN {row}."{operation.not_final_if}" THEN NULL')
    for status in operation.final:
        mapped = operation.outcome(_SymbolicRow(status, row), symbols)
        branches.append(f"WHEN {row}.status = {_literal(status)} THEN {_object_sql(mapped)}")
    cases = "\n            ".join(branches)
    return f"CASE\n            {cases}\n            ELSE NULL END"


def missing_sql(operation: KeyedOperation, arguments: Mapping[str, str]) -> str:
    """A SQL expression: the outcome JSON when the statement returned no row, or NULL."""
    if not operation.missing_is_final:
        return "NULL"
    symbols = {name: _Symbol(sql) for name, sql in arguments.items()}
    return _object_sql(operation.outcome(None, symbols))


# ------------------------------------------------------------ the call, in Python


#: The first step's answer when the function fell back (its claim taken back).
_FALLBACK = object()


def one_command(
    call: str,
    operation: KeyedOperation,
    params: Mapping[str, Any],
    request_hash: bytes,
    replayed: Callable[[Any, Any], OutcomeT],
    fallback: Op[OutcomeT],
) -> Op[OutcomeT]:
    """The keyed operation as one routed call; ``fallback`` (the three statements) if it must.

    ``replayed`` turns the stored request hash and outcome of a key claimed
    before into the replayed outcome, or raises
    :class:`~ledger.errors.IdempotencyConflict`
    (:func:`ledger._operations.replay`, as the three-statement path does).
    """

    def first() -> Steps[Any]:
        rows = yield Fetch(call, {**params, "request_hash": request_hash})
        row = rows[0]
        answer = getattr(row, ANSWER)
        if answer == "replay":
            return replayed(getattr(row, REQUEST_HASH), getattr(row, OUTCOME))
        if answer == "fallback":
            return _FALLBACK
        outcome = operation.outcome(None if row.status is None else row, params)
        recorded = getattr(row, OUTCOME)
        if isinstance(recorded, str):  # a driver that does not decode jsonb
            recorded = json.loads(recorded)
        if outcome.to_dict() != recorded:
            raise errors.DatabaseError(
                f"the keyed call recorded {recorded!r} but its row maps to "
                f"{outcome.to_dict()!r}; run `ledger distribute` again with this release. "
                "This is a bug: please report it",
                sqlstate="LG001",
            )
        return outcome

    def then(result: Any) -> Op[OutcomeT] | None:
        return fallback if result is _FALLBACK else None  # None: the answer is final

    return Op(first, "AUTOCOMMIT", then=then)
