from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0006"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0005_journal_hash_inlinable")]
    operations = [alembic_revision("0006", previous="0005")]
