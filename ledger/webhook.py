"""A small webhook deliverer for the alerts outbox: ``ledger alerts deliver --url ...``.

Each alert is POSTed as JSON (:meth:`ledger.Alert.to_dict`) with the header
``Idempotency-Key: alert-<alert_id>``; a 2xx answer acknowledges it. Any
other answer, a timeout or a refused connection hands the alert back with the
error recorded (``alerts.last_error``) and a backoff of ``backoff * 2**(n-1)``
seconds after its ``n``-th attempt, at most ``max_backoff``: the retry is a
new claim, so ``alerts.attempts`` counts every attempt, across restarts and
replicas, and no alert is ever dropped. A deliverer that dies mid-request
leaves its claim to lapse (``lease``) and another one posts it again: the
receiver sees an alert at least once and deduplicates on the key.

The standard library's ``urllib`` does the HTTP, so this needs no extra.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta

from . import _alerts, errors
from ._alerts import Alert
from ._ledger import Ledger

log = logging.getLogger("ledger")


@dataclass(frozen=True, slots=True)
class Delivered:
    """What :func:`deliver` did: alerts acknowledged, and failed attempts handed back."""

    delivered: int
    failed_attempts: int


def post(url: str, alert: Alert, timeout: float) -> None:
    """POST one alert; raises :class:`OSError` (``urllib.error.URLError`` included) unless 2xx."""
    body = json.dumps(alert.to_dict()).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Idempotency-Key": f"alert-{alert.alert_id}",
            "User-Agent": "sql-ledger-alerts",
        },
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        if not 200 <= answer.status < 300:
            raise OSError(f"HTTP {answer.status}")


def backoff_for(attempts: int, backoff: float, max_backoff: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: doubling, capped."""
    return min(max_backoff, backoff * 2.0 ** max(attempts - 1, 0))


def deliver(
    book: Ledger,
    url: str,
    *,
    timeout: float = 10.0,
    backoff: float = 1.0,
    max_backoff: float = 300.0,
    lease: timedelta = timedelta(seconds=60),
    listen: bool | str = True,
    poll_interval: float = 1.0,
    idle_timeout: float | None = None,
    max_alerts: int | None = None,
    consumer: str | None = None,
) -> Delivered:
    """Post alerts to ``url`` until ``idle_timeout`` seconds pass without one (None: forever)
    or ``max_alerts`` were delivered."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise errors.InputError(f"url must be an http:// or https:// URL, got {url!r}")
    for name, value in (("timeout", timeout), ("backoff", backoff), ("max_backoff", max_backoff)):
        _alerts.seconds(name, value)
    if lease.total_seconds() <= timeout:
        raise errors.InputError("lease must be longer than timeout, or a slow post is sent twice")
    cfg = _alerts.consumer_settings(
        book._routing.plain,
        book._url,
        1,
        lease,
        consumer,
        listen,
        poll_interval,
        idle_timeout,
        max_alerts,
    )
    delivered = failed = 0
    idle_since = time.monotonic()
    listener = _alerts.Listener.open(cfg.conninfo, _alerts.channel(book.schema))
    try:
        while cfg.max_alerts is None or delivered < cfg.max_alerts:
            claimed = book.claim_alerts(1, cfg.lease, consumer=cfg.consumer)
            if not claimed:
                if (
                    cfg.idle_timeout is not None
                    and time.monotonic() - idle_since >= cfg.idle_timeout
                ):
                    break
                listener.wait(cfg.interval)
                continue
            idle_since = time.monotonic()
            [alert] = claimed
            try:
                post(url, alert, timeout)
            except OSError as exc:
                failed += 1
                wait = backoff_for(alert.attempts, backoff, max_backoff)
                log.warning(
                    "alert %s (tenant %r, threshold %r): attempt %s failed (%s); retry in %.1fs",
                    alert.alert_id,
                    alert.tenant_id,
                    alert.threshold,
                    alert.attempts,
                    exc,
                    wait,
                )
                book.release_alerts(
                    [alert],
                    error=f"attempt {alert.attempts}: {exc}",
                    retry_after=timedelta(seconds=wait),
                )
                continue
            book.ack_alerts([alert])
            delivered += 1
    finally:
        listener.close()
    return Delivered(delivered, failed)
