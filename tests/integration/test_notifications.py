"""Mail and webhook when a job ends or fails: sent by a worker after commit, never by the writer."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.conf import settings
from django.core import mail
from django.test import override_settings

from bulkwrites.models import Job, JobStatus
from bulkwrites.services import control, create, dispatch, notify
from bulkwrites.services.errors import JobError
from tests.api_helpers import ledger_job, staff_user

pytestmark = pytest.mark.django_db(transaction=True)


def bulkwrites(**values: Any) -> override_settings:
    return override_settings(BULKWRITES={**settings.BULKWRITES, **values})


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers each POST with the next scripted status."""

    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            found.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
            status = found.statuses.pop(0) if found.statuses else 204
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/bulk?secret=s3"
    yield found
    server.shutdown()
    server.server_close()


def csv_upload(rows: list[str]) -> io.BytesIO:
    return io.BytesIO(("pk,n:N\n" + "".join(f"{r}\n" for r in rows)).encode())


def test_a_finished_job_posts_its_outcome_and_mails_its_creator(
    receiver: Receiver, make_table: Any, run_worker: Any, rq_queue: Any
) -> None:
    table = make_table()
    creator = staff_user("ops", email="ops@example.com")
    with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True, NOTIFY_EMAILS=["team@example.com"], WEBHOOK_SECRET="k3y",
                    BASE_URL="https://bulk.example.com"):  # fmt: skip
        job = create.job_create_from_file(
            upload=csv_upload(["a,1", "b,2", "c,NaN"]), file_name="in.csv", table_name=table,
            created_by=creator, webhook_url=receiver.url,
        )  # fmt: skip
        control.job_start(job=job)
        run_worker()  # the job, then its notification (a second RQ job)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED_WITH_FAILURES
    (request,) = receiver.received
    assert request["path"] == "/hooks/bulk?secret=s3"
    payload = json.loads(request["body"])
    assert payload["outcome"] == f"job {job.pk}: completed_with_failures, 2 succeeded, 1 failed"
    assert (payload["event"], payload["succeeded"], payload["failed"], payload["table"]) == ("job.ended", 2, 1, table)
    assert payload["url"] == f"https://bulk.example.com/admin/bulkwrites/job/{job.pk}/change/"
    expected = hmac.new(b"k3y", request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["X-Bulkwrites-Signature"] == f"sha256={expected}"
    assert request["headers"]["Content-Type"] == "application/json"

    (message,) = mail.outbox
    assert message.to == ["ops@example.com", "team@example.com"]
    assert message.subject == f"[bulkwrites] job {job.pk} → {table}: completed with failures"
    assert message.body.startswith(f"job {job.pk}: completed_with_failures, 2 succeeded, 1 failed\n")


def test_a_failed_job_notifies_too(receiver: Receiver, run_worker: Any, rq_queue: Any) -> None:
    """The table is deleted after the job was made: the writer fails the job, a worker tells the webhook."""
    job = ledger_job(JobStatus.QUEUED, table="no-such-table-xyz", failed_items=0, total_items=1, succeeded_items=0)
    Job.objects.filter(pk=job.pk).update(webhook_url=receiver.url, staged_at=job.created_at)
    job.items.filter(status="failed").delete()
    job.items.update(status="pending")
    from bulkwrites.models import Slice

    Slice.objects.create_for_job(job.pk, slice_size=10)
    with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True):
        dispatch.enqueue_run(job.pk)
        run_worker()
    (request,) = receiver.received
    payload = json.loads(request["body"])
    assert (payload["status"], payload["error_code"]) == ("failed", "ResourceNotFoundException")


def test_cancel_notifies_but_discarding_a_draft_does_not(receiver: Receiver, run_worker: Any, rq_queue: Any) -> None:
    with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True):
        draft = ledger_job(JobStatus.DRAFT)
        running = ledger_job(JobStatus.RUNNING)
        Job.objects.update(webhook_url=receiver.url)
        draft.refresh_from_db()
        running.refresh_from_db()
        control.job_cancel(job=draft)
        control.job_cancel(job=running)
        run_worker()
    assert [json.loads(r["body"])["job"] for r in receiver.received] == [running.pk]


def test_nothing_is_enqueued_when_nobody_listens(rq_queue: Any) -> None:
    job = ledger_job(JobStatus.SUCCEEDED)
    with bulkwrites(NOTIFY_EMAILS=[]):
        notify.job_ended(job)
    assert rq_queue.count == 0
    job.created_by = staff_user("ops")
    with bulkwrites(NOTIFY_CREATOR=False):
        notify.job_ended(job)
    assert rq_queue.count == 0
    notify.job_ended(job)
    assert rq_queue.count == 1


def test_the_webhook_is_retried_with_backoff_then_given_up(receiver: Receiver) -> None:
    job = ledger_job(JobStatus.SUCCEEDED)
    slept: list[float] = []
    receiver.statuses = [503, 500, 200]
    with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_ATTEMPTS=4):
        result = notify.post_webhook(receiver.url, notify.webhook_payload(job), sleep=slept.append)
    assert (result.delivered, result.attempts, result.status) == (True, 3, 200)
    assert len(slept) == 2
    assert all(0 <= s <= 2.0 for s in slept)

    receiver.received.clear()
    receiver.statuses = [500] * 5
    with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_ATTEMPTS=3):
        result = notify.post_webhook(receiver.url, {"x": 1}, sleep=slept.append)
    assert (result.delivered, result.attempts, len(receiver.received)) == (False, 3, 3)

    receiver.received.clear()
    receiver.statuses = [404]  # the receiver says no: not retried
    with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True):
        result = notify.post_webhook(receiver.url, {"x": 1}, sleep=slept.append)
    assert (result.delivered, result.status, len(receiver.received)) == (False, 404, 1)

    receiver.statuses = [302]  # redirects are not followed
    with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True):
        assert notify.post_webhook(receiver.url, {"x": 1}, sleep=slept.append).delivered is False


def test_a_dead_receiver_times_out_and_is_retried() -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    slept: list[float] = []
    try:
        with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True, WEBHOOK_ATTEMPTS=2, WEBHOOK_TIMEOUT_SECONDS=0.3):
            result = notify.post_webhook(url, {"x": 1}, sleep=slept.append)
    finally:
        listener.close()
    assert (result.delivered, result.attempts, result.status) == (False, 2, None)
    assert "Timeout" in result.error or "Error" in result.error
    assert len(slept) == 1


def test_private_receivers_are_refused_by_default(receiver: Receiver, make_table: Any) -> None:
    table = make_table()
    with pytest.raises(JobError, match="private, loopback or link-local"):
        create.job_create_from_file(
            upload=csv_upload(["a,1"]), file_name="in.csv", table_name=table, webhook_url=receiver.url
        )
    # Allowed when the job was made, refused when it is sent (the setting changed, or DNS did).
    job = ledger_job(JobStatus.SUCCEEDED)
    result = notify.post_webhook(receiver.url, notify.webhook_payload(job), sleep=lambda s: None)
    assert (result.delivered, result.attempts) == (False, 0)
    assert "private, loopback or link-local" in result.error
    assert receiver.received == []


def test_a_mail_server_that_fails_does_not_stop_the_webhook(receiver: Receiver) -> None:
    job = ledger_job(JobStatus.SUCCEEDED)
    job.created_by = staff_user("ops", email="ops@example.com")
    Job.objects.filter(pk=job.pk).update(created_by=job.created_by, webhook_url=receiver.url)
    mailers = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                           "OPTIONS": {"host": "127.0.0.1", "port": 9, "timeout": 1}}}  # fmt: skip
    with bulkwrites(WEBHOOK_ALLOW_PRIVATE=True), override_settings(MAILERS=mailers):
        said = notify.send_job_notifications(job.pk, sleep=lambda s: None)
    assert said.startswith(f"job {job.pk}: mail not sent (")
    assert "webhook delivered (HTTP 204, 1 attempt(s))" in said
    assert len(receiver.received) == 1
