from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0008"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0007_isolation_and_periods")]
    operations = [alembic_revision("0008", previous="0007")]
