#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    from project.security import require_secret_key_for_command

    require_secret_key_for_command(sys.argv)  # runserver / rqworker: never with a throwaway key
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
