from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0004"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0003_audit_views")]
    operations = [alembic_revision("0004", previous="0003")]
