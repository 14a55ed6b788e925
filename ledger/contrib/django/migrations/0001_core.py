from django.db import migrations

from ledger.contrib.django.migration_ops import alembic_revision

ALEMBIC_REVISION = "0001"


class Migration(migrations.Migration):
    atomic = False
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [alembic_revision("0001", previous="base")]
