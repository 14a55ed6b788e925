from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0005"


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("sql_ledger", "0004_journal_expired_holds")]
    operations = [alembic_revision("0005", previous="0004")]
