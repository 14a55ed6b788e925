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
