"""The ASGI entry point. Refuses to start without a real secret key unless DEBUG is on."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from project.security import require_secret_key  # after DJANGO_SETTINGS_MODULE is set

require_secret_key("web process")
application = get_asgi_application()
