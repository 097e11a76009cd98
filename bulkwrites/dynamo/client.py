"""The one place a boto3 DynamoDB client is made.

Configuration comes from the environment, as for any AWS tool: ``AWS_REGION``,
``AWS_ENDPOINT_URL_DYNAMODB`` (DynamoDB Local, or unset for AWS) and the standard
credential chain. Credentials are never passed in, stored or logged by bulkwrites.

Retries: botocore's own retry layer is switched off (``total_max_attempts=1``; note that
botocore's ``max_attempts`` counts *retries*, so ``max_attempts=1`` would still retry once) for
the writing client, because the writer retries every call itself with full-jitter backoff and counts
attempts per item. Two layers would multiply (10 botocore attempts x our attempts) and
hide throttling from our rate control. Reads made from the admin (DescribeTable,
ListTables) keep botocore's ``standard`` mode.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.context import get_context

from .direct import send_batch_writes_directly
from .http import use_lean_transport
from .verify import RAW_RESPONSE
from .writer import CallRequests

DEFAULT_REGION = "us-east-1"


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("AWS_ENDPOINT_URL") or None


def endpoint_label() -> str:
    """Where writes go, for operators: the custom endpoint or the AWS region."""
    return endpoint_url() or f"AWS DynamoDB ({region()})"


def make_client(
    *, for_writing: bool = False, max_connections: int = 10, endpoint: str | None = None, region_name: str | None = None
) -> Any:
    """A new DynamoDB client. boto3 clients are thread-safe: share one per job run.

    ``region_name``: another region than the environment's (a source table elsewhere).
    """
    config = Config(
        region_name=region_name or region(),
        retries={"mode": "standard", "total_max_attempts": 1 if for_writing else 3},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=max(10, max_connections),
        tcp_keepalive=True,
        # Items are validated against DynamoDB's rules before they are staged; botocore's own
        # parameter validation walks every attribute of every call again (~15% of a worker's CPU).
        parameter_validation=not for_writing,
    )
    session = boto3.session.Session()
    client = session.client("dynamodb", config=config, endpoint_url=endpoint or endpoint_url())
    if for_writing:
        send_requests_as_json(client)
        read_responses_as_json(client)
        build_user_agent_once(client)
        use_lean_transport(client)
        send_batch_writes_directly(client)
    return client


def build_user_agent_once(client: Any) -> None:
    """Let the client build its ``User-Agent`` header once per set of features, not twice per call.

    botocore builds the header from a dozen components (SDK, OS, language, config, the features
    the call used), sanitizing each, when it makes a request and again just before signing it
    (measured: ~0.2 ms of CPU per call, a seventh of a BatchWriteItem call's path). The string
    depends only on the client's fixed settings and the call's feature ids, so it is kept per
    set of feature ids: the header sent is byte for byte the one botocore would build. The
    client's ``_user_agent_creator`` is private to botocore; without it nothing changes.
    """
    creator: Any = getattr(client, "_user_agent_creator", None)
    build = getattr(creator, "to_string", None)
    if build is None:
        return
    built: dict[frozenset[str], str] = {}

    def to_string() -> str:
        context = get_context()
        features = frozenset(context.features) if context is not None else frozenset()
        text = built.get(features)
        if text is None:
            text = built[features] = build()
        return text

    creator.to_string = to_string  # the instance's attribute, also seen by its own rebuild handler


_CONTEXT_KEY = "bulkwrites_request_json"


def send_requests_as_json(client: Any) -> None:
    """Let ``batch_write_item`` send :class:`CallRequests` as their stored JSON text.

    Items are stored as DynamoDB JSON, which is exactly their form in the JSON body of a
    call; serializing them again through botocore's model costs ~2 ms of CPU per call of 25.
    Before the parameters are built, each ``CallRequests`` is swapped for an empty list (the
    table name stays, as endpoint rules read it) and its JSON is kept in the call's context;
    after serialization, and before signing, the body gets the requests back. Anything else
    passed to ``batch_write_item`` goes through botocore untouched.
    """
    events = client.meta.events
    events.register("before-parameter-build.dynamodb.BatchWriteItem", _take_request_json)
    events.register("before-call.dynamodb.BatchWriteItem", _put_request_json)


def read_responses_as_json(client: Any) -> None:
    """Let ``batch_get_item`` hand back its answer as the DynamoDB JSON it arrived as.

    botocore's parser walks every attribute of every item returned (measured: about half of a
    verifying worker's CPU). A successful answer is decoded once with ``json.loads`` and handed
    back under :data:`~bulkwrites.dynamo.verify.RAW_RESPONSE` (binary as base64 text, as the
    ledger stores it), and botocore parses an empty body instead. Error answers are left to
    botocore, which raises its usual ``ClientError``; the CRC32 check reads the raw response.
    """
    client.meta.events.register("before-parse.dynamodb.BatchGetItem", _take_response_json)


def _take_response_json(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    if response_dict.get("status_code") != 200:
        return
    customized_response_dict[RAW_RESPONSE] = json.loads(response_dict["body"])
    response_dict["body"] = b"{}"


def _take_request_json(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    request_items = params.get("RequestItems")
    if not isinstance(request_items, dict):
        return
    taken = {table: requests.json() for table, requests in request_items.items() if isinstance(requests, CallRequests)}
    if taken:
        params["RequestItems"] = {table: [] if table in taken else value for table, value in request_items.items()}
        context[_CONTEXT_KEY] = taken


def _put_request_json(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    taken = context.pop(_CONTEXT_KEY, None)
    if not taken:
        return
    body = json.loads(params["body"])
    markers = {}
    for number, table in enumerate(taken):
        marker = f"\x00bulkwrites-requests-{number}\x00"  # cannot occur in a serialized body
        body["RequestItems"][table] = marker
        markers[json.dumps(marker)] = taken[table]
    text = json.dumps(body)
    for marker, requests_json in markers.items():
        text = text.replace(marker, requests_json, 1)
    params["body"] = text.encode("utf-8")


def streams_endpoint_url() -> str | None:
    """DynamoDB Streams' endpoint: its own variable, else DynamoDB's (DynamoDB Local serves both)."""
    return os.environ.get("AWS_ENDPOINT_URL_DYNAMODB_STREAMS") or endpoint_url()


def make_streams_client() -> Any:
    """A client of the ``dynamodbstreams`` API (DescribeStream, GetShardIterator, GetRecords).

    Reads keep botocore's ``standard`` retries: a throttled GetRecords is simply read again.
    """
    config = Config(
        region_name=region(),
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=5,
        read_timeout=30,
        tcp_keepalive=True,
    )
    return boto3.session.Session().client("dynamodbstreams", config=config, endpoint_url=streams_endpoint_url())


def reading_client() -> Any:
    """A shared client for admin reads (DescribeTable, ListTables), one per endpoint and region:
    a process whose environment points elsewhere later (a test's fault proxy) gets a new one."""
    return _reading_client(endpoint_url(), region())


@lru_cache(maxsize=4)
def _reading_client(endpoint: str | None, region_name: str) -> Any:
    return make_client(endpoint=endpoint)
