from django.apps import AppConfig


class BulkwritesConfig(AppConfig):
    name = "bulkwrites"
    verbose_name = "Bulk writes to DynamoDB"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The deploy checks register themselves when imported. (The admin modules are all
        # reached from admin.py, which the admin autodiscovers.)
        from bulkwrites import checks  # noqa: F401
