"""Thresholds and the alerts outbox: the operations and their values (docs/alerts.md).

The crossing is not detected here: the trigger ``check_thresholds()`` of
revision 0011 records it in the transaction of the write that crosses, on
every write path, so this module only manages thresholds and hands the
outbox's rows to consumers. Each function builds an :class:`Op` after
checking its arguments, so bad input raises before anything is sent.

Consumers claim alerts with a lease (``FOR UPDATE SKIP LOCKED``), run their
handler and acknowledge; an alert whose lease ends unacknowledged (the
consumer died) is claimed again. So a handler runs at least once per alert
and ``delivered_at`` is set exactly once; ``alert_id`` is the idempotency key
a receiver deduplicates on.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from . import _validate, errors
from ._operations import first_row
from ._queries import Queries
from ._requests import Fetch, Op, Steps
from .outcomes import Outcome, Status

ThresholdKind = Literal["spent", "spent_percent", "remaining_below"]

#: The longest lease a claim may take, and the most alerts one claim returns.
MAX_LEASE = timedelta(days=1)
MAX_CLAIM = 10_000
#: Percent thresholds are shares of the allowance (or of ``initial``): up to 100x.
MAX_PERCENT = Decimal(10_000)


def channel(schema: str) -> str:
    """The ``NOTIFY`` channel of a schema's alerts (revision 0011's trigger sends on it)."""
    return f"{schema}.alerts"


def default_consumer() -> str:
    """A consumer name that tells replicas apart in ``alerts.claimed_by``: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Threshold:
    """One threshold of a tenant: ``kind`` says which of the three levels is set.

    ``spent_microcents``: fires when the current period's spend reaches it.
    ``spent_percent``: the same, as a share of the period's allowance (of
    ``initial`` for a tenant without one). ``remaining_below_microcents``:
    fires when ``remaining`` falls below it.
    """

    tenant_id: str
    name: str
    kind: ThresholdKind
    spent_microcents: int | None
    spent_percent: Decimal | None
    remaining_below_microcents: int | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "name": self.name,
            "kind": self.kind,
            "spent_microcents": self.spent_microcents,
            "spent_percent": None if self.spent_percent is None else str(self.spent_percent),
            "remaining_below_microcents": self.remaining_below_microcents,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """A threshold's crossing, as the crossing write recorded it.

    ``threshold`` is the threshold's name, ``period_index`` the tenant's
    period (None for a tenant without an allowance), ``level_microcents`` the
    level that was crossed (a percent threshold's share, in microcents), and
    the balances are the tenant's right after the crossing write
    (``journal_seq`` names its journal entry). ``attempts`` counts claims,
    this one included. ``alert_id`` is unique: deduplicate on it.
    """

    alert_id: int
    tenant_id: str
    threshold: str
    period_index: int | None
    kind: ThresholdKind
    level_microcents: int
    spent_microcents: int
    initial_microcents: int
    remaining_microcents: int
    reserved_microcents: int
    committed_microcents: int
    journal_seq: int
    created_at: datetime
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready values (the webhook deliverer posts this)."""
        return {
            "alert_id": self.alert_id,
            "tenant_id": self.tenant_id,
            "threshold": self.threshold,
            "period_index": self.period_index,
            "kind": self.kind,
            "level_microcents": self.level_microcents,
            "spent_microcents": self.spent_microcents,
            "initial_microcents": self.initial_microcents,
            "remaining_microcents": self.remaining_microcents,
            "reserved_microcents": self.reserved_microcents,
            "committed_microcents": self.committed_microcents,
            "journal_seq": self.journal_seq,
            "created_at": self.created_at.isoformat(),
            "attempts": self.attempts,
        }


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An outbox row with its delivery state (``Ledger.list_alerts``, ``ledger alerts``)."""

    alert: Alert
    claimed_until: datetime | None
    claimed_by: str | None
    last_error: str | None
    delivered_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.alert.to_dict(),
            "claimed_until": None if self.claimed_until is None else self.claimed_until.isoformat(),
            "claimed_by": self.claimed_by,
            "last_error": self.last_error,
            "delivered_at": None if self.delivered_at is None else self.delivered_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class AlertBacklog:
    """Undelivered alerts and the age of the oldest, in seconds (0.0 when there are none)."""

    undelivered: int
    oldest_age_seconds: float


# ------------------------------------------------------------------- validation


def threshold_name(value: object) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise errors.InputError(f"threshold name must be a non-empty str, got {value!r}")
    if len(value.encode()) > 200:
        raise errors.InputError("threshold name must be at most 200 UTF-8 bytes")
    return value


def _percent(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise errors.AmountTypeError(
            f"spent_percent must be an int, float or Decimal, got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise errors.AmountValueError(f"spent_percent must be finite, got {value!r}")
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite() or not Decimal(0) < number <= MAX_PERCENT:
        raise errors.AmountValueError(
            f"spent_percent must be above 0 and at most {MAX_PERCENT}, got {value!r}"
        )
    return number


def _positive_amount(name: str, value: object) -> int:
    amount = _validate.amount(name, value)
    if amount <= 0:
        raise errors.AmountValueError(f"{name} must be > 0, got {amount}")
    return amount


def _levels(
    spent_microcents: object, spent_percent: object, remaining_below_microcents: object
) -> dict[str, Any]:
    given = [
        n
        for n, v in (
            ("spent_microcents", spent_microcents),
            ("spent_percent", spent_percent),
            ("remaining_below_microcents", remaining_below_microcents),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise errors.InputError(
            "give exactly one of spent_microcents, spent_percent and "
            f"remaining_below_microcents (got {', '.join(given) or 'none'})"
        )
    return {
        "spent": None
        if spent_microcents is None
        else _positive_amount("spent_microcents", spent_microcents),
        "percent": None if spent_percent is None else str(_percent(spent_percent)),
        "remaining_below": None
        if remaining_below_microcents is None
        else _positive_amount("remaining_below_microcents", remaining_below_microcents),
    }


def _lease_seconds(lease: object) -> float:
    if isinstance(lease, timedelta):
        seconds = lease.total_seconds()
    elif isinstance(lease, (int, float)) and not isinstance(lease, bool):
        seconds = float(lease)
    else:
        raise errors.InputError(f"lease must be a timedelta or seconds, got {lease!r}")
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_LEASE.total_seconds():
        raise errors.InputError(f"lease must be above 0 and at most {MAX_LEASE}, got {lease!r}")
    return seconds


def _ids(ids: Iterable[object]) -> list[int]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise errors.InputError("ids must be an iterable of alert ids (ints)")
    out = []
    for value in ids:
        if isinstance(value, Alert):
            value = value.alert_id
        if type(value) is not int or not 0 < value <= _validate.I64_MAX:
            raise errors.InputError(f"alert ids are positive ints, got {value!r}")
        out.append(value)
    return out


# ------------------------------------------------------------------- operations


def _threshold(row: Any) -> Threshold:
    kind: ThresholdKind = (
        "spent"
        if row.spent_microcents is not None
        else "spent_percent"
        if row.spent_percent is not None
        else "remaining_below"
    )
    return Threshold(
        tenant_id=row.tenant_id,
        name=row.name,
        kind=kind,
        spent_microcents=row.spent_microcents,
        spent_percent=None if row.spent_percent is None else Decimal(row.spent_percent),
        remaining_below_microcents=row.remaining_below_microcents,
        created_at=row.created_at,
    )


def alert_from_row(row: Any) -> Alert:
    return Alert(
        alert_id=int(row.alert_id),
        tenant_id=row.tenant_id,
        threshold=row.threshold,
        period_index=None if row.period_index is None else int(row.period_index),
        kind=row.kind,
        level_microcents=int(row.level_microcents),
        spent_microcents=int(row.spent_microcents),
        initial_microcents=int(row.initial_microcents),
        remaining_microcents=int(row.remaining_microcents),
        reserved_microcents=int(row.reserved_microcents),
        committed_microcents=int(row.committed_microcents),
        journal_seq=int(row.journal_seq),
        created_at=row.created_at,
        attempts=int(row.attempts),
    )


def _missing(tenant_id: str) -> errors.TenantNotFound:
    return errors.TenantNotFound(Outcome(Status.MISSING_TENANT), tenant_id=tenant_id)


def set_threshold(
    q: Queries,
    tenant_id: str,
    name: str,
    spent_microcents: object,
    spent_percent: object,
    remaining_below_microcents: object,
) -> Op[bool]:
    """Insert or replace a threshold; True if it is new. Fires at once if already crossed."""
    tenant_id = _validate.tenant_id(tenant_id)
    params = {
        "tenant_id": tenant_id,
        "name": threshold_name(name),
        **_levels(spent_microcents, spent_percent, remaining_below_microcents),
    }

    def steps() -> Steps[bool]:
        if (yield from first_row(q.lock_tenant_for_thresholds, params)) is None:
            raise _missing(tenant_id)
        row = yield from first_row(q.set_threshold, params)
        return bool(row.created)

    return Op(steps, "READ COMMITTED")


def clear_threshold(q: Queries, tenant_id: str, name: str) -> Op[bool]:
    """Delete a threshold; True if it existed. Its past alerts stay in the outbox."""
    tenant_id = _validate.tenant_id(tenant_id)
    params = {"tenant_id": tenant_id, "name": threshold_name(name)}

    def steps() -> Steps[bool]:
        if (yield from first_row(q.lock_tenant_for_thresholds, params)) is None:
            raise _missing(tenant_id)
        row = yield from first_row(q.clear_threshold, params)
        return bool(row.cleared)

    return Op(steps, "READ COMMITTED")


def thresholds(q: Queries, tenant_id: str) -> Op[list[Threshold]]:
    tenant_id = _validate.tenant_id(tenant_id)

    def steps() -> Steps[list[Threshold]]:
        rows = yield Fetch(q.thresholds, {"tenant_id": tenant_id})
        return [_threshold(r) for r in rows]

    return Op(steps)


def claim_alerts(q: Queries, limit: int, lease: object, consumer: str | None) -> Op[list[Alert]]:
    count = _validate.positive_count("limit", limit)
    if count > MAX_CLAIM:
        raise errors.InputError(f"limit must be at most {MAX_CLAIM}, got {count}")
    if consumer is not None and (not isinstance(consumer, str) or len(consumer) > 200):
        raise errors.InputError(f"consumer must be a str of at most 200 chars, got {consumer!r}")
    params = {
        "limit": count,
        "lease": timedelta(seconds=_lease_seconds(lease)),
        "consumer": consumer or default_consumer(),
    }

    def steps() -> Steps[list[Alert]]:
        rows = yield Fetch(q.claim_alerts, params)
        return sorted((alert_from_row(r) for r in rows), key=lambda a: a.alert_id)

    return Op(steps)


def ack_alerts(q: Queries, ids: Iterable[object]) -> Op[int]:
    """Mark alerts delivered; returns how many were not delivered before."""
    params = {"ids": _ids(ids)}

    def steps() -> Steps[int]:
        if not params["ids"]:
            return 0
        rows = yield Fetch(q.ack_alerts, params)
        return len(rows)

    return Op(steps)


def release_alerts(
    q: Queries, ids: Iterable[object], error: str | None, retry_after: object
) -> Op[int]:
    """End the lease of claimed alerts (recording ``error``): claimable again now, or
    after ``retry_after``."""
    if error is not None and not isinstance(error, str):
        raise errors.InputError(f"error must be a str or None, got {error!r}")
    delay = timedelta(0) if retry_after is None else timedelta(seconds=_lease_seconds(retry_after))
    params = {
        "ids": _ids(ids),
        "error": None if error is None else error[:2000],
        "retry_after": delay,
    }

    def steps() -> Steps[int]:
        if not params["ids"]:
            return 0
        rows = yield Fetch(q.release_alerts, params)
        return len(rows)

    return Op(steps)


def list_alerts(
    q: Queries, tenant_id: str | None, undelivered: bool, limit: int
) -> Op[list[AlertRecord]]:
    params = {
        "tenant_id": None if tenant_id is None else _validate.tenant_id(tenant_id),
        "undelivered": bool(undelivered),
        "limit": _validate.positive_count("limit", limit),
    }

    def steps() -> Steps[list[AlertRecord]]:
        rows = yield Fetch(q.alerts_list, params)
        return [
            AlertRecord(
                alert_from_row(r), r.claimed_until, r.claimed_by, r.last_error, r.delivered_at
            )
            for r in rows
        ]

    return Op(steps)


def alert_backlog(q: Queries) -> Op[AlertBacklog]:
    def steps() -> Steps[AlertBacklog]:
        row = yield from first_row(q.alert_backlog, {})
        return AlertBacklog(int(row.backlog), float(row.oldest_age_seconds))

    return Op(steps)


# -------------------------------------------------------------------- listening


class Listener:
    """Waits between claims: on ``LISTEN`` in a session of its own, else by sleeping.

    ``wait(timeout)`` returns when a notification came or ``timeout`` passed.
    A session that cannot be opened, or fails later, is dropped and the
    consumer polls from then on: a notification only shortens the wait, the
    claim is what delivers, so no alert depends on one.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @property
    def listening(self) -> bool:
        return self._conn is not None

    @classmethod
    def open(cls, conninfo: str | None, channel_name: str) -> Listener:
        if conninfo is None:
            return cls(None)
        import psycopg
        from psycopg import sql

        try:
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error:
            return cls(None)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name)))
        except psycopg.Error:
            conn.close()
            return cls(None)
        return cls(conn)

    def wait(self, timeout: float) -> None:
        if self._conn is not None:
            import psycopg

            try:
                for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                    pass
                return
            except psycopg.Error:
                self.close()
        time.sleep(timeout)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


class AsyncListener:
    """:class:`Listener` for asyncio."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @property
    def listening(self) -> bool:
        return self._conn is not None

    @classmethod
    async def open(cls, conninfo: str | None, channel_name: str) -> AsyncListener:
        if conninfo is None:
            return cls(None)
        import psycopg
        from psycopg import sql

        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        except psycopg.Error:
            return cls(None)
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name)))
        except psycopg.Error:
            await conn.close()
            return cls(None)
        return cls(conn)

    async def wait(self, timeout: float) -> None:
        if self._conn is not None:
            import psycopg

            try:
                async for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                    pass
                return
            except psycopg.Error:
                await self.close()
        await asyncio.sleep(timeout)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """A consumer's checked arguments (``Ledger.alerts``)."""

    limit: int
    lease: timedelta
    consumer: str
    conninfo: str | None
    interval: float
    idle_timeout: float | None
    max_alerts: int | None


def consumer_settings(
    q: Queries,
    url: Any,
    limit: int,
    lease: object,
    consumer: str | None,
    listen: object,
    poll_interval: object,
    idle_timeout: object,
    max_alerts: object,
) -> ConsumerSettings:
    """Check every argument of a consumer before it opens anything."""
    claim_alerts(q, limit, lease, consumer)  # checks limit, lease and consumer; sends nothing
    return ConsumerSettings(
        limit=limit,
        lease=timedelta(seconds=_lease_seconds(lease)),
        consumer=consumer or default_consumer(),
        conninfo=listen_conninfo(listen, url),
        interval=seconds("poll_interval", poll_interval),
        idle_timeout=None if idle_timeout is None else seconds("idle_timeout", idle_timeout),
        max_alerts=None
        if max_alerts is None
        else _validate.positive_count("max_alerts", max_alerts),
    )


def listen_conninfo(listen: object, url: Any) -> str | None:
    """Where the consumer LISTENs: the ledger's own database (True), another URL (a str,
    such as a direct connection past a transaction pooler) or nowhere (False: poll)."""
    if listen is False:
        return None
    if listen is True:
        rendered: str = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return rendered
    if isinstance(listen, str) and listen:
        from ._engine import normalise_url

        target: str = (
            normalise_url(listen).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        return target
    raise errors.InputError(f"listen must be True, False or a database URL, got {listen!r}")


def seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.InputError(f"{name} must be seconds (a number), got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0 < number <= 86_400:
        raise errors.InputError(f"{name} must be above 0 and at most 86400, got {value!r}")
    return number
