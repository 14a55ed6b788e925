from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0012"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0011_thresholds")]
    operations = [alembic_revision("0012", previous="0011")]
