from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0002"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0001_core")]
    operations = [alembic_revision("0002", previous="0001")]
