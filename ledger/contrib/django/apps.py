from django.apps import AppConfig


class LedgerConfig(AppConfig):
    name = "ledger.contrib.django"
    label = "sql_ledger"
    verbose_name = "Ledger"
    default_auto_field = "django.db.models.BigAutoField"
