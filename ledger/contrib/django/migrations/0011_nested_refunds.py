from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0011"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0010_tree")]
    operations = [alembic_revision("0011", previous="0010")]
