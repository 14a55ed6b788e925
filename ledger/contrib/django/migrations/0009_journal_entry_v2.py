from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0009"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0008_refusal_log_view")]
    operations = [alembic_revision("0009", previous="0008")]
