"""Jobs from files already on the server, or S3 objects, named by the JSON API: only where allowed.

A token that may create jobs must not become a way to read the server's files (``/etc/passwd``,
the app's settings, other jobs' uploads): a job's preview and exports show what it read. So a
path is taken only when, with every symlink resolved, it lies inside one of
``BULKWRITES_API_SOURCE_DIRS`` (none by default) and outside the app's own directory and its
media; the file is opened without following a final symlink and checked again once open.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from django.conf import settings

from bulkwrites.conf import app_settings
from bulkwrites.models import Job
from bulkwrites.services import create
from bulkwrites.services.errors import JobError


def job_create_from_location(*, location: str, created_by: Any = None, **kwargs: Any) -> Job:
    """A draft job from a server-side path, or from an ``s3://`` URL inside ``BULKWRITES_S3_ALLOWED``.

    ``kwargs`` are those of :func:`create.job_create_from_file` (target, format, settings).
    """
    if location.strip().lower().startswith("s3://"):
        return create.job_create_from_s3(url=location.strip(), created_by=created_by, **kwargs)
    path = allowed_path(location)
    with open_allowed(path) as upload:
        return create.job_create_from_file(upload=upload, file_name=path.name, created_by=created_by, **kwargs)


def allowed_dirs() -> list[Path]:
    return [Path(d).resolve() for d in app_settings().api_source_dirs]


def _forbidden_dirs() -> list[Path]:
    """The app's code, settings and media are never a source, whatever the allow-list says."""
    return [Path(settings.BASE_DIR).resolve(), Path(settings.MEDIA_ROOT).resolve()]


def allowed_path(location: str) -> Path:
    """The resolved path of ``location`` if the API may read it; ``JobError`` with the reason otherwise.

    Whether a path outside the allowed directories exists is never told.
    """
    dirs = allowed_dirs()
    if not dirs:
        raise JobError("The API reads no server-side files: no directory is allowed (BULKWRITES_API_SOURCE_DIRS).")
    given = Path(location)
    if not given.is_absolute():
        raise JobError("Give the file's absolute path on the server.")
    resolved = given.resolve()  # symlinks followed, '..' gone
    if not _inside(resolved, dirs) or _inside(resolved, _forbidden_dirs()):
        raise JobError(f"{location} is not inside a directory the API may read (BULKWRITES_API_SOURCE_DIRS).")
    if not resolved.is_file():
        raise JobError(f"{location}: no such file.")
    return resolved


def open_allowed(path: Path) -> Any:
    """Open a path :func:`allowed_path` returned, refusing a symlink swapped in meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise JobError(f"{path}: cannot be opened ({exc.strerror}).") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JobError(f"{path} is not a regular file.")
        opened = Path(f"/proc/self/fd/{fd}")
        if opened.exists():  # Linux: where the descriptor really points
            real = Path(os.readlink(opened))
            if not _inside(real, allowed_dirs()) or _inside(real, _forbidden_dirs()):
                raise JobError(f"{path} is not inside a directory the API may read (BULKWRITES_API_SOURCE_DIRS).")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _inside(path: Path, dirs: list[Path]) -> bool:
    return any(path == d or path.is_relative_to(d) for d in dirs)
