from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0003"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0002_journal")]
    operations = [alembic_revision("0003", previous="0002")]
