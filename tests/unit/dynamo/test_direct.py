"""The direct BatchWriteItem path must send and answer exactly as botocore's own path does.

The oracle is botocore itself: a writing client's first call to a table goes through botocore
and every later one through :class:`~bulkwrites.dynamo.direct.DirectBatchWrite`, so with the
clock and the invocation id held still, the two calls of the same requests must put the same
bytes on the wire, and the same answer must come back to the writer (or the same exception).
A loopback server (``test_http``'s) records what arrives and answers as each test scripts it.
"""

from __future__ import annotations

import datetime
import json
import socket
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from botocore import auth as botocore_auth
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo.direct import DirectBatchWrite, NotDynamoDBAnswer, template_of
from bulkwrites.dynamo.errors import ErrorKind, classify
from bulkwrites.dynamo.writer import BatchWriter, CallRequests, WriteRequest, WriterPolicy

from .test_http import Answer, Server, serve  # noqa: F401 - serve is a fixture

TABLE = "orders.v2"
ITEM: dict[str, dict[str, Any]] = {
    "pk": {"B": "AAEC/w=="},
    "sk": {"N": "-12.50"},
    "name": {"S": 'ü-1 "quoted" \\ back'},
    "doc": {"M": {"list": {"L": [{"S": "x"}, {"B": "AQ=="}]}}},
}
KEY = {"pk": ITEM["pk"], "sk": ITEM["sk"]}


def requests() -> list[WriteRequest]:
    return [
        WriteRequest(ref=1, key=KEY, item_json=json.dumps(ITEM, ensure_ascii=False), size=100),
        WriteRequest(ref=2, key={"pk": {"B": "Ag=="}, "sk": {"N": "2"}}),
    ]


def answering(status: int, body: bytes, *, request_id: str = "req-1") -> Answer:
    def answer(sock: socket.socket, _head: bytes, _body: bytes) -> bool:
        sock.sendall(
            f"HTTP/1.1 {status} X\r\nx-amzn-RequestId: {request_id}\r\n"
            f"Content-Type: application/x-amz-json-1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        return True

    return answer


def writing_client(url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    made = dynamo_client.make_client(for_writing=True, endpoint=url)
    made.sent_by_botocore = []  # what botocore's own path sent (the direct one emits no event)
    made.meta.events.register(
        "before-send.dynamodb.BatchWriteItem", lambda request, **_: made.sent_by_botocore.append(request)
    )
    return made


@pytest.fixture
def still(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock botocore signs with and the invocation id, held still for both paths."""
    moment = datetime.datetime(2026, 12, 3, 12, 0, 0)
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda *_, **__: moment)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID("12345678-1234-5678-1234-567812345678"))


def header_lines(head: bytes) -> tuple[bytes, set[bytes]]:
    request_line, *lines = head.split(b"\r\n")
    return request_line, set(lines)


def call(client: Any) -> Any:
    return client.batch_write_item(RequestItems={TABLE: CallRequests(requests())}, ReturnConsumedCapacity="TOTAL")


def test_the_direct_call_puts_the_bytes_botocore_puts_on_the_wire(
    serve: Callable[..., Server],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    still: None,
) -> None:
    server = serve(answering(200, b'{"UnprocessedItems":{}}'))
    made = writing_client(server.url, monkeypatch)

    call(made)  # botocore's path, which leaves the template
    call(made)  # the direct path

    assert isinstance(made.batch_write_item, DirectBatchWrite)
    assert len(made.sent_by_botocore) == 1
    assert header_lines(server.heads[1]) == header_lines(server.heads[0])
    assert server.bodies[1] == server.bodies[0]
    sent = json.loads(server.bodies[1])
    assert sent["RequestItems"][TABLE][0] == {"PutRequest": {"Item": ITEM}}
    assert b"X-Amz-Security-Token: token" in server.heads[1]


def test_an_answer_comes_back_as_botocore_returns_it(
    serve: Callable[..., Server],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer = {
        "UnprocessedItems": {TABLE: [{"PutRequest": {"Item": ITEM}}, {"DeleteRequest": {"Key": requests()[1].key}}]},
        "ConsumedCapacity": [{"TableName": TABLE, "CapacityUnits": 1.0}],
    }
    server = serve(answering(200, json.dumps(answer).encode()))
    made = writing_client(server.url, monkeypatch)

    through_botocore, direct = call(made), call(made)
    assert len(made.sent_by_botocore) == 1

    assert direct["UnprocessedItems"] == through_botocore["UnprocessedItems"]
    assert direct["UnprocessedItems"][TABLE][0]["PutRequest"]["Item"]["pk"] == {"B": b"\x00\x01\x02\xff"}
    assert direct["ConsumedCapacity"] == through_botocore["ConsumedCapacity"]
    for field in ("RequestId", "HTTPStatusCode", "RetryAttempts"):
        assert direct["ResponseMetadata"][field] == through_botocore["ResponseMetadata"][field]


def test_the_writer_matches_what_the_direct_path_returns_unprocessed(
    serve: Callable[..., Server],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Binary keys come back as bytes from both paths, and the writer knows its request by them."""
    unprocessed = {"UnprocessedItems": {TABLE: [{"DeleteRequest": {"Key": requests()[1].key}}]}}
    server = serve(answering(200, json.dumps(unprocessed).encode()))
    writer = BatchWriter(
        writing_client(server.url, monkeypatch), TABLE, policy=WriterPolicy(max_attempts=3), sleep=lambda _: None
    )

    result = writer.write(requests())

    # The first call wrote one request (progress), then three calls without progress: one call
    # through botocore, then three direct, each answered that the delete was not processed.
    assert len(server.heads) == 4
    assert {(o.ref, o.succeeded, o.attempts) for o in result.outcomes} == {(1, True, 1), (2, False, 4)}
    assert result.stats.unprocessed == 4


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (400, {"__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException", "message": "no table"},
         "ResourceNotFoundException"),
        (400, {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "slow down"},
         "ThrottlingException"),
        (400, {"__type": "com.amazon.coral.service#UnrecognizedClientException", "message": "who?"},
         "UnrecognizedClientException"),
        (500, {"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError", "message": "oops"},
         "InternalServerError"),
        (503, {}, "503"),
    ],
)  # fmt: skip
def test_an_error_is_raised_as_botocore_raises_it(
    serve: Callable[..., Server],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    body: dict[str, Any],
    code: str,
) -> None:
    server = serve(answering(status, json.dumps(body).encode() if body else b""))
    made = writing_client(server.url, monkeypatch)

    raised = []
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            call(made)
        raised.append(caught.value)
    through_botocore, direct = raised

    assert len(server.heads) == 2
    assert len(made.sent_by_botocore) == 1  # the second went direct (the template is kept at sending)
    assert type(direct) is type(through_botocore)
    assert direct.response["Error"] == through_botocore.response["Error"]
    assert direct.response["Error"]["Code"] == code
    assert classify(direct, table=TABLE) == classify(through_botocore, table=TABLE)


def test_a_200_that_is_not_dynamodbs_json_stops_the_job_instead_of_counting_as_written(
    serve: Callable[..., Server],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve(answering(200, b"<html>Sign in to the hotel wifi</html>"))
    made = writing_client(server.url, monkeypatch)

    call(made)  # botocore reads this as an answer with nothing unprocessed
    with pytest.raises(NotDynamoDBAnswer) as caught:
        call(made)

    error = classify(caught.value, table=TABLE)
    assert error.kind is ErrorKind.FATAL
    assert "not with DynamoDB's JSON" in error.message
    assert "hotel wifi" in error.message


def test_each_direct_call_is_signed_with_the_clients_current_credentials(
    serve: Callable[..., Server],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve(answering(200, b'{"UnprocessedItems":{}}'))
    made = writing_client(server.url, monkeypatch)
    call(made)

    made._request_signer._credentials = Credentials("rotated", "secret")  # as a refresh would
    call(made)

    assert b"Credential=test/" in server.heads[0]
    assert b"Credential=rotated/" in server.heads[1]
    assert b"X-Amz-Security-Token" not in server.heads[1]  # the new credentials have none


def test_other_calls_go_through_botocore(
    serve: Callable[..., Server],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve(answering(200, b'{"UnprocessedItems":{}}'))
    made = writing_client(server.url, monkeypatch)
    plain = [r.to_api() for r in requests()]

    made.batch_write_item(RequestItems={TABLE: plain})
    made.batch_write_item(RequestItems={TABLE: CallRequests(requests())}, ReturnItemCollectionMetrics="SIZE")
    made.batch_write_item(RequestItems={TABLE: CallRequests(requests()), "other": CallRequests(requests())})

    assert made.batch_write_item.templates == {}
    assert len(server.heads) == len(made.sent_by_botocore) == 3


def test_a_request_not_signed_with_sigv4_leaves_no_template() -> None:
    class Request:
        url = "https://dynamodb.us-east-1.amazonaws.com/"
        headers = {"X-Amz-Target": "DynamoDB_20120810.BatchWriteItem"}

    assert template_of(Request()) is None
    Request.headers = {"Authorization": "AWS4-ECDSA-P256-SHA256 Credential=a/b/c/d/aws4_request, ..."}
    assert template_of(Request()) is None
    Request.headers = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20261203/eu-west-1/dynamodb/aws4_request, "
        "SignedHeaders=host, Signature=00",
        "X-Amz-Date": "20261203T120000Z",
        "User-Agent": "Boto3/1",
    }
    template = template_of(Request())
    assert template is not None
    assert (template.signing_region, template.signing_name) == ("eu-west-1", "dynamodb")
    assert template.headers == ()  # only host is signed, and the transport sets it
    assert template.unsigned_headers == (("User-Agent", "Boto3/1"),)
    Request.headers["x-amz-checksum-crc32"] = "AAAAAA=="  # would be stale on the next body
    assert template_of(Request()) is None
