from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0010"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0009_journal_entry_v2")]
    operations = [alembic_revision("0010", previous="0009")]
