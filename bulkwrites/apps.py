from django.apps import AppConfig


class BulkwritesConfig(AppConfig):
    name = "bulkwrites"
    verbose_name = "Bulk writes to DynamoDB"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from bulkwrites import checks  # noqa: F401 - registers the deploy checks
