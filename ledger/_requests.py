"""The requests that operations yield, and the operation type: no driver here.

Operations (:mod:`ledger._operations`, :mod:`ledger._batch`,
:mod:`ledger._verify`, ...) are written once, as generators that *yield
requests* and receive the rows back; they never see a connection. This module
holds only those request types, so that an operation module imports the
vocabulary of the interface without importing a driver: the executors that
carry the requests out live in :mod:`ledger._executor` (psycopg, SQLAlchemy,
DB-API cursors) and :mod:`ledger._async_executor` (asyncio).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
Params = Mapping[str, Any]
Isolation = Literal["AUTOCOMMIT", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Run one statement; the reply is its rows (an empty list if it returns none)."""

    sql: str
    params: Params


@dataclass(frozen=True, slots=True)
class FetchEach:
    """Run one statement per parameter set, pipelined where the back-end can.

    The reply is one list of rows per parameter set, in order.
    """

    sql: str
    params: Sequence[Params]


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Start a scan that is read in slices (a server-side cursor); the reply is a handle."""

    sql: str
    params: Params


@dataclass(frozen=True, slots=True)
class ReadStream:
    """The next ``size`` rows of an open stream; an empty list at the end."""

    stream: int
    size: int


@dataclass(frozen=True, slots=True)
class Nested:
    """Run ``steps`` inside a savepoint: if they raise, only their own writes are undone.

    With ``when_owned=False`` the savepoint is skipped when the ledger owns
    the transaction (an exception then rolls the whole transaction back
    anyway, so the savepoint would be a wasted round trip).
    """

    steps: Callable[[], Steps[Any]]
    when_owned: bool = True


Request = Fetch | FetchEach | OpenStream | ReadStream | Nested
Steps = Generator[Request, Any, T]


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    """One ledger operation: its steps, and the transaction they need.

    ``AUTOCOMMIT`` means every statement stands alone (on the ledger's own
    connection each is its own transaction, and a transient conflict retries
    just that statement); any other isolation runs all steps in one
    transaction, retried as a whole when the ledger owns it. ``then``, if
    set, turns the result into a follow-up operation run in a transaction of
    its own (certify: a REPEATABLE READ snapshot, then a short write), or
    into None when the result is final (a keyed call on Citus that answered
    in one command, ledger/citus/keyed.py).
    """

    steps: Callable[[], Steps[Any]]
    isolation: Isolation = "AUTOCOMMIT"
    then: Callable[[Any], Op[T] | None] | None = None
