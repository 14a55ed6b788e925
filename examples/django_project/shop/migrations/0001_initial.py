from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = [("sql_ledger", "0003_audit_views")]
    operations = [
        migrations.CreateModel(
            name="Job",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("tenant", models.CharField(max_length=255)),
                ("cost_microcents", models.BigIntegerField()),
            ],
        ),
    ]
