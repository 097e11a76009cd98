"""Prove it landed: read-back verification and repair, against DynamoDB Local.

Items are deleted and changed behind a job's back with boto3 straight against the table; the
verification must find exactly those (counts and keys), repair must make the table exact, and
the table is checked with a Scan, not only through the ledger.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from bulkwrites.models import (
    CheckOutcome,
    CheckSlice,
    Item,
    ItemCheck,
    ItemStatus,
    Job,
    JobStatus,
    Verification,
    VerificationStatus,
)
from bulkwrites.services import control, create, dispatch, running, verifying
from bulkwrites.services.errors import JobError
from faultproxy import FaultProxy
from tests.conftest import ROOT, TEST_QUEUE, run_cli, sigkill_worker, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

FAST_BACKOFF: dict[str, Any] = {"backoff_base": 0.002, "backoff_cap": 0.05}


def rows_csv(count: int, *, prefix: str = "k") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["pk", "n:N", "price:N", "tags:SS", "body"])
    for i in range(count):
        writer.writerow([f"{prefix}{i:05d}", i, f"{i}.50", f'["t{i % 3}", "all"]', f"row {i}"])
    return out.getvalue().encode()


def finished_job(table: str, count: int, run_worker: Any, **settings: Any) -> Job:
    job = create.job_create_from_file(
        upload=io.BytesIO(rows_csv(count)), file_name="rows.csv", table_name=table, **FAST_BACKOFF, **settings
    )
    control.job_start(job=job)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    return job


def verdicts(verification: Verification) -> dict[str, set[str]]:
    """Keys by outcome, from the checks themselves."""
    found: dict[str, set[str]] = {}
    for outcome, key in ItemCheck.objects.filter(verification=verification).values_list("outcome", "item__key"):
        found.setdefault(outcome, set()).add(pk_of(key))
    return found


def pk_of(key: Any) -> str:
    return str(key["pk"]["S"])


def counts(verification: Verification) -> tuple[int, int, int, int]:
    verification.refresh_from_db()
    return (
        verification.verified_items,
        verification.missing_items,
        verification.different_items,
        verification.errored_items,
    )


def tamper(dynamodb: Any, table: str) -> tuple[set[str], set[str]]:
    """Behind the job's back: delete seven items, change seven in three ways."""
    deleted = {f"k{i:05d}" for i in (0, 13, 77, 101, 150, 199, 250)}
    for key in deleted:
        dynamodb.delete_item(TableName=table, Key={"pk": {"S": key}})
    changed = {f"k{i:05d}" for i in (5, 6, 7, 40, 41, 120, 299)}
    for key in ("k00005", "k00006", "k00007"):  # another writer overwrote the value
        dynamodb.update_item(
            TableName=table,
            Key={"pk": {"S": key}},
            UpdateExpression="SET price = :p",
            ExpressionAttributeValues={":p": {"N": "999"}},
        )
    for key in ("k00040", "k00041"):  # an attribute added
        dynamodb.update_item(
            TableName=table,
            Key={"pk": {"S": key}},
            UpdateExpression="SET extra = :e",
            ExpressionAttributeValues={":e": {"BOOL": True}},
        )
    for key in ("k00120", "k00299"):  # a set member removed
        dynamodb.update_item(
            TableName=table,
            Key={"pk": {"S": key}},
            UpdateExpression="DELETE tags :t",
            ExpressionAttributeValues={":t": {"SS": ["all"]}},
        )
    return deleted, changed


def test_items_deleted_and_changed_behind_the_jobs_back_are_found_exactly_and_repaired(
    make_table: Any, dynamodb: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table()
    job = finished_job(table, 300, run_worker)
    expected_table = {item["pk"]["S"]: item for item in scan(table)}
    deleted, changed = tamper(dynamodb, table)

    verification = verifying.verification_create(job=job)
    run_worker()

    verification.refresh_from_db()
    assert verification.status == VerificationStatus.FINISHED
    assert (verification.total_items, verification.eligible_items, verification.sampled) == (300, 300, False)
    assert counts(verification) == (286, 7, 7, 0)
    found = verdicts(verification)
    assert found[CheckOutcome.MISSING] == deleted
    assert found[CheckOutcome.DIFFERENT] == changed
    assert verification.calls >= 3  # 100 keys a call
    assert verification.started_at is not None
    assert verification.finished_at is not None
    diffs = {
        pk_of(check.item.key): check.diff
        for check in ItemCheck.objects.filter(verification=verification, outcome=CheckOutcome.DIFFERENT)
    }
    assert diffs["k00005"] == [{"attribute": "price", "expected": '{"N":"5.5"}', "actual": '{"N":"999"}'}]
    assert diffs["k00040"] == [{"attribute": "extra", "expected": "(absent)", "actual": '{"BOOL":true}'}]
    assert (diffs["k00120"] or [{}])[0]["attribute"] == "tags"
    assert "repair" in Job.objects.get(pk=job.pk).available_actions()

    reopened = verifying.job_repair(job=job)
    assert reopened == 14
    run_worker()  # the job's new attempt, then the re-check it starts when it ends

    job.refresh_from_db()
    assert (job.status, job.succeeded_items, job.failed_items) == (JobStatus.SUCCEEDED, 300, 0)
    assert {item["pk"]["S"]: item for item in scan(table)} == expected_table  # the table is exact again
    recheck = Verification.objects.get(recheck_of=verification)
    assert recheck.status == VerificationStatus.FINISHED
    assert (recheck.total_items, *counts(recheck)) == (14, 14, 0, 0, 0)
    repaired = Item.objects.get(job=job, key={"pk": {"S": "k00005"}})
    assert repaired.status == ItemStatus.SUCCEEDED
    (earlier,) = repaired.history
    assert (earlier["status"], earlier["verdict"], earlier["verification"]) == (
        "succeeded",
        "different",
        verification.pk,
    )
    assert earlier["diff"][0]["attribute"] == "price"
    assert "repair" not in job.available_actions()  # the latest verification found nothing


def test_a_delete_job_whose_keys_were_recreated_is_reported_and_repaired(
    make_table: Any, dynamodb: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table()
    dynamodb.batch_write_item(
        RequestItems={table: [{"PutRequest": {"Item": {"pk": {"S": f"d{i:03d}"}}}} for i in range(20)]}
    )
    source = "pk\n" + "".join(f"d{i:03d}\n" for i in range(20))
    job = create.job_create_from_file(
        upload=io.BytesIO(source.encode()), file_name="gone.csv", table_name=table, operation="delete"
    )
    control.job_start(job=job)
    run_worker()
    assert scan(table) == []
    for key in ("d003", "d017"):  # someone wrote them again
        dynamodb.put_item(TableName=table, Item={"pk": {"S": key}, "back": {"S": "again"}})

    verification = verifying.verification_create(job=job)
    run_worker()

    assert counts(verification) == (18, 0, 2, 0)
    assert verdicts(verification)[CheckOutcome.DIFFERENT] == {"d003", "d017"}
    check = ItemCheck.objects.get(verification=verification, item__key={"pk": {"S": "d003"}})
    assert check.diff == [{"attribute": "(item)", "expected": "(absent)", "actual": "present (2 attributes)"}]

    assert verifying.job_repair(job=job) == 2
    run_worker()
    assert scan(table) == []
    recheck = Verification.objects.get(recheck_of=verification)
    assert (recheck.status, *counts(recheck)) == (VerificationStatus.FINISHED, 2, 0, 0, 0)


def test_a_sample_is_chosen_once_and_checked_at_random(make_table: Any, run_worker: Any) -> None:
    table = make_table()
    job = finished_job(table, 400, run_worker)

    verification = verifying.verification_create(job=job, sample_size=50)
    assert verifying.verification_stage(verification)
    chosen = list(ItemCheck.objects.filter(verification=verification).values_list("item_id", flat=True))
    assert verifying.verification_stage(verification)  # a second worker, or a restart: the same sample
    assert list(ItemCheck.objects.filter(verification=verification).values_list("item_id", flat=True)) == chosen
    run_worker()

    verification.refresh_from_db()
    assert (verification.total_items, verification.eligible_items, verification.sampled) == (50, 400, True)
    assert counts(verification) == (50, 0, 0, 0)
    positions = sorted(Item.objects.filter(pk__in=chosen).values_list("position", flat=True))
    assert positions != list(range(1, 51))  # not simply the first 50

    fraction = verifying.verification_create(job=job, sample_fraction=0.25)
    run_worker()
    fraction.refresh_from_db()
    assert (fraction.total_items, fraction.sampled, fraction.verified_items) == (100, True, 100)


def test_full_verification_up_to_the_threshold_a_sample_above(monkeypatch: pytest.MonkeyPatch) -> None:
    from bulkwrites import models

    verification = Verification()
    assert verification.sample_size_for(models.FULL_VERIFICATION_MAX_ITEMS) is None
    assert verification.sample_size_for(models.FULL_VERIFICATION_MAX_ITEMS + 1) == models.DEFAULT_SAMPLE_SIZE
    assert Verification(sample_fraction=1.0).sample_size_for(5_000_000) is None  # asked for all of them
    assert Verification(sample_fraction=0.1).sample_size_for(1001) == 101
    assert Verification(sample_size=10).sample_size_for(5) is None


def test_verify_when_done_starts_on_its_own_when_the_job_ends(make_table: Any, run_worker: Any) -> None:
    table = make_table()
    job = finished_job(table, 120, run_worker, verify_when_done=True)

    (verification,) = Verification.objects.filter(job=job)
    assert verification.status == VerificationStatus.FINISHED
    assert counts(verification) == (120, 0, 0, 0)


def test_verification_needs_an_ended_job_and_one_at_a_time(make_table: Any, run_worker: Any) -> None:
    table = make_table()
    job = create.job_create_from_file(upload=io.BytesIO(rows_csv(10)), file_name="rows.csv", table_name=table)
    with pytest.raises(JobError, match="verify it once it has ended"):
        verifying.verification_create(job=job)
    control.job_start(job=job)
    run_worker()
    verifying.verification_create(job=job)
    with pytest.raises(JobError, match="wait for it to end"):
        verifying.verification_create(job=job)
    with pytest.raises(JobError, match="sample fraction or a sample size, not both"):
        verifying.checked_settings({"sample_fraction": 0.5, "sample_size": 10})
    with pytest.raises(JobError, match="sample fraction"):
        verifying.checked_settings({"sample_fraction": 1.5})
    with pytest.raises(JobError, match="repair once it has finished"):
        verifying.job_repair(job=job)


def test_a_missing_table_fails_the_verification_then_resume_finishes_it(
    make_table: Any, dynamodb: Any, run_worker: Any
) -> None:
    table = make_table()
    job = finished_job(table, 30, run_worker)
    items = [i for page in dynamodb.get_paginator("scan").paginate(TableName=table) for i in page["Items"]]
    dynamodb.delete_table(TableName=table)  # the table was dropped after the job (the case)

    verification = verifying.verification_create(job=job)
    run_worker()
    verification.refresh_from_db()
    assert verification.status == VerificationStatus.FAILED
    assert verification.error_code == "ResourceNotFoundException"
    assert "does not exist" in verification.error_message
    assert verification.checked_items == 0

    dynamodb.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for item in items[:10]:  # restored from a backup that missed two thirds
        dynamodb.put_item(TableName=table, Item=item)
    verifying.verification_resume(verification=verification)
    run_worker()
    assert counts(verification) == (10, 20, 0, 0)


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], seed=3) as fault_proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", fault_proxy.url)
        yield fault_proxy


def test_reads_throttled_through_the_fault_proxy_lose_no_key(
    proxy: FaultProxy, make_table: Any, dynamodb: Any, run_worker: Any
) -> None:
    table = make_table()
    job = finished_job(table, 300, run_worker, concurrency=4)
    dynamodb.delete_item(TableName=table, Key={"pk": {"S": "k00042"}})
    # Every call comes back throttled or with unread keys, whatever the pace: the adaptive rate
    # falls to its floor, 2 % of the cap (uncapped, 1 RCU/s: 100-key calls would take minutes).
    proxy.configure(unprocessed_keys_share=0.4, throttle_share=0.15, seed=5)

    verification = verifying.verification_create(job=job, rate_limit_rcu=5000)
    run_worker()

    verification.refresh_from_db()
    stats = proxy.stats()
    assert verification.status == VerificationStatus.FINISHED
    assert counts(verification) == (299, 1, 0, 0)  # an unread key is never mistaken for a missing item
    assert verdicts(verification)[CheckOutcome.MISSING] == {"k00042"}
    assert stats["unprocessed_keys_returned"] > 100
    assert verification.unprocessed_returned == stats["unprocessed_keys_returned"]
    assert verification.throttled_calls >= stats["throttled_calls"] > 0
    assert not ItemCheck.objects.filter(verification=verification, outcome=CheckOutcome.PENDING).exists()


@pytest.mark.slow
def test_a_sigkilled_worker_mid_verification_is_replaced_and_nothing_is_counted_twice(
    proxy: FaultProxy, make_table: Any, dynamodb: Any, run_worker: Any, worker_process: Any, tmp_path: Any
) -> None:
    table = make_table()
    job = finished_job(table, 3000, run_worker, concurrency=1)
    for key in ("k00010", "k01500", "k02999"):
        dynamodb.delete_item(TableName=table, Key={"pk": {"S": key}})
    verification = verifying.verification_create(job=job)
    Verification.objects.filter(pk=verification.pk).update(concurrency=1, slice_size=200)
    proxy.configure(latency_ms=80)  # 1 call in flight of 100 keys: 30 calls, long enough to be killed
    fast_recovery = {
        "AWS_ENDPOINT_URL_DYNAMODB": proxy.url,
        "BULKWRITES_LEASE_SECONDS": "5",
        "BULKWRITES_STALL_SECONDS": "5",
        "BULKWRITES_SWEEP_SECONDS": "3",
    }
    victim = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", TEST_QUEUE],
        cwd=ROOT,
        env=worker_env(**fast_recovery),
        stdout=(tmp_path / "victim.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL reaches the forked work horse too
    )
    try:
        wait_for(
            lambda: Verification.objects.get(pk=verification.pk).checked_items >= 300,
            timeout=90,
            what="the first worker to read some items back",
        )
        killed = sigkill_worker(victim)
        assert len(killed) == 2  # the worker and the work horse reading the items back
        verification.refresh_from_db()
        assert verification.status == VerificationStatus.RUNNING
        assert 0 < verification.checked_items < 3000
        assert CheckSlice.objects.filter(verification=verification, done=False).exclude(leased_by="").exists()
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)

    killed_at = time.monotonic()
    worker_process(**fast_recovery)
    wait_for(
        lambda: Verification.objects.get(pk=verification.pk).status == VerificationStatus.FINISHED,
        timeout=150,
        interval=0.5,
        what="the verification to finish after the kill",
    )
    assert time.monotonic() - killed_at < 150
    assert counts(verification) == (2997, 3, 0, 0)
    # The second worker did it. RQ logs the success after the task returns, which is after the
    # verification is marked finished: read once at that moment, the line was not there yet
    # (CI, once, under load).
    wait_for(
        lambda: "Successfully completed bulkwrites verification" in (tmp_path / "worker-0.log").read_text(),
        timeout=30,
        what="the second worker to log the verification's end",
    )
    assert "finished" not in (tmp_path / "victim.log").read_text()  # each item counted once, whoever read it
    assert verification.total_items == 3000
    assert ItemCheck.objects.filter(verification=verification).exclude(outcome=CheckOutcome.PENDING).count() == 3000
    assert verdicts(verification)[CheckOutcome.MISSING] == {"k00010", "k01500", "k02999"}


def test_the_sweeper_re_enqueues_at_once_a_verification_whose_run_died(make_table: Any, run_worker: Any) -> None:
    job = finished_job(make_table(), 300, run_worker)
    verification = verifying.verification_create(job=job)
    assert verifying.verification_stage(verification)
    lease = timedelta(seconds=30)
    assert CheckSlice.objects.claim(verification.pk, worker="w-dead", lease=lease) is not None
    CheckSlice.objects.filter(leased_by="w-dead").update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    # It made progress a moment ago: the stall time (45 s) has not passed.
    assert verifying.recover_stalled_verifications() == [verification.pk]
    assert CheckSlice.objects.claim(verification.pk, worker="w-next", lease=lease) is not None
    assert verifying.recover_stalled_verifications() == []


def test_a_verification_whose_queued_run_redis_lost_gets_one_back_and_a_spare_stops(
    make_table: Any, run_worker: Any, rq_queue: Any
) -> None:
    # A run hands over by enqueueing its successor; a Redis flushed (or back empty) loses it, and
    # the verification waited out the stall time (45 s). The sweeper now counts its runs on both
    # sides, as it does a job's: a live lease in PostgreSQL, a run waiting in the queue.
    job = finished_job(make_table(), 300, run_worker)
    verification = verifying.verification_create(job=job)
    assert verifying.verification_stage(verification)
    Verification.objects.filter(pk=verification.pk).update(status=VerificationStatus.RUNNING)
    assert set(dispatch.queued_runs("run_verification")) == {verification.pk}
    assert verifying.restaff_verifications() == []  # its queued run counts

    rq_queue.empty()  # Redis flushed
    assert verifying.restaff_verifications() == [verification.pk]
    (queued,) = dispatch.queued_runs("run_verification")[verification.pk]
    assert dispatch.queued_runs() == {}  # a job's runs are counted apart
    assert verifying.restaff_verifications() == []

    # The run started, and holds a lease: still one run, whichever side sees it.
    rq_queue.empty()
    lease = timedelta(seconds=30)
    assert CheckSlice.objects.claim(verification.pk, worker=f"host:1:{queued}", lease=lease) is not None
    assert verifying.restaff_verifications() == []

    # A run enqueued by a race (the sweeper looked between a run's start and its first lease)
    # finds the verification staffed and stops before it claims anything.
    report = verifying.verification_run(
        verification.pk, worker=f"host:2:bulkwrites-run_verification-{verification.pk}-x"
    )
    assert report.stopped_by == running.STAFFED
    assert report.slices == 0
    assert set(CheckSlice.objects.holding(verification.pk)) == {f"host:1:{queued}"}


# --- the CLI --------------------------------------------------------------------------------


def test_cli_verify_and_repair(make_table: Any, dynamodb: Any, scan: Any, run_worker: Any, worker_process: Any) -> None:
    table = make_table()
    job = finished_job(table, 50, run_worker)
    dynamodb.delete_item(TableName=table, Key={"pk": {"S": "k00003"}})
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "k00004"}, "n": {"N": "4"}})
    worker_process(BULKWRITES_SWEEP_SECONDS="2")

    code, out, err = run_cli("verify", str(job.pk), "--wait")
    assert code == 3, err
    lines = out.strip().splitlines()
    assert lines[-1] == f"verify {job.pk}: 48 verified, 1 missing, 1 different"
    assert any(line.startswith("missing: pk=k00003") for line in lines)
    assert any(line.startswith("different: pk=k00004") and "price" in line for line in lines)

    code, out, err = run_cli("repair", str(job.pk), "--wait")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f"verify {job.pk}: 2 verified, 0 missing, 0 different"
    assert len(scan(table)) == 50

    code, out, err = run_cli("verify", str(job.pk), "--sample", "0.5", "--wait")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f"verify {job.pk}: 25 verified, 0 missing, 0 different"


def test_cli_verify_says_why_it_cannot_run(make_table: Any) -> None:
    table = make_table()
    job = create.job_create_from_file(upload=io.BytesIO(rows_csv(3)), file_name="rows.csv", table_name=table)
    code, _, err = run_cli("verify", str(job.pk))
    assert code == 1
    assert "verify it once it has ended" in err
    code, _, err = run_cli("verify", "999999")
    assert (code, "no job 999999" in err) == (1, True)
    code, _, err = run_cli("repair", str(job.pk))
    assert code == 1
    assert "repair it once it has ended" in err


def test_the_api_shows_the_verification_and_repairs(
    make_table: Any, dynamodb: Any, run_worker: Any, django_user_model: Any
) -> None:
    from django.contrib.auth.models import Permission
    from django.test import Client

    from bulkwrites.services import tokens

    table = make_table()
    job = finished_job(table, 20, run_worker)
    dynamodb.delete_item(TableName=table, Key={"pk": {"S": "k00002"}})
    verifying.verification_create(job=job)
    run_worker()
    user = django_user_model.objects.create_user("ops", "ops@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_job", "run_job"]))
    client = Client(headers={"Authorization": f"Bearer {tokens.token_create(user=user).secret}"})

    status = client.get(f"/api/jobs/{job.pk}").json()
    assert (status["verification"]["verified"], status["verification"]["missing"]) == (19, 1)
    assert "repair" in status["actions"]
    repaired = client.post(f"/api/jobs/{job.pk}/actions/repair")
    assert repaired.status_code == 200, repaired.content
    run_worker()
    job.refresh_from_db()
    assert job.latest_verification() is not None
    assert counts(Verification.objects.get(job=job, recheck_of__isnull=False)) == (1, 0, 0, 0)
