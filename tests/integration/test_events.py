"""process_event against DynamoDB Local through the fault proxy, and the README's Lambda handler."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from bulkwrites.dynamo.client import make_client
from bulkwrites.dynamo.events import process_event_report
from faultproxy import FaultProxy
from tests.conftest import ROOT
from tests.lambda_events import batch, sqs_record, stream_record, stream_sequence


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy(upstream=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], seed=21) as fault_proxy:
        yield fault_proxy


def put_body(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    body = json.loads(record["body"])
    item = {"pk": {"S": body["pk"]}, "n": {"N": str(body["n"])}}
    if body.get("poison"):
        item["poison"] = {"S": "yes"}
    return [{"PutRequest": {"Item": item}}]


def test_an_sqs_batch_lands_through_throttling_and_only_the_poisoned_message_is_reported(
    proxy: FaultProxy, make_table: Any, scan: Any
) -> None:
    table = make_table()
    records = [sqs_record({"pk": f"k{n:03d}", "n": n}, message_id=f"m{n}") for n in range(200)]
    records[57] = sqs_record({"pk": "k057", "n": 57, "poison": True}, message_id="m57")
    # The first two calls are throttled for certain: which calls the random 10 % hits depends on
    # the order concurrent calls reach the proxy, and under load none was (make test, once).
    proxy.configure(
        unprocessed_share=0.3,
        throttle_share=0.1,
        outage_calls=2,
        outage_code="ThrottlingException",
        poison_attribute="poison",
        seed=2,
    )
    client = make_client(for_writing=True, endpoint=proxy.url)

    report = process_event_report(batch(*records), put_body, table=table, client=client)

    assert report.response == {"batchItemFailures": [{"itemIdentifier": "m57"}]}
    ((_identifier, outcome),) = report.failed
    assert outcome.error_code == "ValidationException"  # DynamoDB's reason, found by bisecting the call
    in_table = {item["pk"]["S"]: int(item["n"]["N"]) for item in scan(table)}
    assert in_table == {f"k{n:03d}": n for n in range(200) if n != 57}
    stats = proxy.stats()
    assert stats["unprocessed_items_returned"] > 0
    assert stats["throttled_calls"] > 0
    assert stats["poisoned_calls"] > 0


def readme_handler_source() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n(# handler\.py.*?)```", readme, re.S)
    assert match, "the README's Lambda handler example is missing"
    return match.group(1)


def test_the_readme_lambda_handler_scavenges_a_dynamodb_streams_batch(
    make_table: Any, scan: Any, dynamodb: Any
) -> None:
    target = make_table()
    for key in ("a", "b", "c"):
        dynamodb.put_item(TableName=target, Item={"pk": {"S": key}})
    event = batch(
        stream_record("REMOVE", {"pk": {"S": "a"}}, sequence_number=stream_sequence(1), old_image={"pk": {"S": "a"}}),
        stream_record("INSERT", {"pk": {"S": "z"}}, sequence_number=stream_sequence(2), new_image={"pk": {"S": "z"}}),
        stream_record("REMOVE", {"pk": {"S": "c"}}, sequence_number=stream_sequence(3), old_image={"pk": {"S": "c"}}),
    )

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 30_000

    namespace: dict[str, Any] = {}
    os.environ["TARGET_TABLE"] = target
    try:
        exec(compile(readme_handler_source(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
        assert namespace["handler"](event, Context()) == {"batchItemFailures": []}
    finally:
        del os.environ["TARGET_TABLE"]
    assert {item["pk"]["S"] for item in scan(target)} == {"b"}


def test_the_event_module_needs_no_django() -> None:
    """What a Lambda package holds: bulkwrites/dynamo and boto3; Django must not be needed."""
    code = "import sys; sys.modules['django'] = None; import bulkwrites.dynamo.events; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
