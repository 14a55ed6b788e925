"""Traces, metrics and log records for every ledger operation, in one place.

Every public method of :class:`~ledger.Ledger` and :class:`~ledger.AsyncLedger`
builds an operation and hands it to the facade's ``_run``, which passes it
through :func:`run` / :func:`arun`. That is the only place operations are
instrumented; the rest of the package only reports the events an outcome
cannot show, through the hooks below, on paths that are rare by nature:

* :func:`cas_retry` (``_operations.cas``: a probe answered ``retry``);
* :func:`retry` (``_executor`` / ``_async_executor``: a serialization failure
  or deadlock retried, one statement or the whole transaction);
* :func:`replayed` (``_operations.idempotent``: an idempotency key answered
  with its recorded outcome);
* :func:`expired` (``_operations.expire_one``: a lapsed hold expired, by the
  sweeper, lazily before a reserve, or at settlement).

Hooks add to the running operation's record (a context variable, so threads
and asyncio tasks each see their own); the record's counts reach the span and
the metrics when the operation finishes. Events of an attempt that was rolled
back and retried as a whole are dropped, so the hold counters count what
committed. Outside an operation (the coalescer's threads) a hook reports its
event at once.

OpenTelemetry is optional (``pip install 'sql-ledger[otel]'``) and only its
API is used: the application chooses the SDK, exporters and providers. When
the package is missing, or :func:`configure` turned it off, :func:`run` costs
a function call and a type check of the result (for the log records). Each
facade method passes its operation's name (its own public name, so
``Ledger.remaining_microcents`` is ``remaining_microcents`` even though the
statement runs in ``_tenant_row``) and the tenant and hold it is about,
explicitly: span names are documented (docs/observability.md) and must not
change when code moves, as they would if they were read off the call stack.

Logging (``logging.getLogger("ledger")``): refusals at DEBUG, retries and
expiries at INFO, failed verifications at ERROR. Records carry tenant ids,
reservation ids, statuses and amounts, never idempotency keys, URLs or
request payloads.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .outcomes import ConservationStatus, Outcome, Status

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import TracerProvider

try:
    from opentelemetry import context as _otel_context
    from opentelemetry import metrics as _otel_metrics
    from opentelemetry import trace as _otel_trace
except ImportError:  # the base install: no OpenTelemetry, no spans, no metrics
    _OTEL = False
else:
    _OTEL = True

log = logging.getLogger("ledger")

T = TypeVar("T")
A = TypeVar("A")
C = TypeVar("C")

#: Instrumentation scope (tracer and meter name).
SCOPE = "ledger"

# Metric names (OpenTelemetry names; the Prometheus exporter turns dots into
# underscores and appends the unit and ``_total``: docs/observability.md).
DURATION = "ledger.operation.duration"
OUTCOMES = "ledger.operation.outcomes"
CAS_RETRIES = "ledger.cas.retries"
TRANSACTION_RETRIES = "ledger.transaction.retries"
REPLAYS = "ledger.idempotent.replays"
HOLDS_OPENED = "ledger.holds.opened"
HOLDS_SETTLED = "ledger.holds.settled"
HOLDS_RELEASED = "ledger.holds.released"
HOLDS_EXPIRED = "ledger.holds.expired"
HOLDS_OPEN = "ledger.holds.open"
OLDEST_HOLD_AGE = "ledger.holds.oldest_age"
HOLDS_LAPSED = "ledger.holds.lapsed"
DRIFT = "ledger.tenants.drift"
ALERTS_BACKLOG = "ledger.alerts.backlog"  # issue 26: docs/alerts.md
OLDEST_ALERT_AGE = "ledger.alerts.oldest_age"

# Latency buckets in seconds: an operation is a round trip or a few (0.2 ms
# on a local socket) up to a contended transaction's retries.
_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Statuses that mean a hold was opened or left (the outcome says which).
_HOLD_EVENTS: dict[str, str] = {
    Status.RESERVED: "opened",
    Status.COMMITTED: "settled",
    Status.RELEASED: "released",
}


# ------------------------------------------------------------------ records


@dataclass(slots=True)
class _Record:
    """What the hooks learn while one operation runs."""

    name: str
    retries: int = 0
    cas_retries: int = 0
    # Counted for the attempt that is running; dropped if it is retried whole.
    replays: list[str] = field(default_factory=list)
    expired: int = 0


_RECORD: ContextVar[_Record | None] = ContextVar("ledger_operation", default=None)


class _Instruments:
    """The tracer and the instruments, from the configured (or global) providers."""

    #: False while the global providers are the API's placeholders (see _active).
    live = False

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from importlib.metadata import version

        ver = version("sql-ledger")
        self.tracer = _otel_trace.get_tracer(SCOPE, ver, tracer_provider)
        meter = _otel_metrics.get_meter(SCOPE, ver, meter_provider)
        self.duration = meter.create_histogram(
            DURATION,
            unit="s",
            description="Time a ledger operation took, retries included",
            explicit_bucket_boundaries_advisory=list(_BUCKETS),
        )
        self.outcomes = meter.create_counter(
            OUTCOMES, unit="{outcome}", description="Operation outcomes by status"
        )
        self.cas_retries = meter.create_counter(
            CAS_RETRIES,
            unit="{retry}",
            description="Compare-and-swap statements re-run because the tenant row changed",
        )
        self.retries = meter.create_counter(
            TRANSACTION_RETRIES,
            unit="{retry}",
            description="Statements or transactions retried after a serialization failure "
            "or deadlock",
        )
        self.replays = meter.create_counter(
            REPLAYS,
            unit="{replay}",
            description="Idempotency keys answered with their recorded outcome",
        )
        self.holds = {
            "opened": meter.create_counter(HOLDS_OPENED, unit="{hold}", description="Holds placed"),
            "settled": meter.create_counter(
                HOLDS_SETTLED, unit="{hold}", description="Holds committed"
            ),
            "released": meter.create_counter(
                HOLDS_RELEASED, unit="{hold}", description="Holds released"
            ),
            "expired": meter.create_counter(
                HOLDS_EXPIRED, unit="{hold}", description="Lapsed holds expired by this process"
            ),
        }


_instruments: _Instruments | None = None
_configured = False
_enabled = _OTEL
_providers: tuple[Any, Any] = (None, None)


def configure(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    enabled: bool = True,
) -> None:
    """Send the ledger's spans and metrics to these providers (default: the global ones).

    Without a call the ledger uses OpenTelemetry's global providers, as a
    library should: the application configures the SDK once. Pass providers
    to keep the ledger's telemetry apart (tests do), or ``enabled=False`` to
    turn spans and metrics off (log records stay). A no-op without the
    ``opentelemetry-api`` package.
    """
    global _instruments, _enabled, _providers, _configured, _next_check
    _enabled = enabled and _OTEL
    _providers = (tracer_provider, meter_provider)
    _instruments = None
    _configured = False
    _next_check = 0.0


def _current() -> _Instruments | None:
    global _instruments, _configured
    if not _configured:
        _instruments = _Instruments(*_providers) if _enabled else None
        if _instruments is not None and _providers != (None, None):
            _instruments.live = True
        _configured = True
    return _instruments


def _active() -> _Instruments | None:
    """The instruments, or None while nothing would record what they report.

    With the API installed but no SDK configured, the global providers are
    OpenTelemetry's proxies: every span and measurement would be dropped, yet
    creating them costs ~20 us per operation. Until the application sets a
    real provider (it can only do so once), operations take the light path.
    Asking the API costs ~2 us (it consults the environment), so it is asked
    at most once a second: operations in the first second after the SDK is
    set up may go unrecorded (set it up before the ledger's first operation).
    """
    global _next_check
    inst = _instruments if _configured else _current()
    if inst is None or inst.live:
        return inst
    now = time.monotonic()
    if now < _next_check:
        return None
    _next_check = now + 1.0
    if type(_otel_trace.get_tracer_provider()).__name__ in _PLACEHOLDERS and (
        type(_otel_metrics.get_meter_provider()).__name__ in _PLACEHOLDERS
    ):
        return None
    inst.live = True  # a real provider, for good: the API refuses to replace it
    return inst


_next_check = 0.0


#: The API's stand-ins for a provider that was never set (or set to no-op).
_PLACEHOLDERS = frozenset(
    {"ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider"}
)


# --------------------------------------------------------------- operations


def run(
    call: Callable[[A, C], T],
    op: A,
    connection: C,
    name: str,
    tenant_id: object = None,
    reservation_id: object = None,
) -> T:
    """Run ``call(op, connection)`` (the facade's database) as the operation ``name``.

    The facade method passes its own public name (the span is
    ``ledger.<name>``) and the tenant and hold the call is about, explicitly:
    the names are part of the documented telemetry (docs/observability.md),
    so a refactor of the facades must not rename a span by moving code
    around. :func:`arun` is the same for coroutines; both share
    :func:`_begin`, :func:`_end`, :func:`_end_error` and :func:`_untraced`.
    """
    inst = _active()
    if inst is None:
        result = call(op, connection)
        _untraced(result, name, tenant_id, reservation_id)
        return result
    begun = _begin(inst, name, tenant_id, reservation_id)
    if begun is None:
        return call(op, connection)
    try:
        result = call(op, connection)
    except BaseException as exc:
        _end_error(inst, *begun, exc)
        raise
    _end(inst, *begun, result, tenant_id, reservation_id)
    return result


async def arun(
    call: Callable[[A, C], Awaitable[T]],
    op: A,
    connection: C,
    name: str,
    tenant_id: object = None,
    reservation_id: object = None,
) -> T:
    """:func:`run` for :class:`~ledger.AsyncLedger` (the span stays current across awaits)."""
    inst = _active()
    if inst is None:
        result = await call(op, connection)
        _untraced(result, name, tenant_id, reservation_id)
        return result
    begun = _begin(inst, name, tenant_id, reservation_id)
    if begun is None:
        return await call(op, connection)
    try:
        result = await call(op, connection)
    except BaseException as exc:
        _end_error(inst, *begun, exc)
        raise
    _end(inst, *begun, result, tenant_id, reservation_id)
    return result


def _untraced(result: Any, name: str, tenant_id: object, reservation_id: object) -> None:
    """Without telemetry, only the log: refusals at DEBUG, failed checks at ERROR."""
    if log.isEnabledFor(logging.DEBUG) or _failed_check(result):
        _log_result(result, name, tenant_id, reservation_id)


F = TypeVar("F", bound=Callable[..., Any])


def _never_raises(fn: F) -> F:
    """Telemetry must not change what an operation does.

    A failing exporter, processor or SDK must not turn a spend that happened
    into an exception (the caller would retry it) or abort an operation
    midway: the failure is logged and the operation goes on.
    """

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.warning("ledger telemetry failed; the operation is unaffected", exc_info=True)
            return None

    return guarded  # type: ignore[return-value]


@_never_raises
def _begin(
    inst: _Instruments, name: str, tenant: object, rid: object
) -> tuple[Any, _Record, Any, float] | None:
    attributes: dict[str, Any] = {"ledger.operation": name, "db.system.name": "postgresql"}
    if isinstance(tenant, str):
        attributes["ledger.tenant_id"] = tenant
    if isinstance(rid, int):
        attributes["ledger.reservation_id"] = rid
    span = inst.tracer.start_span(f"ledger.{name}", attributes=attributes)
    record = _Record(name)
    attached = _otel_context.attach(_otel_trace.set_span_in_context(span))
    tokens = (_RECORD.set(record), attached)
    return span, record, tokens, time.perf_counter()


def _detach(tokens: Any) -> None:
    _otel_context.detach(tokens[1])
    _RECORD.reset(tokens[0])


@_never_raises
def _end(
    inst: _Instruments,
    span: Any,
    record: _Record,
    tokens: Any,
    start: float,
    result: Any,
    tenant: object,
    rid: object,
) -> None:
    elapsed = time.perf_counter() - start
    _detach(tokens)
    statuses = _statuses(result)
    outcome = statuses[0] if len(statuses) == 1 else ("batch" if statuses else "ok")
    op_attr = _attributes(record.name, None)
    inst.duration.record(elapsed, _attributes(record.name, outcome))
    counts = Counter(statuses) if len(statuses) > 1 else {s: 1 for s in statuses}
    for status, count in counts.items():
        inst.outcomes.add(count, _attributes(record.name, status))
        event = _HOLD_EVENTS.get(status)
        if event is not None:
            count -= sum(1 for s in record.replays if s == status)
            if count > 0:
                inst.holds[event].add(count, op_attr)
    if record.expired:
        inst.holds["expired"].add(record.expired, op_attr)
    if record.replays:
        inst.replays.add(len(record.replays), op_attr)
    if span.is_recording():
        span.set_attributes(
            {
                "ledger.outcome": outcome,
                "ledger.retries": record.retries,
                "ledger.cas_retries": record.cas_retries,
                "ledger.idempotent_replay": bool(record.replays),
            }
        )
        if len(statuses) > 1:
            span.set_attribute("ledger.batch.size", len(statuses))
    span.end()
    if log.isEnabledFor(logging.DEBUG) or _failed_check(result):
        _log_result(result, record.name, tenant, rid)


_ATTRIBUTES: dict[tuple[str, str | None], dict[str, str]] = {}


def _attributes(name: str, outcome: str | None) -> dict[str, str]:
    """Metric attributes, made once per (operation, outcome) and shared (never mutated)."""
    attributes = _ATTRIBUTES.get((name, outcome))
    if attributes is None:
        attributes = {"ledger.operation": name}
        if outcome is not None:
            attributes["ledger.outcome"] = outcome
        if len(_ATTRIBUTES) < 10_000:  # operations x statuses: a few hundred at most
            _ATTRIBUTES[(name, outcome)] = attributes
    return attributes


@_never_raises
def _end_error(
    inst: _Instruments, span: Any, record: _Record, tokens: Any, start: float, exc: BaseException
) -> None:
    elapsed = time.perf_counter() - start
    _detach(tokens)
    kind = type(exc).__name__
    attributes = {"ledger.operation": record.name, "ledger.outcome": "error", "error.type": kind}
    inst.duration.record(elapsed, attributes)
    inst.outcomes.add(1, attributes)
    if span.is_recording():
        span.set_attributes(
            {
                "ledger.outcome": "error",
                "error.type": kind,
                "ledger.retries": record.retries,
                "ledger.cas_retries": record.cas_retries,
            }
        )
        span.record_exception(exc)
        span.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, kind))
    span.end()


def _statuses(result: Any) -> list[str]:
    """The outcome statuses of a result: one, one per batch item, or none."""
    if isinstance(result, Outcome):
        return [result.status.value]
    if isinstance(result, ConservationStatus):
        return [result.status.value]
    if isinstance(result, list) and result and isinstance(result[0], Outcome):
        return [o.status.value for o in result]
    ok = getattr(result, "ok", None)
    if isinstance(ok, bool) and not isinstance(result, Outcome):
        return ["verified" if ok else "failed"]
    return []


def _failed_check(result: Any) -> bool:
    """A verification that found a problem (logged at ERROR whatever the level)."""
    if isinstance(result, Outcome) or result is None or isinstance(result, (int, list)):
        return False
    if isinstance(result, ConservationStatus):
        return not result.is_balanced
    return getattr(result, "ok", None) is False


def _log_result(result: Any, name: str, tenant: object, rid: object) -> None:
    """Refusals at DEBUG, failed verifications at ERROR; nothing else."""
    if _failed_check(result):
        log.error("%s failed: %s", name, _problems(result))
        return
    outcomes = result if isinstance(result, list) else [result]
    for outcome in outcomes:
        if isinstance(outcome, Outcome) and not outcome.ok:
            log.debug(
                "%s refused: %s (tenant %s, reservation %s)",
                name,
                outcome.status.value,
                tenant if isinstance(tenant, str) else "-",
                rid if isinstance(rid, int) else "-",
                extra={"ledger_operation": name, "ledger_status": outcome.status.value},
            )


def _problems(result: Any) -> str:
    if isinstance(result, ConservationStatus):
        return str(result)
    found: Iterable[Any] = getattr(result, "discrepancies", ()) or getattr(result, "problems", ())
    listed = [str(p) for p in found]
    head = "; ".join(listed[:5])
    return f"{len(listed)} problem(s): {head}" + (" ..." if len(listed) > 5 else "")


# -------------------------------------------------------------------- hooks


@_never_raises
def cas_retry() -> None:
    """A compare-and-swap probe answered 'retry': another writer changed the row."""
    record = _RECORD.get()
    if record is not None:
        record.cas_retries += 1
    # DEBUG, not INFO: under contention on a hot tenant this is routine.
    log.debug(
        "%s: the tenant row changed under a compare-and-swap; deciding again",
        record.name if record else "-",
    )
    inst = _active()
    if inst is not None:
        inst.cas_retries.add(1, {"ledger.operation": record.name if record else "unknown"})


@_never_raises
def retry(error: BaseException, *, whole: bool) -> None:
    """A serialization failure or deadlock is being retried.

    ``whole``: the transaction is run again from its first step, so what its
    rolled-back attempt reported (replays, expiries) is forgotten.
    """
    record = _RECORD.get()
    name = "unknown"
    if record is not None:
        name = record.name
        record.retries += 1
        if whole:
            record.replays.clear()
            record.expired = 0
    log.info(
        "%s: retrying the %s after %s",
        name,
        "transaction" if whole else "statement",
        type(error).__name__,
    )
    inst = _active()
    if inst is not None:
        inst.retries.add(1, {"ledger.operation": name, "error.type": type(error).__name__})


@_never_raises
def replayed(status: str) -> None:
    """An idempotency key answered with its recorded outcome (nothing was applied again)."""
    record = _RECORD.get()
    if record is not None:
        record.replays.append(status)
        return
    inst = _active()
    if inst is not None:
        inst.replays.add(1, {"ledger.operation": "unknown"})


@_never_raises
def expired(tenant_id: str, reservation_id: int, returned: int) -> None:
    """A lapsed hold was expired and its amount returned to the tenant."""
    log.info(
        "expired hold %s of tenant %s: %s microcents returned", reservation_id, tenant_id, returned
    )
    record = _RECORD.get()
    if record is not None:
        record.expired += 1
        return
    inst = _active()
    if inst is not None:
        inst.holds["expired"].add(1, {"ledger.operation": "unknown"})


# ---------------------------------------------------------- observed gauges


def observe(
    read: Callable[[], Any],
    drift: Callable[[], int],
    meter_provider: MeterProvider | None = None,
    alerts: Callable[[], Any] | None = None,
) -> None:
    """Register the gauges that need a query; each runs only when metrics are collected."""
    if not _OTEL:
        return
    from opentelemetry.metrics import Observation

    meter = _otel_metrics.get_meter(SCOPE, "", meter_provider or _providers[1])

    def gauge(column: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            row = read()
            return [] if row is None else [Observation(getattr(row, column))]

        return callback

    meter.create_observable_gauge(
        HOLDS_OPEN, [gauge("open_holds")], unit="{hold}", description="Holds open now"
    )
    meter.create_observable_gauge(
        OLDEST_HOLD_AGE,
        [gauge("oldest_age")],
        unit="s",
        description="Age of the oldest open hold (0 when none is open)",
    )
    meter.create_observable_gauge(
        HOLDS_LAPSED,
        [gauge("lapsed_holds")],
        unit="{hold}",
        description="Open holds past their deadline, not yet expired",
    )

    def drifted(options: CallbackOptions) -> Iterable[Observation]:
        count = drift()
        if count > 0:
            log.error(
                "drift check failed: %s tenant row(s) disagree with their journal head; "
                "run `ledger verify` to see which",
                count,
            )
        return [] if count < 0 else [Observation(count)]

    meter.create_observable_gauge(
        DRIFT,
        [drifted],
        unit="{tenant}",
        description="Tenants whose row disagrees with their journal head (always 0)",
    )
    if alerts is None:
        return

    def backlog(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            row = alerts()
            return [] if row is None else [Observation(getattr(row, field))]

        return callback

    meter.create_observable_gauge(
        ALERTS_BACKLOG,
        [backlog("undelivered")],
        unit="{alert}",
        description="Alerts recorded and not yet delivered (acknowledged)",
    )
    meter.create_observable_gauge(
        OLDEST_ALERT_AGE,
        [backlog("oldest_age_seconds")],
        unit="s",
        description="Age of the oldest undelivered alert (0 when none waits)",
    )
