"""BatchWriteItem without botocore's per-call machinery, signed and answered as botocore would.

A writing worker's call threads spent ~0.9 ms of CPU per BatchWriteItem call of 25 items in
botocore (measured against the fault proxy's sink, one thread): the event hooks, the endpoint
ruleset, the serializer, the user-agent, the retry handler's bookkeeping and the parser run on
every call, though for one table every call differs from the last only in its body. The same call
built here, signed with botocore's own SigV4 signer and sent over the same transport, takes
~0.5-0.75 ms: the worker holds the GIL a third to half less per call.

What is kept from botocore, so that the writer sees no difference:

- **where and how a call goes**: the first call for each table goes through botocore as usual,
  and its signed request is kept as the template - the URL the endpoint ruleset chose, the
  headers botocore added, the region and service it signed for. Later calls reuse them, so a
  FIPS, dual-stack or account-based endpoint, a custom endpoint or a proxy is honoured as botocore
  resolved it;
- **signing**: ``RequestSigner.get_auth_instance`` gives botocore's SigV4 signer with the
  client's current credentials (refreshed as botocore refreshes them);
- **the error model**: an answer other than 200 is parsed by botocore's parser for the
  service's protocol and raised as the client's own ``ClientError`` subclass; transport errors
  are raised by the client's HTTP session as before (botocore's exceptions);
- **the answer**: a dict shaped as botocore returns it (``UnprocessedItems`` in boto3's wire
  form, binary as bytes, and ``ResponseMetadata``).

With the clock held still, a direct call puts on the wire byte for byte what botocore's path
puts there for the same requests (``tests/unit/dynamo/test_direct.py``). Two differences, on
purpose: handlers registered on the client's events (``before-send``, ``after-call``) see only
the calls botocore makes; and an HTTP 200 whose body is not a JSON object raises
:class:`NotDynamoDBAnswer` where botocore returns an answer with nothing unprocessed, which the
writer would have recorded as every request written.

Anything else passed to ``batch_write_item`` (other parameters, requests that are not
:class:`~bulkwrites.dynamo.writer.CallRequests`, several tables) and any client whose first call
was not signed with SigV4 goes through botocore unchanged. The client's own retries are off for
the writing client (``total_max_attempts=1``), so none are skipped here.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn

from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError
from botocore.parsers import create_parser

from .items import to_wire
from .writer import CallRequests

OPERATION = "BatchWriteItem"
DIRECT_PARAMETERS = frozenset({"RequestItems", "ReturnConsumedCapacity"})
# Headers botocore sets per call or at signing; the template keeps the others.
PER_CALL_HEADERS = frozenset(
    {"authorization", "x-amz-date", "x-amz-security-token", "content-length", "amz-sdk-invocation-id"}
)
# Headers computed from a body (checksums, compression): a template holding one would send the
# first call's value with every later body, so such a client keeps botocore's path.
BODY_HEADERS = frozenset({"content-md5", "content-encoding", "x-amz-content-sha256", "x-amz-sdk-checksum-algorithm"})
BODY_HEADER_PREFIX = "x-amz-checksum-"
SIGV4_ALGORITHM = "AWS4-HMAC-SHA256 "  # then Credential=..., SignedHeaders=..., Signature=...


class NotDynamoDBAnswer(BotoCoreError):  # type: ignore[misc]  # botocore is untyped
    """A 200 whose body is not a JSON object: the endpoint is not DynamoDB (a captive portal, a
    misconfigured proxy). The writer stops the job with this message rather than record anything."""

    fmt = "{endpoint_url} answered BatchWriteItem with HTTP 200 but not with DynamoDB's JSON: {start!r}"


@dataclass(frozen=True)
class CallTemplate:
    """What every BatchWriteItem call to one table shares, as botocore built its first one."""

    url: str
    headers: tuple[tuple[str, str], ...]  # set before signing, signed
    unsigned_headers: tuple[tuple[str, str], ...]  # added after signing, as botocore adds them
    signing_region: str
    signing_name: str


def template_of(request: Any) -> CallTemplate | None:
    """The template of a request botocore signed, or None if it was not signed with SigV4 or
    carries a header that depends on its body."""
    authorization = request.headers.get("Authorization")
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    if not isinstance(authorization, str) or not authorization.startswith(SIGV4_ALGORITHM):
        return None
    fields = dict(part.strip().partition("=")[::2] for part in authorization[len(SIGV4_ALGORITHM) :].split(","))
    scope = fields.get("Credential", "").split("/")  # access key / date / region / service / aws4_request
    if len(scope) < 5 or scope[-1] != "aws4_request" or "SignedHeaders" not in fields:
        return None
    signed = set(fields["SignedHeaders"].split(";"))
    headers: list[tuple[str, str]] = []
    unsigned: list[tuple[str, str]] = []
    for name, value in request.headers.items():
        if name.lower() in PER_CALL_HEADERS:
            continue
        if name.lower() in BODY_HEADERS or name.lower().startswith(BODY_HEADER_PREFIX):
            return None
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        (headers if name.lower() in signed else unsigned).append((name, text))
    return CallTemplate(request.url, tuple(headers), tuple(unsigned), signing_region=scope[-3], signing_name=scope[-2])


class DirectBatchWrite:
    """Stands in for a client's ``batch_write_item``; see the module's docstring."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.through_botocore = client.batch_write_item
        self.templates: dict[str, CallTemplate | None] = {}  # table -> template; None: always botocore
        self._capturing = threading.local()
        operation = client.meta.service_model.operation_model(OPERATION)
        self._output_shape = operation.output_shape
        self._parser = create_parser(client.meta.service_model.resolved_protocol)
        service_id = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"before-send.{service_id}.{OPERATION}", self._capture)

    def __call__(self, **params: Any) -> Any:
        table = self._direct_table(params)
        if table is None:
            return self.through_botocore(**params)
        if table not in self.templates:
            self._capturing.table = table
            try:
                return self.through_botocore(**params)
            finally:
                self._capturing.table = None
        template = self.templates[table]
        if template is None:
            return self.through_botocore(**params)
        return self._send(template, table, params)

    def _direct_table(self, params: dict[str, Any]) -> str | None:
        if not params.keys() <= DIRECT_PARAMETERS:
            return None
        request_items = params.get("RequestItems")
        if not isinstance(request_items, dict) or len(request_items) != 1:
            return None
        ((table, requests),) = request_items.items()
        return table if isinstance(table, str) and isinstance(requests, CallRequests) else None

    def _capture(self, request: Any, **_: Any) -> None:
        table = getattr(self._capturing, "table", None)
        if table is not None:
            self.templates[table] = template_of(request)

    def _send(self, template: CallTemplate, table: str, params: dict[str, Any]) -> dict[str, Any]:
        # Byte for byte the body botocore sends (json.dumps' separators around the requests' JSON).
        body = '{"RequestItems": {' + json.dumps(table) + ": " + params["RequestItems"][table].json() + "}"
        if "ReturnConsumedCapacity" in params:
            body += ', "ReturnConsumedCapacity": ' + json.dumps(params["ReturnConsumedCapacity"])
        request = AWSRequest(method="POST", url=template.url, data=(body + "}").encode("utf-8"))
        for name, value in template.headers:
            request.headers[name] = value
        signer = self.client._request_signer.get_auth_instance(template.signing_name, template.signing_region, "v4")
        signer.add_auth(request)
        for name, value in template.unsigned_headers:  # the User-Agent, botocore's retry headers
            request.headers[name] = value
        request.headers["amz-sdk-invocation-id"] = str(uuid.uuid4())
        response = self.client._endpoint.http_session.send(request.prepare())
        headers = {name.lower(): value for name, value in response.headers.items()}
        if response.status_code != 200:
            self._raise(response.status_code, headers, response.content)
        try:
            answer = json.loads(response.content)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            # botocore would take this for an answer with nothing unprocessed: every request of
            # the call would be recorded as written. Something other than DynamoDB answered.
            raise NotDynamoDBAnswer(endpoint_url=template.url, start=response.content[:200])
        unprocessed = answer.get("UnprocessedItems")
        if unprocessed:
            answer["UnprocessedItems"] = {
                name: [_request_to_wire(entry) for entry in entries] for name, entries in unprocessed.items()
            }
        answer["ResponseMetadata"] = {
            "RequestId": headers.get("x-amzn-requestid", ""),
            "HTTPStatusCode": response.status_code,
            "HTTPHeaders": headers,
            "RetryAttempts": 0,
        }
        return answer

    def _raise(self, status: int, headers: dict[str, str], body: bytes) -> NoReturn:
        parsed = self._parser.parse({"status_code": status, "headers": headers, "body": body}, self._output_shape)
        metadata = parsed.setdefault("ResponseMetadata", {})
        metadata.setdefault("HTTPStatusCode", status)
        metadata.setdefault("HTTPHeaders", headers)
        code = parsed.get("Error", {}).get("Code")
        raise self.client.exceptions.from_code(code)(parsed, OPERATION)


def _request_to_wire(entry: dict[str, Any]) -> dict[str, Any]:
    """One unprocessed request as botocore's parser returns it (binary attributes as bytes)."""
    if "PutRequest" in entry:
        return {"PutRequest": {"Item": to_wire(entry["PutRequest"]["Item"])}}
    if "DeleteRequest" in entry:
        return {"DeleteRequest": {"Key": to_wire(entry["DeleteRequest"]["Key"])}}
    return entry


def send_batch_writes_directly(client: Any) -> None:
    """Let a writing client's ``batch_write_item`` take the direct path (:class:`DirectBatchWrite`).

    The client's signer and endpoint are private to botocore; a client without them is left as
    it is.
    """
    if not hasattr(client, "_request_signer") or not hasattr(getattr(client, "_endpoint", None), "http_session"):
        return
    if isinstance(client.batch_write_item, DirectBatchWrite):
        return
    client.batch_write_item = DirectBatchWrite(client)
