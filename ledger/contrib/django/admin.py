"""Read-only admin pages: the ledger changes only through its own operations."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from .models import Alert, Certificate, Reservation, Tenant, Threshold


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(ReadOnlyAdmin):
    list_display = (
        "tenant_id",
        "initial_microcents",
        "remaining_microcents",
        "reserved_microcents",
        "committed_microcents",
        "max_reserved_microcents",
    )
    search_fields = ("tenant_id",)


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ("reservation_id", "tenant_id", "amount_microcents", "created_at", "expires_at")
    search_fields = ("tenant_id",)


@admin.register(Certificate)
class CertificateAdmin(ReadOnlyAdmin):
    list_display = (
        "certificate_id",
        "created_at",
        "snapshot_version",
        "conservation_balanced",
        "total_committed_microcents",
        "committed_since_last_certificate",
    )


@admin.register(Threshold)
class ThresholdAdmin(ReadOnlyAdmin):
    list_display = (
        "tenant_id",
        "name",
        "spent_microcents",
        "spent_percent",
        "remaining_below_microcents",
        "created_at",
    )
    list_display_links = None  # the table's key is (tenant_id, name): no detail page
    search_fields = ("tenant_id", "name")


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = (
        "alert_id",
        "tenant_id",
        "threshold",
        "period_index",
        "spent_microcents",
        "remaining_microcents",
        "created_at",
        "attempts",
        "delivered_at",
    )
    list_filter = ("delivered_at",)
    search_fields = ("tenant_id", "threshold")
