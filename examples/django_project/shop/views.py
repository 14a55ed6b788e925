"""Hold budget before slow work, settle after, in one transaction with the job row.

``hold()`` commits the reserve at once, in its own short transaction (the
tenant's row is locked for milliseconds, not for the work), with a TTL that
returns the money if the process dies mid-work. The work runs outside any
transaction. ``settle()`` runs on Django's connection, so inside
``transaction.atomic()`` it commits or rolls back with the ``Job`` row. An
exception, or leaving the block without settling, releases the hold.
"""

import json
import os
import time
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from ledger.contrib.django import get_ledger
from ledger.errors import RefusedError, TenantNotFound

from .models import Job

#: How long a hold may outlive a crashed worker before its money comes back.
HOLD_TTL = timedelta(seconds=int(os.environ.get("HOLD_TTL_SECONDS", "30")))


class WorkFailed(RuntimeError):
    """The (simulated) work failed after the budget was held."""


MAX_MICROCENTS = 2**63 - 1


class BadRequest(ValueError):
    """The request's body is not what the view takes (answered 400, nothing changed)."""


def body_of(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object, or BadRequest."""
    try:
        data = json.loads(request.body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object, e.g. {"estimate": 300000}')
    return data


def microcents(body: dict[str, Any], key: str) -> int:
    """``body[key]`` as an amount: a whole number of microcents, 0 to 2^63 - 1.

    ``int()`` alone would turn 1.5 into 1 and "abc" into a 500.
    """
    value = body.get(key)
    if type(value) is not int or not 0 <= value <= MAX_MICROCENTS:
        raise BadRequest(
            f"{key} must be a whole number of microcents from 0 to {MAX_MICROCENTS}, not {value!r}"
        )
    return value


def do_the_work(body: dict[str, Any]) -> int:
    """Stands for the slow, costly call (an LLM, a payment); returns what it cost."""
    time.sleep(int(body.get("work_ms", 0)) / 1000)
    if body.get("fail"):
        raise WorkFailed("the work failed after the budget was held")
    return microcents(body, "actual")


@csrf_exempt
def tenant(request: HttpRequest, tenant: str) -> HttpResponse:
    book = get_ledger()
    if request.method == "POST":
        try:
            budget = microcents(body_of(request), "budget")
        except BadRequest as bad:
            return JsonResponse({"error": str(bad)}, status=400)
        created = book.ensure_tenant(tenant, budget)
        return JsonResponse({"created": created}, status=201 if created else 200)
    row = book.tenant(tenant)
    if row is None:
        return JsonResponse({"error": "no such tenant"}, status=404)
    return JsonResponse(row.to_dict())


@csrf_exempt
def run_job(request: HttpRequest, tenant: str) -> HttpResponse:
    try:
        body = body_of(request)
        estimate = microcents(body, "estimate")
        microcents(body, "actual")  # checked before anything is held
    except BadRequest as bad:
        return JsonResponse({"error": str(bad)}, status=400)
    book = get_ledger()
    try:
        with book.hold(tenant, estimate, ttl=HOLD_TTL) as hold:
            cost = do_the_work(body)  # no transaction open, no lock held
            with transaction.atomic():
                job = Job.objects.create(tenant=tenant, cost_microcents=cost)
                settled = hold.settle(cost)  # on Django's connection: atomic with the job row
                if not settled.ok:  # e.g. an overrun the balance cannot cover
                    transaction.set_rollback(True)  # no job row; leaving releases the hold
                    return JsonResponse(settled.to_dict(), status=402)
    except RefusedError as refused:  # entering the hold was refused: nothing is held
        # 404 for an unknown tenant; 402 (Payment Required) for every other refusal
        status = 404 if isinstance(refused, TenantNotFound) else 402
        return JsonResponse(refused.outcome.to_dict(), status=status)
    return JsonResponse({"job": job.id, "settlement": settled.to_dict()}, status=201)
