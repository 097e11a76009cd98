"""Who may do what: custom permissions on every action, read-only audit, upload cap, safe exports."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings
from django.urls import reverse

from bulkwrites.models import (
    CheckOutcome,
    Item,
    ItemCheck,
    ItemPayload,
    ItemStatus,
    Job,
    JobStatus,
    SourceKind,
    Verification,
    VerificationStatus,
)
from bulkwrites.resources import FORMULA_TRIGGERS, neutralize_formula

pytestmark = pytest.mark.django_db(transaction=True)


def staff_with(django_user_model: Any, *codenames: str) -> Any:
    user = django_user_model.objects.create_user("staff", "s@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_job", "view_item", *codenames]))
    return django_user_model.objects.get(pk=user.pk)  # fresh permission cache


def finished_job(status: str = JobStatus.COMPLETED_WITH_FAILURES) -> Job:
    job = Job.objects.create(
        table_name="t",
        key_schema=[{"name": "pk", "type": "S", "role": "HASH"}],
        source_kind=SourceKind.FILE,
        source_name="x.csv",
        status=status,
        total_items=3,  # one item still pending: resume has something to do
        succeeded_items=1,
        failed_items=1,
    )
    Item.objects.create(job=job, position=1, key={"pk": {"S": "a"}}, status="succeeded")
    ItemPayload.objects.create(job=job, position=1, payload={"pk": {"S": "a"}})
    ItemPayload.objects.create(job=job, position=2, payload={"pk": {"S": "=1+1"}})
    Item.objects.create(
        job=job,
        position=2,
        key={"pk": {"S": "=1+1"}},
        status=ItemStatus.FAILED,
        error_code="ValidationException",
        error_message="@SUM(1)",
    )
    return job


ACTION_PERMISSIONS = [
    ("start", "run_job", JobStatus.DRAFT),
    ("resume", "run_job", JobStatus.PAUSED),
    ("retry_failed", "run_job", JobStatus.COMPLETED_WITH_FAILURES),
    ("pause", "cancel_job", JobStatus.RUNNING),
    ("cancel", "cancel_job", JobStatus.RUNNING),
]


@pytest.mark.parametrize(("action", "codename", "status"), ACTION_PERMISSIONS)
def test_each_action_needs_its_permission(
    client: Any, django_user_model: Any, action: str, codename: str, status: str
) -> None:
    job = finished_job(status)
    client.force_login(staff_with(django_user_model))
    url = reverse("admin:bulkwrites_job_action", args=[job.pk, action])
    page = client.get(reverse("admin:bulkwrites_job_change", args=[job.pk]))
    assert page.status_code == 200
    assert f'id="action-{action}"' not in page.content.decode()
    assert client.post(url).status_code == 403
    job.refresh_from_db()
    assert job.status == status  # nothing happened

    client.force_login(staff_with_more(django_user_model, codename))
    page = client.get(reverse("admin:bulkwrites_job_change", args=[job.pk]))
    assert f'id="action-{action}"' in page.content.decode()
    assert client.get(url).status_code == 405  # POST only


def staff_with_more(django_user_model: Any, codename: str) -> Any:
    user = django_user_model.objects.get(username="staff")
    user.user_permissions.add(Permission.objects.get(codename=codename))
    return django_user_model.objects.get(pk=user.pk)


def test_actions_are_logged_with_the_user(admin_client_tx: Any, admin_user: Any) -> None:
    from django.contrib.admin.models import LogEntry

    job = finished_job(JobStatus.RUNNING)
    response = admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "pause"]))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    entry = LogEntry.objects.get(object_id=str(job.pk))
    assert entry.user_id == admin_user.pk
    assert "pause" in entry.change_message
    page = admin_client_tx.get(reverse("admin:bulkwrites_job_change", args=[job.pk])).content.decode()
    assert "pause (status now paused)" in page  # the job page shows who did what


def test_upload_and_export_need_their_permissions(client: Any, django_user_model: Any) -> None:
    job = finished_job()
    client.force_login(staff_with(django_user_model))
    assert client.get(reverse("admin:bulkwrites_job_new_from_file")).status_code == 403
    assert client.get(reverse("admin:bulkwrites_job_export", args=[job.pk, "failed", "csv"])).status_code == 403
    page = client.get(reverse("admin:bulkwrites_job_change", args=[job.pk])).content.decode()
    assert "export-failed-csv" not in page
    client.force_login(staff_with_more(django_user_model, "export_items"))
    assert client.get(reverse("admin:bulkwrites_job_export", args=[job.pk, "failed", "csv"])).status_code == 200


def test_the_ledger_is_read_only_for_everyone(admin_client_tx: Any) -> None:
    job = finished_job()
    item = job.items.first()
    assert item is not None
    change = admin_client_tx.post(reverse("admin:bulkwrites_item_change", args=[item.pk]), {"status": "pending"})
    assert change.status_code == 403
    item.refresh_from_db()
    assert item.status == ItemStatus.SUCCEEDED
    assert admin_client_tx.post(reverse("admin:bulkwrites_item_delete", args=[item.pk])).status_code == 403
    assert admin_client_tx.post(reverse("admin:bulkwrites_job_delete", args=[job.pk])).status_code == 403
    assert Item.objects.count() == 2


def test_rq_dashboard_needs_the_run_permission(client: Any, django_user_model: Any) -> None:
    client.force_login(staff_with(django_user_model))
    assert client.get(reverse("django_rq:home")).status_code == 403
    client.force_login(staff_with_more(django_user_model, "run_job"))
    assert client.get(reverse("django_rq:home")).status_code == 200


@override_settings(BULKWRITES={**__import__("django.conf").conf.settings.BULKWRITES, "MAX_UPLOAD_BYTES": 1000})
def test_an_upload_over_the_cap_is_refused_before_parsing(admin_client_tx: Any, make_table: Any) -> None:
    table = make_table()
    big = io.BytesIO(b"pk\n" + b"x" * 5_000_000)
    big.name = "big.csv"
    response = admin_client_tx.post(
        reverse("admin:bulkwrites_job_new_from_file"), {"file": big, "table_name": table, "operation": "put"}
    )
    assert response.status_code == 413
    assert "the limit is 0 MB" in response.content.decode()
    assert not Job.objects.exists()


@pytest.mark.parametrize("trigger", FORMULA_TRIGGERS)
def test_each_formula_trigger_is_neutralised(trigger: str) -> None:
    value = f'{trigger}HYPERLINK("http://evil")'
    assert neutralize_formula(value) == "'" + value
    assert neutralize_formula("plain " + value) == "plain " + value
    assert neutralize_formula(42) == 42


@pytest.mark.parametrize("fmt", ["csv", "xlsx", "json"])
def test_exports_of_failed_items_are_spreadsheet_safe(admin_client_tx: Any, fmt: str) -> None:
    job = finished_job()
    response = admin_client_tx.get(reverse("admin:bulkwrites_job_export", args=[job.pk, "failed", fmt]))
    assert response.status_code == 200
    if fmt == "csv":
        (row,) = list(csv.DictReader(io.StringIO(response.content.decode())))
        assert row["error_message"] == "'@SUM(1)"
        assert row["position"] == "2"
    elif fmt == "xlsx":
        from openpyxl import load_workbook
        from openpyxl.worksheet.worksheet import Worksheet

        sheet = load_workbook(io.BytesIO(response.content)).active
        assert isinstance(sheet, Worksheet)
        header, cells = ([c.value for c in r] for r in sheet.iter_rows(max_row=2))
        assert dict(zip(header, cells, strict=True))["error_message"] == "'@SUM(1)"
    else:
        assert '"@SUM(1)"' in response.content.decode()  # JSON is not a spreadsheet: data as is


def verified_job(*, mismatches: bool = True) -> tuple[Job, Verification]:
    """A finished job whose latest verification found (or not) one item missing."""
    job = finished_job(JobStatus.SUCCEEDED)
    verification = Verification.objects.create(
        job=job,
        status=VerificationStatus.FINISHED,
        total_items=1,
        verified_items=0 if mismatches else 1,
        missing_items=1 if mismatches else 0,
    )
    item = job.items.get(position=1)
    ItemCheck.objects.create(
        verification=verification,
        item=item,
        position=1,
        outcome=CheckOutcome.MISSING if mismatches else CheckOutcome.VERIFIED,
    )
    return job, verification


def test_verify_and_repair_need_run_job_and_post(client: Any, django_user_model: Any) -> None:
    job, verification = verified_job()
    verify_url = reverse("admin:bulkwrites_job_verify", args=[job.pk])
    repair_url = reverse("admin:bulkwrites_job_action", args=[job.pk, "repair"])
    cancel_url = reverse("admin:bulkwrites_job_verification_action", args=[job.pk, verification.pk, "resume"])

    client.force_login(staff_with(django_user_model))  # may only look
    page = client.get(reverse("admin:bulkwrites_job_change", args=[job.pk])).content.decode()
    assert 'id="verification-missing">1<' in page  # the counts and the mismatches are shown to viewers
    assert 'id="mismatches"' in page
    assert 'id="verify"' not in page
    assert 'id="action-repair"' not in page
    for url in (verify_url, repair_url, cancel_url):
        assert client.post(url).status_code == 403, url
    checks = reverse("admin:bulkwrites_itemcheck_changelist") + f"?verification__id__exact={verification.pk}"
    assert client.get(checks + "&outcome=mismatched").status_code == 200  # the outcomes are the job's ledger
    assert Verification.objects.filter(job=job).count() == 1
    job.refresh_from_db()
    assert (job.status, job.succeeded_items) == (JobStatus.SUCCEEDED, 1)

    client.force_login(staff_with_more(django_user_model, "run_job"))
    page = client.get(reverse("admin:bulkwrites_job_change", args=[job.pk])).content.decode()
    assert 'id="verify"' in page
    assert 'id="action-repair"' in page
    assert client.get(verify_url).status_code == 405  # POST only
    assert client.get(repair_url).status_code == 405


def test_verify_and_repair_are_logged_with_the_user(admin_client_tx: Any, admin_user: Any, rq_queue: Any) -> None:
    from django.contrib.admin.models import LogEntry

    job, verification = verified_job()
    response = admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "repair"]))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    recheck = Verification.objects.get(recheck_of=verification)
    assert (recheck.status, recheck.start_when_job_ends) == (VerificationStatus.DRAFT, True)

    assert job.succeeded_items == 0  # the item is pending again
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, succeeded_items=1)  # as if it had run
    recheck.delete()
    response = admin_client_tx.post(
        reverse("admin:bulkwrites_job_verify", args=[job.pk]), {"sample_fraction": "0.5", "consistent_read": "on"}
    )
    assert response.status_code == 302
    started = Verification.objects.filter(job=job).order_by("-id").first()
    assert started is not None
    assert (started.status, started.sample_fraction, started.created_by_id) == (
        VerificationStatus.QUEUED,
        0.5,
        admin_user.pk,
    )
    messages = list(LogEntry.objects.filter(object_id=str(job.pk)).order_by("id").values_list("change_message", "user"))
    assert messages[0] == ("repair (status now queued)", admin_user.pk)
    assert messages[1][0].startswith(f"verify (verification {started.pk}: a random 0.5 of the written items")
    refused = admin_client_tx.post(
        reverse("admin:bulkwrites_job_verify", args=[job.pk]), {"sample_fraction": "0.5", "sample_size": "3"}
    )
    assert refused.status_code == 302
    assert Verification.objects.filter(job=job).count() == 2  # nothing started: both were given
