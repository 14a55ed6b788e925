"""Reserve before the work, settle after: one transaction with the app's own writes."""

import json

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from ledger.contrib.django import get_ledger

from .models import Job


class WorkFailed(RuntimeError):
    """The (simulated) work failed after the budget was reserved."""


@csrf_exempt
def tenant(request: HttpRequest, tenant: str) -> HttpResponse:
    book = get_ledger()
    if request.method == "POST":
        created = book.ensure_tenant(tenant, int(json.loads(request.body)["budget"]))
        return JsonResponse({"created": created}, status=201 if created else 200)
    row = book.tenant(tenant)
    if row is None:
        return JsonResponse({"error": "no such tenant"}, status=404)
    return JsonResponse(row.to_dict())


@csrf_exempt
def run_job(request: HttpRequest, tenant: str) -> HttpResponse:
    body = json.loads(request.body)
    book = get_ledger()
    with transaction.atomic():
        hold = book.try_reserve(tenant, int(body["estimate"]))
        if not hold.ok:
            return JsonResponse(hold.to_dict(), status=402)
        job = Job.objects.create(tenant=tenant, cost_microcents=int(body["actual"]))
        if body.get("fail"):
            raise WorkFailed("the work failed after reserving")
        settled = book.commit(hold.reservation_id, job.cost_microcents, tenant_id=tenant)
        if not settled.ok:
            transaction.set_rollback(True)
            return JsonResponse(settled.to_dict(), status=402)
    return JsonResponse({"job": job.id, "settlement": settled.to_dict()}, status=201)
