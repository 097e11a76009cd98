"""An operator's action while the job queue (Redis) does not answer: a clear refusal, nothing half done.

Before, starting a job with Redis down committed the job as queued and then failed on the
enqueue: a stack trace on the command line, an error page in the admin, a 500 from the API, and
a job that waited for the sweeper's stall time. Redis here is really unreachable: the test
queue points at a port nobody listens on, or at a socket that accepts and never answers.
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import reverse

from bulkwrites.dependencies import REDIS_DOWN
from bulkwrites.models import Job, JobStatus, StreamRule, Verification
from bulkwrites.services import control, create, deletion, dispatch, verifying
from bulkwrites.services.errors import QueueUnavailable
from bulkwrites.services.streams import rules
from tests.api_helpers import api_client, ledger_job, staff_user, token_for
from tests.conftest import TEST_QUEUE, run_cli
from tests.integration.test_admin_streams import a_rule

pytestmark = pytest.mark.django_db(transaction=True)


def queue_at(url: str) -> override_settings:
    return override_settings(RQ_QUEUES={TEST_QUEUE: {"URL": url, "DEFAULT_TIMEOUT": 900}})


@pytest.fixture
def redis_refuses() -> Iterator[None]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with queue_at(f"redis://127.0.0.1:{port}/0"):
        yield


def test_starting_a_job_is_refused_and_the_job_stays_a_draft(redis_refuses: None) -> None:
    job = ledger_job(JobStatus.DRAFT)
    with pytest.raises(QueueUnavailable, match=r"The job queue \(Redis\) does not answer.*start the job"):
        control.job_start(job=job)
    assert Job.objects.get(pk=job.pk).status == JobStatus.DRAFT

    paused = ledger_job(JobStatus.PAUSED)
    with pytest.raises(QueueUnavailable, match="resume the job"):
        control.job_resume(job=paused)
    assert Job.objects.get(pk=paused.pk).status == JobStatus.PAUSED

    ended = ledger_job()  # completed with one failed item
    with pytest.raises(QueueUnavailable, match="send the failed items again"):
        control.job_retry_failed(job=ended)
    with pytest.raises(QueueUnavailable, match="read the job back"):
        verifying.verification_create(job=ended)
    assert not Verification.objects.filter(job=ended).exists()
    assert Job.objects.get(pk=ended.pk).status == JobStatus.COMPLETED_WITH_FAILURES


def test_the_command_line_refuses_before_it_makes_a_job(redis_refuses: None, tmp_path: Any) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("pk,n:N\na,1\n")
    before = Job.objects.count()
    with pytest.raises(CommandError, match=r"does not answer, so no worker can be asked to start the job"):
        run_cli("load", str(source), "--table", "anything")
    assert Job.objects.count() == before  # no draft left behind


def test_the_api_answers_503_with_the_reason(redis_refuses: None) -> None:
    user = staff_user("ops", "run_job", "view_job")
    job = ledger_job(JobStatus.DRAFT)
    response = api_client(token_for(user)).post(f"/api/jobs/{job.pk}/actions/start")
    assert response.status_code == 503
    assert "does not answer" in response.json()["detail"]
    assert Job.objects.get(pk=job.pk).status == JobStatus.DRAFT


def test_what_needs_no_worker_now_goes_on_and_the_ledger_keeps_it(
    redis_refuses: None, caplog: pytest.LogCaptureFixture
) -> None:
    running = ledger_job(JobStatus.RUNNING)
    control.job_set_rate(job=running, wcu_per_second=250)  # every run writes the ledger's cap back
    assert Job.objects.get(pk=running.pk).rate_limit_wcu == 250

    assert deletion.jobs_delete(job_ids=[running.pk]) == [running.pk]  # the sweeper reclaims its rows
    assert not Job.objects.filter(pk=running.pk).exists()  # gone from every page at once
    assert Job.all_objects.being_deleted().filter(pk=running.pk).exists()  # its rows wait for the sweeper

    # Redis gone between the check and the commit: the change stands, the log says what waits.
    with caplog.at_level(logging.WARNING, logger="bulkwrites.services.dispatch"):
        dispatch.enqueue_run(running.pk, robust=True)
    assert "the workers' sweeper enqueues it from the ledger once Redis is back" in caplog.text
    with pytest.raises(REDIS_DOWN):  # a worker's hand-over wants the error: it retries
        dispatch.enqueue_run(running.pk)


def test_a_redis_that_hangs_is_refused_within_the_checks_timeout(make_table: Any) -> None:
    job = create.job_create_from_file(upload=io.BytesIO(b"pk,n:N\na,1\n"), file_name="r.csv", table_name=make_table())
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections are accepted by the kernel; nobody ever answers
        with queue_at(f"redis://127.0.0.1:{silent.getsockname()[1]}/0"), pytest.raises(QueueUnavailable):
            control.job_start(job=job)
    assert Job.objects.get(pk=job.pk).status == JobStatus.DRAFT


def test_a_stream_rule_is_refused_the_same_way_and_its_rate_saved(redis_refuses: None) -> None:
    rule = a_rule(status="paused")
    with pytest.raises(QueueUnavailable, match="consume the rule's stream"):
        rules.stream_rule_resume(rule=rule)
    assert StreamRule.objects.get(pk=rule.pk).status == "paused"
    with pytest.raises(QueueUnavailable, match="write the failed records again"):
        rules.stream_rule_retry_failures(rule=rule)  # it has one failed write
    rules.stream_rule_set_rate(rule=rule, wcu_per_second=100)
    assert StreamRule.objects.get(pk=rule.pk).rate_limit_wcu == 100


def test_the_admins_start_button_says_why_on_the_job_page(redis_refuses: None, admin_client_tx: Any) -> None:
    job = ledger_job(JobStatus.DRAFT)
    response = admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]), follow=True)
    assert response.status_code == 200
    said = [str(message) for message in response.context["messages"]]
    assert any("The job queue (Redis) does not answer" in message for message in said), said
    assert Job.objects.get(pk=job.pk).status == JobStatus.DRAFT


def test_the_queue_dashboard_says_redis_does_not_answer(redis_refuses: None, admin_client_tx: Any) -> None:
    # django-rq's views read Redis and raised: an error page (a stack trace with DEBUG on).
    for path in ("/admin/rq/", "/admin/rq/queues/0/finished/"):
        response = admin_client_tx.get(path)
        assert response.status_code == 503, path
        assert "The job queue (Redis) does not answer" in response.content.decode()
