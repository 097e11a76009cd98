"""Requests sent as their stored JSON must reach DynamoDB exactly as botocore would send them.

No server: a ``before-send`` handler catches each prepared HTTP request (signed, ready to
go) and answers it, so the bodies of a client with and without ``send_requests_as_json``
can be compared.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo.writer import CallRequests, WriteRequest

TABLE = "orders.v2"
ENDPOINT = "http://dynamodb.invalid:8000"

ITEM: dict[str, dict[str, Any]] = {
    "pk": {"S": 'ü-1 "quoted" \\ back'},
    "sk": {"N": "-12.50"},
    "blob": {"B": "AAEC/w=="},
    "tags": {"SS": ["a", "b"]},
    "nums": {"NS": ["1", "2.5"]},
    "blobs": {"BS": ["AQ==", "Ag=="]},
    "flag": {"BOOL": False},
    "nothing": {"NULL": True},
    "doc": {"M": {"list": {"L": [{"S": "x"}, {"N": "3"}, {"M": {}}]}, "emoji": {"S": "\U0001f600"}}},
}


class Captured:
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def __call__(self, request: Any, **_: Any) -> AWSResponse:
        self.requests.append(request)
        body = json.dumps({"UnprocessedItems": {}, "ConsumedCapacity": [{"TableName": TABLE, "CapacityUnits": 2.0}]})
        response = AWSResponse(request.url, 200, {"x-amzn-requestid": "test"}, None)
        response._content = body.encode()
        return response


def client(*, as_json: bool, monkeypatch: pytest.MonkeyPatch, validate: bool = True) -> tuple[Any, Captured]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    # These tests look at botocore's path, which the direct one takes after a table's first call.
    monkeypatch.setattr(dynamo_client, "send_batch_writes_directly", lambda _client: None)
    if as_json:
        made = dynamo_client.make_client(for_writing=True, endpoint=ENDPOINT)
    else:
        config = Config(region_name="us-east-1", parameter_validation=validate)
        made = boto3.session.Session().client("dynamodb", config=config, endpoint_url=ENDPOINT)
    captured = Captured()
    made.meta.events.register("before-send.dynamodb", captured)
    return made, captured


def requests() -> list[WriteRequest]:
    key = {"pk": ITEM["pk"], "sk": ITEM["sk"]}
    return [
        WriteRequest(ref=1, key=key, item_json=json.dumps(ITEM, ensure_ascii=False), size=100),
        WriteRequest(ref=2, key={"pk": {"S": "k2"}, "sk": {"N": "2"}}, item={"pk": {"S": "k2"}, "sk": {"N": "2"}}),
        WriteRequest(ref=3, key={"pk": {"S": "gone"}, "sk": {"N": "0"}}),
    ]


def test_requests_sent_as_json_make_the_body_botocore_would_make(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, fast_sent = client(as_json=True, monkeypatch=monkeypatch)
    plain, plain_sent = client(as_json=False, monkeypatch=monkeypatch)

    fast.batch_write_item(RequestItems={TABLE: CallRequests(requests())}, ReturnConsumedCapacity="TOTAL")
    plain.batch_write_item(RequestItems={TABLE: [r.to_api() for r in requests()]}, ReturnConsumedCapacity="TOTAL")

    (fast_request,), (plain_request,) = fast_sent.requests, plain_sent.requests
    assert json.loads(fast_request.body) == json.loads(plain_request.body)
    assert json.loads(fast_request.body)["RequestItems"][TABLE][0] == {"PutRequest": {"Item": ITEM}}
    assert fast_request.headers["X-Amz-Target"] == b"DynamoDB_20120810.BatchWriteItem"
    assert int(fast_request.headers["Content-Length"]) == len(fast_request.body)
    # Signed over the body that is sent, not over the placeholder botocore serialized.
    assert b"Signature=" in fast_request.headers["Authorization"]


def test_a_client_without_the_hook_still_sends_call_requests_correctly(monkeypatch: pytest.MonkeyPatch) -> None:
    plain, sent = client(as_json=False, monkeypatch=monkeypatch, validate=False)  # as the writing client

    response = plain.batch_write_item(RequestItems={TABLE: CallRequests(requests())}, ReturnConsumedCapacity="TOTAL")

    assert response["ConsumedCapacity"][0]["CapacityUnits"] == 2.0
    sent_requests = json.loads(sent.requests[0].body)["RequestItems"][TABLE]
    assert sent_requests[0] == {"PutRequest": {"Item": ITEM}}
    assert sent_requests[2] == {"DeleteRequest": {"Key": {"pk": {"S": "gone"}, "sk": {"N": "0"}}}}


def test_other_parameters_and_plain_lists_pass_through_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, sent = client(as_json=True, monkeypatch=monkeypatch)

    fast.batch_write_item(
        RequestItems={TABLE: [{"DeleteRequest": {"Key": {"pk": {"S": "a"}, "sk": {"N": "1"}}}}]},
        ReturnConsumedCapacity="INDEXES",
        ReturnItemCollectionMetrics="SIZE",
    )

    body = json.loads(sent.requests[0].body)
    assert body == {
        "RequestItems": {TABLE: [{"DeleteRequest": {"Key": {"pk": {"S": "a"}, "sk": {"N": "1"}}}}]},
        "ReturnConsumedCapacity": "INDEXES",
        "ReturnItemCollectionMetrics": "SIZE",
    }


class Answering:
    """Answers each request with a fixed status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = json.dumps(body).encode()

    def __call__(self, request: Any, **_: Any) -> AWSResponse:
        import zlib

        headers = {"x-amzn-requestid": "test", "x-amz-crc32": str(zlib.crc32(self.body) & 0xFFFFFFFF)}
        response = AWSResponse(request.url, self.status, headers, None)
        response._content = self.body
        return response


def test_batch_get_item_answers_come_back_as_their_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from bulkwrites.dynamo.verify import RAW_RESPONSE

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    answer = {
        "Responses": {TABLE: [ITEM]},
        "UnprocessedKeys": {TABLE: {"Keys": [{"pk": {"S": "later"}, "sk": {"N": "1"}}], "ConsistentRead": True}},
        "ConsumedCapacity": [{"TableName": TABLE, "CapacityUnits": 1.0}],
    }
    made = dynamo_client.make_client(for_writing=True, endpoint=ENDPOINT)
    made.meta.events.register("before-send.dynamodb", Answering(200, answer))

    response = made.batch_get_item(RequestItems={TABLE: {"Keys": [{"pk": {"S": "a"}, "sk": {"N": "1"}}]}})

    assert response[RAW_RESPONSE] == answer  # binary stays base64 text, as the ledger stores it
    assert "Responses" not in response  # botocore did not walk the items

    error = {"__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException", "message": "no table"}
    failing = dynamo_client.make_client(for_writing=True, endpoint=ENDPOINT)
    failing.meta.events.register("before-send.dynamodb", Answering(400, error))
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as raised:
        failing.batch_get_item(RequestItems={TABLE: {"Keys": [{"pk": {"S": "a"}, "sk": {"N": "1"}}]}})
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_the_user_agent_built_once_is_the_one_botocore_builds_for_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    cached, cached_sent = client(as_json=True, monkeypatch=monkeypatch)
    monkeypatch.setattr(dynamo_client, "build_user_agent_once", lambda _client: None)
    rebuilt, rebuilt_sent = client(as_json=True, monkeypatch=monkeypatch)

    for made in (cached, rebuilt):
        for _ in range(3):
            made.batch_write_item(RequestItems={TABLE: CallRequests(requests())}, ReturnConsumedCapacity="TOTAL")

    agents = [r.headers["User-Agent"] for r in cached_sent.requests]
    assert agents == [r.headers["User-Agent"] for r in rebuilt_sent.requests]
    assert b"Botocore/" in agents[0]
    assert b" m/" in agents[0]  # the call's feature ids are in it
