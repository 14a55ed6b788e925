"""Read-only views of the ledger tables for the Django admin (Django never manages them).

Migration 0001_core declares them (``managed = False``) so Django's migration
state matches: ``makemigrations --check`` finds nothing to do. A change here
needs a state-only migration in this app;
tests/integration/integrations/test_django.py fails until then.
"""

from __future__ import annotations

from django.db import models

from .migration_ops import table_name as _table


class Tenant(models.Model):
    tenant_id = models.TextField(primary_key=True)
    initial_microcents = models.BigIntegerField()
    remaining_microcents = models.BigIntegerField()
    reserved_microcents = models.BigIntegerField()
    committed_microcents = models.BigIntegerField()
    max_reserved_microcents = models.BigIntegerField()
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = _table("tenants")
        ordering = ["tenant_id"]

    def __str__(self) -> str:
        return self.tenant_id


class Reservation(models.Model):
    # Unique in practice (drawn from a sequence); the table's key is (tenant, id).
    reservation_id = models.BigIntegerField(primary_key=True)
    tenant_id = models.TextField()
    amount_microcents = models.BigIntegerField()
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = _table("reservations")
        ordering = ["created_at"]
        verbose_name = "open hold"

    def __str__(self) -> str:
        return f"hold {self.reservation_id} of {self.tenant_id}"


class Certificate(models.Model):
    certificate_id = models.BigIntegerField(primary_key=True)
    created_at = models.DateTimeField()
    snapshot_version = models.BigIntegerField()
    tenant_count = models.BigIntegerField()
    active_reservations = models.BigIntegerField()
    conservation_balanced = models.BooleanField()
    total_initial_microcents = models.BigIntegerField()
    total_committed_microcents = models.BigIntegerField()
    committed_since_last_certificate = models.BigIntegerField()

    class Meta:
        managed = False
        db_table = _table("certificates")
        ordering = ["-certificate_id"]

    def __str__(self) -> str:
        return f"certificate {self.certificate_id}"


class Threshold(models.Model):
    """A tenant's threshold (docs/alerts.md), for the admin's read-only list.

    The table's key is (tenant_id, name); Django 5.0 and 5.1 have no composite
    keys and the admin supports none, so ``tenant_id`` stands in as the key:
    the list shows every row (and links none, ``ThresholdAdmin``); do not look
    a threshold up by ``pk``. Set and clear thresholds through the ledger.
    """

    tenant_id = models.TextField(primary_key=True)
    name = models.TextField()
    spent_microcents = models.BigIntegerField(null=True)
    spent_percent = models.DecimalField(max_digits=30, decimal_places=10, null=True)
    remaining_below_microcents = models.BigIntegerField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = _table("thresholds")
        ordering = ["tenant_id", "name"]

    def __str__(self) -> str:
        return f"threshold {self.name} of {self.tenant_id}"


class Alert(models.Model):
    """A row of the alerts outbox (docs/alerts.md): a crossing and its delivery state."""

    alert_id = models.BigIntegerField(primary_key=True)
    tenant_id = models.TextField()
    threshold = models.TextField()
    period_index = models.BigIntegerField(null=True)
    kind = models.TextField()
    level_microcents = models.BigIntegerField()
    spent_microcents = models.BigIntegerField()
    remaining_microcents = models.BigIntegerField()
    created_at = models.DateTimeField()
    attempts = models.BigIntegerField()
    last_error = models.TextField(null=True)
    delivered_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = _table("alerts")
        ordering = ["-alert_id"]

    def __str__(self) -> str:
        return f"alert {self.alert_id}: {self.threshold} of {self.tenant_id}"
