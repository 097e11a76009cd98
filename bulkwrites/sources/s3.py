"""S3 objects as sources: ``s3://bucket/key``, who may read which, and reading an object as a stream.

A job from S3 records the object's size and ETag when it is created; the preview and staging read
it again with ``GetObject`` and ``If-Match: <ETag>``, so an object replaced in between is refused
by S3 itself (412) rather than silently staging other data than was previewed. The body is read as
a stream (botocore's ``StreamingBody``), never whole; a connection that breaks off mid-object is
resumed with a ranged ``GetObject`` from where it stopped, under the same ETag (given up after
:data:`RESUME_ATTEMPTS` resumes in a row that read nothing).

Who may read what: the app's AWS credentials may reach more buckets than operators should, so
only the buckets and prefixes of an allow-list (``BULKWRITES_S3_ALLOWED``) are read; an empty list
switches S3 sources off. The client is handed in (made by :mod:`bulkwrites.dynamo.s3_client`):
sources make no AWS clients.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from bulkwrites.sources.formats.common import CHUNK_SIZE, SourceError

logger = logging.getLogger(__name__)

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
RESUME_ATTEMPTS = 3
S3_OFF = (
    "S3 sources are off: set BULKWRITES_S3_ALLOWED to the buckets (or bucket/prefix) they may read, "
    "comma-separated, for the web server and the workers (README, Security model)."
)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def file_name(self) -> str:
        """The key's last part: what the format is told from (``export.json.gz``)."""
        return self.key.rsplit("/", 1)[-1]

    @classmethod
    def from_url(cls, url: str) -> S3Location:
        """``s3://bucket/key`` -> location; SourceError saying what is wrong otherwise."""
        shown = url if len(url) <= 120 else url[:117] + "..."
        if not url.startswith("s3://"):
            raise SourceError(f'"{shown}" is not an S3 URL (s3://bucket/key).')
        bucket, _, key = url[len("s3://") :].partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise SourceError(f'"{shown}": "{bucket[:70]}" is not a valid S3 bucket name.')
        if not key or key.endswith("/"):
            raise SourceError(f'"{shown}" names no object (s3://bucket/key, the key of one file).')
        if any(part in (".", "..") for part in key.split("/")):
            raise SourceError(f'"{shown}": keys with "." or ".." path segments are refused.')
        if len(key.encode("utf-8")) > 1024:
            raise SourceError(f'"{shown}": an S3 key is at most 1,024 bytes.')
        return cls(bucket, key)


def check_allowed(location: S3Location, allowed: Sequence[str]) -> None:
    """Refuse an object outside the allow-list: entries ``bucket`` (all of it) or ``bucket/prefix``.

    A prefix is a folder: ``exports`` allows ``exports/...``, never ``exports-private/...``.
    """
    if not allowed:
        raise SourceError(S3_OFF)
    for entry in allowed:
        bucket, _, prefix = entry.strip().removeprefix("s3://").partition("/")
        if bucket != location.bucket:
            continue
        prefix = prefix.strip("/")
        if not prefix or location.key.startswith(prefix + "/"):
            return
    raise SourceError(
        f"{location.url} is outside the buckets and prefixes S3 sources may read (BULKWRITES_S3_ALLOWED)."
    )


@dataclass(frozen=True)
class S3Object:
    size: int
    etag: str
    version_id: str = ""


def head_object(client: Any, location: S3Location) -> S3Object:
    """The object's size and ETag (``HeadObject``)."""
    try:
        answer = client.head_object(Bucket=location.bucket, Key=location.key)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(exc, location) from None
    return S3Object(int(answer["ContentLength"]), str(answer["ETag"]), str(answer.get("VersionId") or ""))


def read_head(client: Any, location: S3Location, obj: S3Object, size: int) -> bytes:
    """The object's first ``size`` bytes (a ranged GET), for telling its format."""
    if obj.size == 0:
        return b""
    body = _get(client, location, obj, first=0, last=min(size, obj.size) - 1)
    try:
        return bytes(body.read())
    except (BotoCoreError, OSError) as exc:
        raise _broken(location, 0, exc) from None
    finally:
        body.close()


def _get(client: Any, location: S3Location, obj: S3Object, *, first: int = 0, last: int | None = None) -> Any:
    kwargs: dict[str, Any] = {"Bucket": location.bucket, "Key": location.key, "IfMatch": obj.etag}
    if first or last is not None:
        kwargs["Range"] = f"bytes={first}-{'' if last is None else last}"
    try:
        answer = client.get_object(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(exc, location, obj) from None
    if first == 0 and last is None and int(answer["ContentLength"]) != obj.size:
        answer["Body"].close()
        raise replaced(location, obj)
    return answer["Body"]


class ObjectReader:
    """An S3 object's bytes as a stream: ``read(size)``, resumed with a ranged GET if the connection breaks."""

    def __init__(self, client: Any, location: S3Location, obj: S3Object) -> None:
        self._client = client
        self._location = location
        self._object = obj
        self._body = _get(client, location, obj)
        self.offset = 0
        self._resumed = 0  # resumes in a row without a byte read in between
        self._resumed_at = -1

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK_SIZE), b""))
        while True:
            try:
                data = bytes(self._body.read(size))
            except (BotoCoreError, OSError) as exc:
                self._resume(exc)
                continue
            if not data and self.offset < self._object.size:
                self._resume(None)  # the connection closed early
                continue
            self.offset += len(data)
            return data

    def _resume(self, exc: BaseException | None) -> None:
        self._resumed = 1 if self.offset > self._resumed_at else self._resumed + 1
        self._resumed_at = self.offset
        if self._resumed > RESUME_ATTEMPTS:
            raise _broken(self._location, self.offset, exc)
        logger.warning("%s: reading broke off at byte %s (%s); resuming", self._location.url, self.offset, exc)
        self.close()
        self._body = _get(self._client, self._location, self._object, first=self.offset)

    def close(self) -> None:
        with contextlib.suppress(BotoCoreError, OSError):  # closing a broken connection
            self._body.close()


def replaced(location: S3Location, obj: S3Object) -> SourceError:
    return SourceError(
        f"{location.url} was replaced after the job was created (its ETag was {obj.etag}, size {obj.size:,} bytes): "
        "nothing was read, so that the job never stages other data than was previewed. "
        "Create a new job from the object as it is now."
    )


def _broken(location: S3Location, offset: int, exc: BaseException | None) -> SourceError:
    why = f": {str(exc)[:200]}" if exc else ""
    return SourceError(
        f"Reading {location.url} broke off at byte {offset:,} and could not be resumed "
        f"after {RESUME_ATTEMPTS} attempts{why}."
    )


def _s3_error(exc: BaseException, location: S3Location, obj: S3Object | None = None) -> SourceError:
    """What an S3 error means for the operator (never the credentials)."""
    if isinstance(exc, NoCredentialsError):
        return SourceError("No AWS credentials were found for S3 (set them for the web server and the workers).")
    if isinstance(exc, EndpointConnectionError):
        return SourceError(f"Cannot reach S3 at {exc.kwargs.get('endpoint_url', 'its endpoint')}.")
    if not isinstance(exc, ClientError):
        return SourceError(f"S3 could not be read for {location.url}: {str(exc)[:200]}")
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("PreconditionFailed", "412") or status == 412:
        assert obj is not None
        return replaced(location, obj)
    if code in ("NoSuchKey", "404", "NotFound"):
        return SourceError(f"There is no object {location.url}.")
    if code == "NoSuchBucket":
        return SourceError(f"There is no bucket {location.bucket!r}.")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return SourceError(
            f"S3 denied access to {location.url} (the web process and the workers need s3:GetObject on it, "
            "and s3:ListBucket on the bucket to tell a missing object from a forbidden one)."
        )
    if code == "InvalidObjectState":
        return SourceError(f"{location.url} is archived (Glacier): restore it before reading it.")
    return SourceError(f"S3 refused to read {location.url}: {code or status}: {str(error.get('Message', ''))[:200]}")
