"""The one place a boto3 S3 client is made (S3 sources: ``s3://bucket/key``).

Like the DynamoDB factory beside it (:mod:`bulkwrites.dynamo.client`), configuration comes from the
environment: ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3`` (a local S3-compatible server such as moto's,
or unset for AWS) and the standard credential chain; credentials are never passed in, stored or
logged. A custom endpoint is addressed path-style (``http://host/bucket/key``), which every
S3-compatible server understands; AWS itself gets boto3's default (virtual-hosted style).
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from .client import region


def s3_endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_s3_client() -> Any:
    """A new S3 client; thread-safe, made per use (S3 sources are read once per preview or staging)."""
    endpoint = s3_endpoint_url()
    config = Config(
        region_name=region(),
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint else {},
    )
    return boto3.session.Session().client("s3", config=config, endpoint_url=endpoint)
