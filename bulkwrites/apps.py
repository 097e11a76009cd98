from django.apps import AppConfig


class BulkwritesConfig(AppConfig):
    name = "bulkwrites"
    verbose_name = "Bulk writes to DynamoDB"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The deploy checks register themselves; the stream rules' admin lives in its own module
        # (the admin autodiscovers only admin.py).
        from bulkwrites import admin_streams, checks  # noqa: F401
