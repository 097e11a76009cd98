"""The job lifecycle walked as a whole: every transition from every status, against PostgreSQL.

``models.JOB_TRANSITIONS`` is the one statement of which status each change leaves from; these
tests hold every transition method to it, so a method that forgets its guard (or a table entry
that allows too much) fails here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from bulkwrites.dynamo.errors import CODE_DUPLICATE_KEY, CODE_INVALID_ROW
from bulkwrites.models import (
    JOB_TRANSITIONS,
    OPERATOR_ACTIONS,
    VERIFICATION_TRANSITIONS,
    Item,
    ItemPayload,
    ItemStatus,
    Job,
    JobStatus,
    SourceKind,
    Verification,
    VerificationStatus,
)
from bulkwrites.services import work

pytestmark = pytest.mark.django_db

QUEUE = "lifecycle-test"

# Each transition through the method that makes it, with the fields it must have written.
METHODS: dict[str, Callable[[Job], bool]] = {
    "start": lambda job: job.start(queue=QUEUE),
    "claim": Job.claim,
    "pause": Job.pause,
    "resume": lambda job: job.resume(queue=QUEUE),
    "retry_failed": lambda job: job.requeue_failed(queue=QUEUE, reopened=1),
    "cancel": Job.cancel,
    "repair": lambda job: job.requeue_for_repair(queue=QUEUE, reopened=1),
    "fail": lambda job: job.fail("Code", "the reason"),
    "succeed": Job.finish,
    "complete_with_failures": Job.finish,
}


def job_in(status: str, *, failed_items: int = 0) -> Job:
    return Job.objects.create(
        table_name="t",
        status=status,
        total_items=3,
        succeeded_items=1,
        failed_items=failed_items,
        error_code="Old",
        error_message="old reason",
    )


def test_every_transition_has_a_method() -> None:
    assert set(METHODS) == set(JOB_TRANSITIONS)


@pytest.mark.parametrize("name", list(JOB_TRANSITIONS))
@pytest.mark.parametrize("status", JobStatus.values)
def test_each_transition_moves_only_from_its_sources(name: str, status: str) -> None:
    rule = JOB_TRANSITIONS[name]
    # finish() decides between its two transitions by the failed counter.
    job = job_in(status, failed_items=1 if name in ("complete_with_failures", "retry_failed") else 0)

    moved = METHODS[name](job)

    stored = Job.objects.get(pk=job.pk)
    assert moved == (status in rule.sources)
    assert stored.status == (rule.target if moved else status)
    assert job.status == stored.status  # the instance follows what was stored
    if not moved:
        assert (stored.error_code, stored.failed_items) == ("Old", job.failed_items)
        return
    if name in ("start", "resume", "retry_failed", "repair"):
        assert stored.queue == QUEUE
    if name in ("resume", "retry_failed", "repair"):
        assert (stored.error_code, stored.error_message, stored.finished_at) == ("", "", None)
    if name == "repair":
        assert stored.succeeded_items == 0
    if name == "retry_failed":
        assert stored.failed_items == 0
    if name == "fail":
        assert (stored.error_code, stored.error_message) == ("Code", "the reason")
    if name in ("fail", "succeed", "complete_with_failures", "cancel"):
        assert stored.finished_at is not None
    if name == "claim":
        assert stored.started_at is not None


def test_a_second_claim_keeps_the_first_start_time() -> None:
    job = job_in(JobStatus.QUEUED)
    assert job.claim()
    first = Job.objects.get(pk=job.pk).started_at
    assert job.claim()
    assert Job.objects.get(pk=job.pk).started_at == first


@pytest.mark.parametrize(
    ("status", "pending", "failed", "offered"),
    [
        (JobStatus.DRAFT, 3, 0, ["start", "cancel"]),
        (JobStatus.QUEUED, 3, 0, ["pause", "cancel"]),
        (JobStatus.RUNNING, 3, 0, ["pause", "cancel"]),
        (JobStatus.PAUSED, 3, 0, ["resume", "cancel"]),
        (JobStatus.PAUSED, 0, 0, ["cancel"]),  # nothing left to resume
        (JobStatus.FAILED, 2, 1, ["resume", "retry_failed"]),
        (JobStatus.CANCELLED, 0, 0, []),
        (JobStatus.COMPLETED_WITH_FAILURES, 0, 2, ["retry_failed"]),
        (JobStatus.SUCCEEDED, 0, 0, []),
    ],
)
def test_the_actions_offered_come_from_the_table(status: str, pending: int, failed: int, offered: list[str]) -> None:
    job = Job.objects.create(status=status, total_items=10, succeeded_items=10 - pending - failed, failed_items=failed)
    if failed:
        failed_item(job, 1, "ThrottlingException")  # one a retry would send again
    assert job.available_actions() == [a for a in OPERATOR_ACTIONS if a in offered]


def test_repair_is_offered_once_the_latest_verification_found_mismatches() -> None:
    job = job_in(JobStatus.SUCCEEDED)
    assert "repair" not in job.available_actions()  # never verified
    verification = Verification.objects.create(job=job, status=VerificationStatus.FINISHED, verified_items=1)
    assert "repair" not in job.available_actions()  # verified, nothing wrong
    Verification.objects.filter(pk=verification.pk).update(missing_items=1)
    assert job.available_actions() == ["repair"]
    running = Verification.objects.create(job=job, status=VerificationStatus.RUNNING)
    assert "repair" not in job.available_actions()  # the latest one is not finished yet
    running.delete()
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)
    job.refresh_from_db()
    assert "repair" not in job.available_actions()


VERIFICATION_METHODS: dict[str, Callable[[Verification], bool]] = {
    "start": lambda v: v.start(queue=QUEUE),
    "claim": Verification.claim,
    "finish": Verification.finish,
    "fail": lambda v: v.fail("Code", "the reason"),
    "resume": lambda v: v.resume(queue=QUEUE),
    "cancel": Verification.cancel,
}


def test_every_verification_transition_has_a_method() -> None:
    assert set(VERIFICATION_METHODS) == set(VERIFICATION_TRANSITIONS)


@pytest.mark.parametrize("name", list(VERIFICATION_TRANSITIONS))
@pytest.mark.parametrize("status", VerificationStatus.values)
def test_each_verification_transition_moves_only_from_its_sources(name: str, status: str) -> None:
    rule = VERIFICATION_TRANSITIONS[name]
    verification = Verification.objects.create(job=job_in(JobStatus.SUCCEEDED), status=status, error_code="Old")
    moved = VERIFICATION_METHODS[name](verification)
    stored = Verification.objects.get(pk=verification.pk)
    assert moved == (status in rule.sources)
    assert stored.status == (rule.target if moved else status)
    assert verification.status == stored.status
    if moved and name in ("start", "resume"):
        assert stored.queue == QUEUE
    if moved and name in ("finish", "fail", "cancel"):
        assert stored.finished_at is not None
    if moved and name == "fail":
        assert (stored.error_code, stored.error_message) == ("Code", "the reason")
    if moved and name == "resume":
        assert (stored.error_code, stored.finished_at) == ("", None)


def failed_item(job: Job, position: int, code: str, *, payload: bool = True) -> Item:
    key = {"pk": {"S": f"k{position}"}}
    if payload:
        ItemPayload.objects.create(job=job, position=position, payload=key)
    return Item.objects.create(
        job=job,
        position=position,
        key=key,
        status=ItemStatus.FAILED,
        error_code=code,
        error_message="why",
    )


# Failures of every kind, by code: sorted around the codes never retried (DuplicateKey, InvalidRow),
# so every range the index probes of has_retryable_failures cover is tried, and both ends.
RETRYABLE = ["", "AccessDeniedException", "EndpointUnreachable", "ThrottlingException", "ValidationException"]
NOT_RETRIED = [(CODE_INVALID_ROW, False), (CODE_DUPLICATE_KEY, True), ("ThrottlingException", False)]


@pytest.mark.parametrize("retryable", [None, *RETRYABLE])
def test_retry_failed_is_offered_only_when_a_retry_would_reopen_something(retryable: str | None) -> None:
    """Finding: "Retry failed items" showed when every failure was an invalid row or a rejected duplicate."""
    job = Job.objects.create(status=JobStatus.COMPLETED_WITH_FAILURES, total_items=10, succeeded_items=5)
    for position, (code, payload) in enumerate(NOT_RETRIED, start=1):
        failed_item(job, position, code, payload=payload)  # the last: a failure whose row never had a payload
    if retryable is not None:
        failed_item(job, 9, retryable)
    Job.objects.filter(pk=job.pk).update(failed_items=Item.objects.filter(job=job).count())
    job.refresh_from_db()

    offered = "retry_failed" in job.available_actions()

    assert offered == (retryable is not None)
    with transaction.atomic():
        reopened = Item.objects.reopen_failed(job.pk)  # what control.job_retry_failed would do
        transaction.set_rollback(True)
    assert offered == bool(reopened)
    assert reopened == ([] if retryable is None else [9])


def test_a_job_cancelled_while_staging_stays_cancelled_when_its_source_fails() -> None:
    """Finding: ``mark_failed`` was unconditional, so a failing stage turned a cancelled job into failed."""
    job = Job.objects.create(table_name="t", source_kind=SourceKind.FILE, status=JobStatus.CANCELLED)

    assert not work.job_stage(job)  # no source file: unreadable

    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.CANCELLED, "")


def test_settings_are_checked_by_the_fields_validators() -> None:
    assert Job.check_settings({"batch_size": "20", "rate_limit_wcu": None, "duplicate_policy": "first"}) == {
        "batch_size": 20,
        "duplicate_policy": "first",
    }
    with pytest.raises(ValidationError) as info:
        Job.check_settings({"batch_size": 26, "concurrency": 0, "rate_limit_wcu": -1, "duplicate_policy": "x"})
    messages = " ".join(info.value.messages)
    for expected in ("batch size", "concurrency", "rate cap (WCU/s)", "duplicate policy"):
        assert expected in messages
    with pytest.raises(TypeError):
        Job.check_settings({"colour": "red"})
