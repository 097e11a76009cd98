"""Lambda event batches built the way AWS documents them (the Lambda developer guide's sample
events for SQS, Kinesis Data Streams and DynamoDB Streams), for tests of ``process_event``."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

REGION = "us-east-1"
QUEUE_ARN = f"arn:aws:sqs:{REGION}:123456789012:my-queue"
KINESIS_ARN = f"arn:aws:kinesis:{REGION}:123456789012:stream/lambda-stream"
TABLE_STREAM_ARN = f"arn:aws:dynamodb:{REGION}:123456789012:table/orders/stream/2024-01-01T00:00:00.000"


def sqs_record(body: Any, *, message_id: str | None = None) -> dict[str, Any]:
    text = body if isinstance(body, str) else json.dumps(body)
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": text,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
        },
        "messageAttributes": {},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": REGION,
    }


def kinesis_record(payload: Any, *, sequence_number: str, partition_key: str = "1") -> dict[str, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": sequence_number,
            "data": base64.b64encode(data).decode("ascii"),
            "approximateArrivalTimestamp": 1545084650.987,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000006:{sequence_number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": REGION,
        "eventSourceARN": KINESIS_ARN,
    }


def stream_record(
    event_name: str,
    keys: dict[str, Any],
    *,
    sequence_number: str,
    new_image: dict[str, Any] | None = None,
    old_image: dict[str, Any] | None = None,
    view_type: str = "NEW_AND_OLD_IMAGES",
) -> dict[str, Any]:
    change: dict[str, Any] = {"ApproximateCreationDateTime": 1428537600, "Keys": keys}
    if new_image is not None:
        change["NewImage"] = new_image
    if old_image is not None:
        change["OldImage"] = old_image
    change.update({"SequenceNumber": sequence_number, "SizeBytes": 26, "StreamViewType": view_type})
    return {
        "eventID": uuid.uuid4().hex,
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": REGION,
        "dynamodb": change,
        "eventSourceARN": TABLE_STREAM_ARN,
    }


def kinesis_sequence(n: int) -> str:
    """A Kinesis-looking sequence number (56 digits), increasing with n."""
    return f"49590338271490256608559692538361571095921575989136588{n:03d}"


def stream_sequence(n: int) -> str:
    return f"44215845000000000174504{n:05d}"


def batch(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}
