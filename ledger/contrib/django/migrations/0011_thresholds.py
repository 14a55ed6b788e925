from django.db import migrations, models

from ledger.contrib.django.migration_ops import alembic_revision, table_name

ALEMBIC_REVISION = "0011"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0010_tree")]
    operations = [
        alembic_revision("0011", previous="0010"),
        # State only: the admin's read-only views of the thresholds and the outbox.
        migrations.CreateModel(
            name="Threshold",
            fields=[
                ("tenant_id", models.TextField(primary_key=True, serialize=False)),
                ("name", models.TextField()),
                ("spent_microcents", models.BigIntegerField(null=True)),
                (
                    "spent_percent",
                    models.DecimalField(decimal_places=10, max_digits=30, null=True),
                ),
                ("remaining_below_microcents", models.BigIntegerField(null=True)),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "db_table": table_name("thresholds"),
                "ordering": ["tenant_id", "name"],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="Alert",
            fields=[
                ("alert_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("tenant_id", models.TextField()),
                ("threshold", models.TextField()),
                ("period_index", models.BigIntegerField(null=True)),
                ("kind", models.TextField()),
                ("level_microcents", models.BigIntegerField()),
                ("spent_microcents", models.BigIntegerField()),
                ("remaining_microcents", models.BigIntegerField()),
                ("created_at", models.DateTimeField()),
                ("attempts", models.BigIntegerField()),
                ("last_error", models.TextField(null=True)),
                ("delivered_at", models.DateTimeField(null=True)),
            ],
            options={
                "db_table": table_name("alerts"),
                "ordering": ["-alert_id"],
                "managed": False,
            },
        ),
    ]
