from django.apps import AppConfig


class BulkwritesConfig(AppConfig):
    name = "bulkwrites"
    verbose_name = "Bulk writes to DynamoDB"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from bulkwrites import checks  # noqa: F401 - registers the deploy checks

        # The stream rules' admin lives in its own module; the admin autodiscovers only admin.py.
        from bulkwrites import admin_streams  # noqa: F401
