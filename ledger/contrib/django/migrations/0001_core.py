from django.db import migrations, models

from ledger.contrib.django.migration_ops import alembic_revision, table_name

ALEMBIC_REVISION = "0001"


class Migration(migrations.Migration):
    atomic = False
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        alembic_revision("0001", previous="base"),
        # State only: the admin's read-only models. managed=False, so Django
        # never touches these tables; alembic owns them.
        migrations.CreateModel(
            name="Certificate",
            fields=[
                ("certificate_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField()),
                ("snapshot_version", models.BigIntegerField()),
                ("tenant_count", models.BigIntegerField()),
                ("active_reservations", models.BigIntegerField()),
                ("conservation_balanced", models.BooleanField()),
                ("total_initial_microcents", models.BigIntegerField()),
                ("total_committed_microcents", models.BigIntegerField()),
                ("committed_since_last_certificate", models.BigIntegerField()),
            ],
            options={
                "db_table": table_name("certificates"),
                "ordering": ["-certificate_id"],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="Reservation",
            fields=[
                ("reservation_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("tenant_id", models.TextField()),
                ("amount_microcents", models.BigIntegerField()),
                ("created_at", models.DateTimeField()),
                ("expires_at", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "open hold",
                "db_table": table_name("reservations"),
                "ordering": ["created_at"],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="Tenant",
            fields=[
                ("tenant_id", models.TextField(primary_key=True, serialize=False)),
                ("initial_microcents", models.BigIntegerField()),
                ("remaining_microcents", models.BigIntegerField()),
                ("reserved_microcents", models.BigIntegerField()),
                ("committed_microcents", models.BigIntegerField()),
                ("max_reserved_microcents", models.BigIntegerField()),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "db_table": table_name("tenants"),
                "ordering": ["tenant_id"],
                "managed": False,
            },
        ),
    ]
