"""The ledger's metrics on a Prometheus /metrics endpoint, next to a small spend API.

    pip install 'sql-ledger[otel]' opentelemetry-sdk opentelemetry-exporter-prometheus
    python examples/prometheus/app.py --database-url postgresql://... --port 9464

    curl -X POST localhost:9464/tenants/acme -d '{"budget": 5000000}'
    curl -X POST localhost:9464/reserve/acme -d '{"amount": 300000, "ttl": 60}'
    curl -X POST localhost:9464/reserve/acme -d '{"amount": 1, "expires_at": "2030-01-01T00:00:00+00:00"}'
    curl -X POST localhost:9464/commit/17 -d '{"actual": 250000}'
    curl -X POST localhost:9464/release/17
    curl -X POST localhost:9464/expire
    curl localhost:9464/metrics

How it fits together:

1. the OpenTelemetry SDK's ``MeterProvider`` gets a ``PrometheusMetricReader``,
   which registers with ``prometheus_client``'s default registry; it is made the
   global provider, so the ledger (which only uses the OpenTelemetry API)
   reports to it without further wiring;
2. ``ledger.telemetry.observe(book)`` adds the gauges that need a query (open
   and lapsed holds, the oldest hold's age, the journal drift check): they run
   when Prometheus scrapes, not on the spend path;
3. ``GET /metrics`` renders the registry (``prometheus_client.generate_latest``).
   A separate port (``prometheus_client.start_http_server``) works as well.

The spend API is the standard library's HTTP server, to keep the example to
what it shows; any framework's routes call the same ledger methods.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import ledger
import ledger.telemetry

ROUTES = re.compile(r"^/(tenants|reserve|commit|release)/([^/]+)$")


MAX_MICROCENTS = 2**63 - 1


class BadAmount(ValueError):
    """An amount in the body is not a whole number of microcents in range (answered 400)."""


def microcents(data: dict[str, Any], key: str) -> int:
    """``data[key]`` as an amount; ``int()`` alone would turn 1.5 into 1."""
    value = data.get(key)
    if type(value) is not int or not 0 <= value <= MAX_MICROCENTS:
        raise BadAmount(
            f"{key} must be a whole number of microcents from 0 to {MAX_MICROCENTS}, not {value!r}"
        )
    return value


def dispatch(book: ledger.Ledger, action: str, key: str, data: dict[str, Any]) -> tuple[int, Any]:
    """Run one POST route: (HTTP status, JSON payload)."""
    if action in ("commit", "release") and not key.isdigit():
        return 400, {"error": f"{key!r} is not a reservation id"}
    try:
        if action == "tenants":
            created = book.ensure_tenant(key, microcents(data, "budget"))
            return 201 if created else 200, {"created": created}
        if action == "reserve":
            deadline = data.get("expires_at")
            outcome: Any = book.try_reserve(
                key,
                microcents(data, "amount"),
                ttl=data.get("ttl"),
                expires_at=None if deadline is None else datetime.fromisoformat(deadline),
            )
        elif action == "commit":
            outcome = book.commit(int(key), microcents(data, "actual"))
        else:
            outcome = book.release(int(key))
    except (ledger.errors.LedgerError, BadAmount) as exc:
        return 400, {"error": str(exc)}
    return 200 if outcome.ok else 409, outcome.to_dict()


def make_server(book: ledger.Ledger, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                return self._send(404, {"error": "not found"})
            body = generate_latest()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            try:
                data = json.loads(self.rfile.read(size) or b"{}")
            except ValueError:
                data = None
            if not isinstance(data, dict):
                return self._send(400, {"error": 'the body must be a JSON object: {"amount": 300}'})
            if self.path == "/expire":
                return self._send(200, {"expired": book.expire_holds()})
            match = ROUTES.match(self.path)
            if match is None:
                return self._send(404, {"error": "not found"})
            status, payload = dispatch(book, *match.groups(), data)
            return self._send(status, payload)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, default=9464)
    args = parser.parse_args()

    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    with ledger.Ledger(args.database_url) as book:
        ledger.telemetry.observe(book)
        server = make_server(book, args.port)
        print(f"serving on http://127.0.0.1:{server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


if __name__ == "__main__":
    main()
