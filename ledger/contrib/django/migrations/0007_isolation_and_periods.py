from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0007"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0006_budgets")]
    operations = [alembic_revision("0007", previous="0006")]
