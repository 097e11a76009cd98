"""faultproxy against a real DynamoDB Local: each fault is injected, then the table is read directly.

The upstream comes from ``FAULTPROXY_UPSTREAM`` or ``AWS_ENDPOINT_URL_DYNAMODB``; with neither set the
tests fail rather than skip. Tables are created and read with boto3 straight against the upstream;
writes go through the proxy with a client that makes exactly one attempt, so every injected fault
reaches the test. (botocore's ``max_attempts`` counts *retries*: ``max_attempts=1`` means two
attempts; ``total_max_attempts=1`` is one.)
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from faultproxy import FaultProxy, item_size, request_wcu

REPO_ROOT = Path(__file__).resolve().parents[2]
ONE_ATTEMPT = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=10)
KEY_LENGTH = 5  # keys are "k0000"
ONE_KB_PAYLOAD = 1024 - len("pk") - KEY_LENGTH - len("payload")  # an item of exactly 1,024 bytes


def _credentials() -> dict[str, str]:
    return {
        "region_name": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID") or "local",
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY") or "local",
    }


@pytest.fixture(scope="session")
def upstream() -> str:
    url = os.environ.get("FAULTPROXY_UPSTREAM") or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
    if not url:
        pytest.fail("set FAULTPROXY_UPSTREAM or AWS_ENDPOINT_URL_DYNAMODB to a running DynamoDB Local")
    return url


@pytest.fixture(scope="session")
def direct(upstream: str) -> Any:
    """A client straight to DynamoDB Local: the truth about what is in a table."""
    return boto3.client("dynamodb", endpoint_url=upstream, **_credentials())


@pytest.fixture
def table(direct: Any) -> Iterator[str]:
    name = f"faultproxy-{uuid.uuid4().hex[:12]}"
    direct.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    direct.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    yield name
    direct.delete_table(TableName=name)


@pytest.fixture
def proxy(upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream, seed=7) as running:
        yield running


def _client(url: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=url, config=ONE_ATTEMPT, **_credentials())


@pytest.fixture
def client(proxy: FaultProxy) -> Any:
    """A client through the proxy that makes a single attempt per call."""
    return _client(proxy.url)


def _key(number: int) -> str:
    return f"k{number:04d}"


def _put(key: str, payload: int = 10) -> dict[str, Any]:
    return {"PutRequest": {"Item": {"pk": {"S": key}, "payload": {"S": "x" * payload}}}}


def _delete(key: str) -> dict[str, Any]:
    return {"DeleteRequest": {"Key": {"pk": {"S": key}}}}


def _key_of(write_request: dict[str, Any]) -> str:
    if "PutRequest" in write_request:
        pk: str = write_request["PutRequest"]["Item"]["pk"]["S"]
    else:
        pk = write_request["DeleteRequest"]["Key"]["pk"]["S"]
    return pk


def _keys_in(direct: Any, table: str) -> set[str]:
    keys: set[str] = set()
    for page in direct.get_paginator("scan").paginate(TableName=table, ProjectionExpression="pk"):
        keys.update(item["pk"]["S"] for item in page["Items"])
    return keys


def _error_code(call: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_without_faults_everything_passes_through(proxy: FaultProxy, client: Any, direct: Any, table: str) -> None:
    requests = [_put(_key(i)) for i in range(25)]

    response = client.batch_write_item(RequestItems={table: requests})

    assert response["UnprocessedItems"] == {}
    assert _keys_in(direct, table) == {_key(i) for i in range(25)}
    assert client.get_item(TableName=table, Key={"pk": {"S": _key(3)}})["Item"]["pk"] == {"S": _key(3)}
    stats = proxy.stats()
    assert (stats["calls"], stats["batch_write_calls"], stats["items_forwarded"]) == (2, 1, 25)


def test_unprocessed_items_are_returned_and_never_reach_the_table(
    proxy: FaultProxy, client: Any, direct: Any, table: str
) -> None:
    doomed = [_key(100 + i) for i in range(5)]
    direct.batch_write_item(RequestItems={table: [_put(key) for key in doomed]})
    requests = [_put(_key(i)) for i in range(20)] + [_delete(key) for key in doomed]
    proxy.configure(unprocessed_share=0.4)

    response = client.batch_write_item(RequestItems={table: requests}, ReturnConsumedCapacity="TOTAL")

    unprocessed = response["UnprocessedItems"][table]
    assert len(unprocessed) == 10  # 0.4 x 25 is a whole number: no rounding draw
    assert all(request in requests for request in unprocessed)
    held_back = {_key_of(request) for request in unprocessed}
    forwarded = {_key_of(request) for request in requests} - held_back
    written_puts = {_key(i) for i in range(20)} & forwarded
    kept_doomed = set(doomed) & held_back  # their deletes were held back, so they must still exist
    assert _keys_in(direct, table) == written_puts | kept_doomed
    assert response["ConsumedCapacity"][0]["TableName"] == table  # upstream's part of the answer survives
    stats = proxy.stats()
    assert stats["unprocessed_items_returned"] == 10
    assert stats["items_forwarded"] == 15


def test_an_unprocessed_share_of_one_holds_back_the_whole_call(
    proxy: FaultProxy, client: Any, direct: Any, table: str
) -> None:
    requests = [_put(_key(i)) for i in range(3)]
    proxy.configure(unprocessed_share=1.0)

    response = client.batch_write_item(RequestItems={table: requests})

    assert response["UnprocessedItems"] == {table: requests}
    assert _keys_in(direct, table) == set()
    assert proxy.stats()["items_forwarded"] == 0


def test_a_sink_answers_writes_as_written_without_writing(
    proxy: FaultProxy, client: Any, direct: Any, table: str
) -> None:
    requests = [_put(_key(i), payload=2000) for i in range(20)] + [_delete(_key(100 + i)) for i in range(5)]
    proxy.configure(sink=True)

    response = client.batch_write_item(RequestItems={table: requests}, ReturnConsumedCapacity="TOTAL")

    assert response["UnprocessedItems"] == {}
    assert response["ConsumedCapacity"] == [{"TableName": table, "CapacityUnits": 20 * 2.0 + 5 * 1.0}]
    assert _keys_in(direct, table) == set()  # nothing went upstream
    client.put_item(TableName=table, Item={"pk": {"S": "other"}})  # other operations still do
    assert _keys_in(direct, table) == {"other"}
    assert proxy.stats()["items_forwarded"] == 25


def test_a_sink_still_applies_the_other_faults_first(proxy: FaultProxy, client: Any, table: str) -> None:
    requests = [_put(_key(i)) for i in range(25)]
    proxy.configure(sink=True, unprocessed_share=0.4)

    response = client.batch_write_item(RequestItems={table: requests})

    assert len(response["UnprocessedItems"][table]) == 10
    assert "ConsumedCapacity" not in response
    proxy.configure(sink=True, throttle_share=1.0)
    assert _error_code(lambda: client.batch_write_item(RequestItems={table: requests}))[0] == (
        "ProvisionedThroughputExceededException"
    )


def _get_keys(table: str, keys: list[str]) -> dict[str, Any]:
    return {table: {"Keys": [{"pk": {"S": key}} for key in keys], "ConsistentRead": True}}


def test_unprocessed_keys_are_returned_unread(proxy: FaultProxy, client: Any, direct: Any, table: str) -> None:
    direct.batch_write_item(RequestItems={table: [_put(_key(i)) for i in range(20)]})
    asked = [_key(i) for i in range(25)]  # five of them do not exist
    proxy.configure(unprocessed_keys_share=0.4)

    response = client.batch_get_item(RequestItems=_get_keys(table, asked), ReturnConsumedCapacity="TOTAL")

    spec = response["UnprocessedKeys"][table]
    held_back = [key["pk"]["S"] for key in spec["Keys"]]
    assert len(held_back) == 10  # 0.4 x 25: no rounding draw
    assert spec["ConsistentRead"] is True  # returned with the request's own settings, as DynamoDB does
    read = {item["pk"]["S"] for item in response["Responses"][table]}
    assert read == {_key(i) for i in range(20)} - set(held_back)  # a held-back key is never read
    assert response["ConsumedCapacity"][0]["TableName"] == table
    stats = proxy.stats()
    assert (stats["batch_get_calls"], stats["unprocessed_keys_returned"], stats["keys_forwarded"]) == (1, 10, 15)

    proxy.configure()
    again = client.batch_get_item(RequestItems={table: spec})
    assert {item["pk"]["S"] for item in again["Responses"][table]} == {k for k in held_back if k < _key(20)}


def test_an_unprocessed_keys_share_of_one_reads_nothing(proxy: FaultProxy, client: Any, table: str) -> None:
    proxy.configure(unprocessed_keys_share=1.0)

    response = client.batch_get_item(RequestItems=_get_keys(table, ["a", "b"]))

    assert response["Responses"] == {table: []}
    assert [k["pk"]["S"] for k in response["UnprocessedKeys"][table]["Keys"]] == ["a", "b"]
    assert proxy.stats()["keys_forwarded"] == 0


def test_call_faults_reach_batch_get_item_too(proxy: FaultProxy, client: Any, table: str) -> None:
    proxy.configure(throttle_share=1.0, throttle_code="ThrottlingException")

    assert _error_code(lambda: client.batch_get_item(RequestItems=_get_keys(table, ["a"]))) == (
        "ThrottlingException",
        400,
    )
    assert client.get_item(TableName=table, Key={"pk": {"S": "a"}}).get("Item") is None  # not a batch call
    assert proxy.stats()["throttled_calls"] == 1


@pytest.mark.parametrize(
    "code", ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"]
)
def test_throttled_calls_raise_their_code_and_write_nothing(
    proxy: FaultProxy, client: Any, direct: Any, table: str, code: str
) -> None:
    proxy.configure(throttle_share=1.0, throttle_code=code)

    raised = _error_code(lambda: client.batch_write_item(RequestItems={table: [_put(_key(1))]}))

    assert raised == (code, 400)
    assert _keys_in(direct, table) == set()
    assert client.describe_table(TableName=table)["Table"]["TableName"] == table  # not a BatchWriteItem
    stats = proxy.stats()
    assert (stats["throttled_calls"], stats["items_forwarded"]) == (1, 0)


@pytest.mark.parametrize(("status", "code"), [(500, "InternalServerError"), (503, "ServiceUnavailableException")])
def test_server_errors_raise_their_code_and_write_nothing(
    proxy: FaultProxy, client: Any, direct: Any, table: str, status: int, code: str
) -> None:
    proxy.configure(server_error_share=1.0, server_error_status=status)

    raised = _error_code(lambda: client.batch_write_item(RequestItems={table: [_put(_key(1))]}))

    assert raised == (code, status)
    assert _keys_in(direct, table) == set()
    assert proxy.stats()["server_errors"] == 1


def test_all_operations_extends_faults_beyond_batch_write(proxy: FaultProxy, client: Any, table: str) -> None:
    proxy.configure(throttle_share=1.0, throttle_code="ThrottlingException", all_operations=True)

    assert _error_code(lambda: client.get_item(TableName=table, Key={"pk": {"S": "a"}})) == (
        "ThrottlingException",
        400,
    )


def test_a_dropped_connection_after_the_write_raises_yet_the_items_are_stored(
    proxy: FaultProxy, client: Any, direct: Any, table: str
) -> None:
    requests = [_put(_key(i)) for i in range(5)]
    proxy.configure(drop_after_write_share=1.0)

    with pytest.raises(ConnectionClosedError):
        client.batch_write_item(RequestItems={table: requests})

    assert _keys_in(direct, table) == {_key(i) for i in range(5)}
    assert proxy.stats()["dropped"] == 1
    proxy.configure()
    assert client.batch_write_item(RequestItems={table: requests})["UnprocessedItems"] == {}  # the replay


def test_latency_delays_each_call(proxy: FaultProxy, client: Any, table: str) -> None:
    proxy.configure(latency_ms=150)

    started = time.monotonic()
    client.batch_write_item(RequestItems={table: [_put(_key(1))]})

    assert time.monotonic() - started >= 0.15  # a lower bound: the sleep happens before forwarding


def test_outages_reject_calls_by_count_and_by_deadline(proxy: FaultProxy, client: Any, direct: Any, table: str) -> None:
    def write(number: int) -> Any:
        return client.batch_write_item(RequestItems={table: [_put(_key(number))]})

    proxy.configure(outage_calls=2)
    assert _error_code(lambda: write(1)) == ("ServiceUnavailableException", 503)
    assert _error_code(lambda: write(2)) == ("ServiceUnavailableException", 503)
    write(3)

    # A deadline long enough that the next call surely falls inside it, however slow the machine;
    # then wait for the deadline itself (read back from the proxy) rather than a guessed sleep.
    proxy.outage(30.0, code="ThrottlingException")
    assert _error_code(lambda: write(4)) == ("ThrottlingException", 400)
    proxy.outage(0.3)  # a new, near deadline
    time.sleep(max(0.0, proxy.config["outage_until"] - time.time()) + 0.01)
    write(5)

    assert _keys_in(direct, table) == {_key(3), _key(5)}
    stats = proxy.stats()
    assert (stats["outage_rejections"], stats["server_errors"], stats["throttled_calls"]) == (3, 2, 1)


def test_the_same_seed_injects_the_same_faults(upstream: str, direct: Any, table: str) -> None:
    def outcomes(seed: int) -> list[Any]:
        with FaultProxy(upstream, seed=seed) as proxy:
            proxy.configure(throttle_share=0.3, unprocessed_share=0.3)
            client = _client(proxy.url)
            seen: list[Any] = []
            for call in range(12):
                requests = [_put(_key(call * 10 + i)) for i in range(10)]
                try:
                    response = client.batch_write_item(RequestItems={table: requests})
                except ClientError as exc:
                    seen.append(exc.response["Error"]["Code"])
                else:
                    seen.append(sorted(_key_of(r) for r in response["UnprocessedItems"].get(table, [])))
            return seen

    first = outcomes(11)

    assert outcomes(11) == first
    assert "ProvisionedThroughputExceededException" in first
    assert any(isinstance(outcome, list) and outcome for outcome in first)


def test_concurrent_writers_under_every_fault_still_land_every_item(proxy: FaultProxy, direct: Any, table: str) -> None:
    writers, per_writer = 6, 200
    proxy.configure(
        unprocessed_share=0.3,
        throttle_share=0.1,
        server_error_share=0.05,
        server_error_status=503,
        drop_after_write_share=0.05,
        capacity_wcu=5000,
        latency_jitter_ms=3,
    )
    client = boto3.client(
        "dynamodb",
        endpoint_url=proxy.url,
        config=Config(retries={"total_max_attempts": 1}, max_pool_connections=writers),
        **_credentials(),
    )

    def write_all(writer: int) -> None:
        pending = [_put(f"w{writer}-{_key(i)}") for i in range(per_writer)]
        for _ in range(2000):  # bounded: the shares above make progress certain long before
            if not pending:
                return
            batch, pending = pending[:25], pending[25:]
            try:
                response = client.batch_write_item(RequestItems={table: batch})
            except (ClientError, ConnectionClosedError):
                pending = batch + pending
            else:
                pending = response["UnprocessedItems"].get(table, []) + pending

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write_all, range(writers)))

    assert len(_keys_in(direct, table)) == writers * per_writer
    stats = proxy.stats()
    assert stats["unprocessed_items_returned"] > 0
    assert stats["throttled_calls"] + stats["server_errors"] + stats["dropped"] > 0
    assert stats["items_forwarded"] >= writers * per_writer  # replays after drops are forwarded again
    assert stats["wcu_charged"] == stats["items_forwarded"]  # small items: 1 WCU each, counted once


def test_capacity_limit_paces_writes_to_the_configured_rate(
    proxy: FaultProxy, client: Any, direct: Any, table: str
) -> None:
    rate, total = 50, 300
    requests = [_put(_key(i), ONE_KB_PAYLOAD) for i in range(total)]
    assert {request_wcu(request) for request in requests} == {1}
    proxy.configure(capacity_wcu=rate)

    pending = list(requests)
    started = time.monotonic()
    while pending:
        batch, pending = pending[:25], pending[25:]
        try:
            response = client.batch_write_item(RequestItems={table: batch})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ProvisionedThroughputExceededException":
                raise
            pending = batch + pending
            time.sleep(0.05)
            continue
        pending = response["UnprocessedItems"].get(table, []) + pending
    elapsed = time.monotonic() - started

    assert len(_keys_in(direct, table)) == total
    stats = proxy.stats()
    assert stats["wcu_charged"] == total  # every item paid for exactly once, at 1 WCU
    assert stats["items_forwarded"] == total
    assert stats["unprocessed_items_returned"] > 0
    assert stats["batch_write_calls"] > total / 25  # the limit made the writer come back for more
    # The bucket starts full (one second of burst) and refills at `rate`: whatever the machine's
    # speed, writing `total` units cannot take less than this.
    assert elapsed >= (total - rate) / rate * 0.99


def test_capacity_rejects_a_call_it_cannot_pay_for_at_all(
    proxy: FaultProxy, client: Any, direct: Any, table: str
) -> None:
    proxy.configure(capacity_wcu=0.2, capacity_burst_seconds=5)  # one unit, refilled in 5 s

    first = client.batch_write_item(RequestItems={table: [_put(_key(i)) for i in range(3)]})
    raised = _error_code(lambda: client.batch_write_item(RequestItems={table: [_put(_key(9))]}))

    assert first["UnprocessedItems"] == {table: [_put(_key(1)), _put(_key(2))]}
    assert raised == ("ProvisionedThroughputExceededException", 400)
    assert _keys_in(direct, table) == {_key(0)}
    assert proxy.stats()["wcu_charged"] == 1


def test_a_poisoned_batch_is_rejected_whole(proxy: FaultProxy, client: Any, direct: Any, table: str) -> None:
    proxy.configure(poison_attribute="flag", poison_value="poison")
    clean = {"PutRequest": {"Item": {"pk": {"S": "clean"}, "flag": {"S": "fine"}}}}
    poisoned = {"PutRequest": {"Item": {"pk": {"S": "bad"}, "flag": {"S": "poison"}}}}

    raised = _error_code(lambda: client.batch_write_item(RequestItems={table: [clean, poisoned]}))
    client.batch_write_item(RequestItems={table: [clean]})

    assert raised == ("ValidationException", 400)
    assert _keys_in(direct, table) == {"clean"}
    assert proxy.stats()["poisoned_calls"] == 1


def test_settings_are_checked(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unprocessed_share"):
        proxy.configure(unprocessed_share=1.5)
    with pytest.raises(ValueError, match="throttle_code"):
        proxy.configure(throttle_code="SlowDown")
    with pytest.raises(TypeError):
        proxy.configure(unprocesed_share=0.5)


def test_item_size_follows_the_developer_guide() -> None:
    assert item_size({"pk": {"S": "abc"}}) == 5
    assert item_size({"n": {"N": "123.45"}}) == 1 + 4  # 5 significant digits: 3 bytes + 1
    assert item_size({"n": {"N": "1000"}}) == 1 + 2  # trailing zeros are not significant
    assert item_size({"b": {"B": "AAECAw=="}}) == 1 + 4  # raw bytes, not the base64 length
    assert item_size({"f": {"BOOL": True}, "z": {"NULL": True}}) == 4
    assert item_size({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}) == 1 + 3 + (2 + 1) + (2 + 1)
    assert item_size({"m": {"M": {"k": {"S": "v"}}}}) == 1 + 3 + (1 + 1 + 1)
    assert item_size({"s": {"SS": ["a", "bb"]}}) == 1 + 3
    assert request_wcu(_put(_key(1), ONE_KB_PAYLOAD)) == 1
    assert request_wcu(_put(_key(1), ONE_KB_PAYLOAD + 1)) == 2
    assert request_wcu(_delete(_key(1))) == 1


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output from the proxy process within {timeout} s")
    return process.stdout.readline()


def _control(url: str, action: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """GET (no body) or POST (a JSON body) to the proxy's control path."""
    connection = http.client.HTTPConnection(urlsplit(url).netloc, timeout=10)
    try:
        if body is None:
            connection.request("GET", f"/__faultproxy__/{action}")
        else:
            connection.request("POST", f"/__faultproxy__/{action}", json.dumps(body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_proxy_process_is_driven_over_http(upstream: str, direct: Any, table: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "faultproxy", "--upstream", upstream, "--port", "0"]
    command += ["--seed", "1", "--throttle-share", "1", "--throttle-code", "ThrottlingException"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = _read_line(process, timeout=15)
        assert line.startswith("faultproxy listening on http://"), line
        url = line.rsplit(" ", 1)[1].strip()
        client = _client(url)

        def write() -> Any:
            return client.batch_write_item(RequestItems={table: [_put(_key(i)) for i in range(4)]})

        assert _error_code(write) == ("ThrottlingException", 400)  # from the command line options
        status, config = _control(url, "config", {"unprocessed_share": 0.5})
        assert status == 200
        assert (config["unprocessed_share"], config["throttle_share"]) == (0.5, 0)
        assert len(write()["UnprocessedItems"][table]) == 2
        status, stats = _control(url, "stats")
        assert status == 200
        assert (stats["throttled_calls"], stats["unprocessed_items_returned"], stats["items_forwarded"]) == (
            1,
            2,
            2,
        )
        assert _control(url, "reset", {})[1]["calls"] == 0
        assert _control(url, "config", {"unprocessed_share": 3})[0] == 400
        assert _control(url, "nonsense")[0] == 404
        assert len(_keys_in(direct, table)) == 2
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_upstream_errors_pass_through_and_capacity_is_given_back(proxy: FaultProxy, client: Any, table: str) -> None:
    proxy.configure(capacity_wcu=100)
    wrong_key = {"PutRequest": {"Item": {"pk": {"N": "1"}}}}  # the table's key is a string

    raised = _error_code(lambda: client.batch_write_item(RequestItems={table: [wrong_key, _put("a")]}))

    assert raised == ("ValidationException", 400)  # DynamoDB Local's own answer
    assert proxy.stats()["wcu_charged"] == 0
