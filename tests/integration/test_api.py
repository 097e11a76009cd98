"""The JSON API: tokens, the admin's permissions per endpoint, jobs from server-side files, control, exports."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.test import override_settings
from django.utils import timezone

from bulkwrites import selectors
from bulkwrites.models import ApiToken, Job, JobStatus
from bulkwrites.services import tokens
from tests.api_helpers import api_client, ledger_job, staff_user, token_for

pytestmark = pytest.mark.django_db(transaction=True)

ALL = ("view_job", "run_job", "cancel_job", "export_items")


def bulkwrites(**values: Any) -> override_settings:
    return override_settings(BULKWRITES={**settings.BULKWRITES, **values})


def endpoints(job_id: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("get", "/api/jobs", None),
        ("get", f"/api/jobs/{job_id}", None),
        ("get", f"/api/jobs/{job_id}/items", None),
        ("post", "/api/jobs", {"source": "/srv/imports/x.csv", "table": "t"}),
        ("post", f"/api/jobs/{job_id}/actions/pause", None),
        ("post", f"/api/jobs/{job_id}/rate", {"wcu": 5}),
    ]


def call(client: Any, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    if method == "get":
        return client.get(url)
    return client.post(url, data=json.dumps(body or {}), content_type="application/json")


def one_line_json(response: Any) -> str:
    assert response["Content-Type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert "\n" not in detail
    assert "Traceback" not in detail
    return detail


# --- authentication -----------------------------------------------------------------------


def test_anonymous_calls_get_401_and_change_nothing() -> None:
    job = ledger_job(JobStatus.RUNNING)
    for method, url, body in endpoints(job.pk):
        response = call(api_client(), method, url, body)
        assert response.status_code == 401, url
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in one_line_json(response)
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING
    assert Job.objects.count() == 1


def test_an_admin_session_is_not_a_token(admin_client_tx: Any) -> None:
    """No session auth: a state-changing call can never ride on a browser's cookies (no CSRF to forge)."""
    job = ledger_job(JobStatus.RUNNING)
    response = admin_client_tx.post(f"/api/jobs/{job.pk}/actions/pause")
    assert response.status_code == 401
    assert admin_client_tx.get("/api/jobs").status_code == 401
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING


def test_refused_tokens(django_user_model: Any) -> None:
    user = staff_user("ops", *ALL)
    expired = tokens.token_create(user=user, expires_in_days=1)
    ApiToken.objects.filter(pk=expired.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = tokens.token_create(user=user)
    tokens.token_revoke(prefix=revoked.token.prefix)
    good = tokens.token_create(user=user)
    cases = {
        expired.secret: "expired",
        revoked.secret: "revoked",
        good.secret[:-2] + "xx": "Unknown API token",
        "not-a-token": "start with 'bwt_'",
    }
    for secret, why in cases.items():
        response = api_client(secret).get("/api/jobs")
        assert response.status_code == 401
        assert why in one_line_json(response)
    assert api_client(good.secret).get("/api/jobs").status_code == 200

    user.is_active = False
    user.save()
    assert "not an active staff user" in one_line_json(api_client(good.secret).get("/api/jobs"))
    user.is_active, user.is_staff = True, False
    user.save()
    assert api_client(good.secret).get("/api/jobs").status_code == 401
    # The basic scheme (or any other) with a valid token is not accepted either.
    assert Client_with_header(f"Token {good.secret}").get("/api/jobs").status_code == 401


def Client_with_header(value: str) -> Any:
    from django.test import Client

    return Client(headers={"Authorization": value})


def test_last_use_is_recorded() -> None:
    made = tokens.token_create(user=staff_user("ops", "view_job"))
    assert made.token.last_used_at is None
    assert api_client(made.secret).get("/api/jobs").status_code == 200
    made.token.refresh_from_db()
    assert made.token.last_used_at is not None


def test_the_secret_is_never_stored_or_logged(caplog: pytest.LogCaptureFixture) -> None:
    user = staff_user("ops", *ALL)
    made = tokens.token_create(user=user, name="ci")
    secret_part = made.secret.split("_", 2)[2]
    row = ApiToken.objects.filter(pk=made.token.pk).values().get()
    assert all(made.secret not in str(v) and secret_part not in str(v) for v in row.values())
    assert row["secret_hash"] == tokens.hash_token(made.secret)
    job = ledger_job(JobStatus.RUNNING)
    with caplog.at_level(logging.DEBUG), override_settings(DEBUG=True):
        for header in (f"Bearer {made.secret}", f"Token {made.secret}", f"Bearer {made.secret}x", made.secret):
            Client_with_header(header).get("/api/jobs")
        api_client(made.secret).post(f"/api/jobs/{job.pk}/actions/pause")
    assert made.secret not in caplog.text
    assert secret_part not in caplog.text
    assert all(secret_part not in e.change_message for e in LogEntry.objects.all())


# --- permissions: the admin's, per endpoint -------------------------------------------------


@pytest.mark.parametrize(
    ("codenames", "allowed"),
    [
        ((), set()),
        (("view_job",), {"list", "status"}),
        (("view_job", "cancel_job"), {"list", "status", "pause"}),
        (("view_job", "export_items"), {"list", "status", "export"}),
        (("view_job", "run_job"), {"list", "status", "rate", "create"}),
    ],
)
def test_each_endpoint_checks_the_admins_permission(codenames: tuple[str, ...], allowed: set[str]) -> None:
    job = ledger_job(JobStatus.RUNNING)
    client = api_client(token_for(staff_user("ops", *codenames)))
    calls = {
        "list": ("get", "/api/jobs", None),
        "status": ("get", f"/api/jobs/{job.pk}", None),
        "export": ("get", f"/api/jobs/{job.pk}/items", None),
        "pause": ("post", f"/api/jobs/{job.pk}/actions/pause", None),
        "rate": ("post", f"/api/jobs/{job.pk}/rate", {"wcu": 5}),
        # No directory is allowed: a permitted caller gets 400, one without the permission 403.
        "create": ("post", "/api/jobs", {"source": "/srv/imports/none.csv", "table": "t"}),
    }
    for name, (method, url, body) in calls.items():
        response = call(client, method, url, body)
        if name in allowed:
            assert response.status_code in (200, 400), (name, response.content)
        else:
            assert response.status_code == 403, (name, response.content)
            assert "lacks the permission bulkwrites." in one_line_json(response)
    job.refresh_from_db()
    assert job.status == (JobStatus.PAUSED if "pause" in allowed else JobStatus.RUNNING)


# --- reads ----------------------------------------------------------------------------------


def test_list_filters_and_pages() -> None:
    jobs = [ledger_job(JobStatus.SUCCEEDED, table="a"), ledger_job(JobStatus.FAILED, table="a")]
    jobs.append(ledger_job(JobStatus.SUCCEEDED, table="b"))
    client = api_client(token_for(staff_user("ops", "view_job")))
    listed = client.get("/api/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == [j.pk for j in reversed(jobs)]
    assert listed["next_offset"] is None
    assert [j["id"] for j in client.get("/api/jobs?status=succeeded").json()["jobs"]] == [jobs[2].pk, jobs[0].pk]
    assert [j["id"] for j in client.get("/api/jobs?table=a&status=failed").json()["jobs"]] == [jobs[1].pk]
    page = client.get("/api/jobs?limit=2").json()
    assert (len(page["jobs"]), page["next_offset"]) == (2, 2)
    assert [j["id"] for j in client.get("/api/jobs?limit=2&offset=2").json()["jobs"]] == [jobs[0].pk]
    assert client.get("/api/jobs?status=nonsense").status_code == 422
    assert client.get("/api/jobs?limit=100000").status_code == 422


def test_status_has_the_job_pages_fields() -> None:
    job = ledger_job(JobStatus.FAILED)
    client = api_client(token_for(staff_user("ops", "view_job", "run_job")))
    status = client.get(f"/api/jobs/{job.pk}").json()
    assert set(selectors.job_progress(job)) <= set(status)
    assert (status["succeeded"], status["failed"], status["pending"]) == (1, 1, 1)
    # What this failed job offers (as the job page's buttons) and this user may do.
    assert status["actions"] == ["resume", "retry_failed"]
    missing = client.get("/api/jobs/999999")
    assert missing.status_code == 404
    assert one_line_json(missing) == "No job 999999."


def test_an_unexpected_error_is_one_line_of_json(monkeypatch: pytest.MonkeyPatch) -> None:
    job = ledger_job()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom at line 3 of something internal")

    monkeypatch.setattr(selectors, "job_progress", broken)
    response = api_client(token_for(staff_user("ops", "view_job"))).get(f"/api/jobs/{job.pk}")
    assert response.status_code == 500
    assert one_line_json(response) == "Internal error; the server's log has the details."


# --- creating jobs from server-side files ----------------------------------------------------


def write_csv(path: Path, rows: int) -> Path:
    path.write_text("pk,n:N\n" + "".join(f"k{i},{i}\n" for i in range(rows)))
    return path


def test_create_start_and_run_a_job_from_an_allowed_directory(
    tmp_path: Path, make_table: Any, run_worker: Any, scan: Any
) -> None:
    table = make_table()
    source = write_csv(tmp_path / "in.csv", 30)
    user = staff_user("ops", *ALL)
    made = tokens.token_create(user=user)
    client = api_client(made.secret)
    with bulkwrites(API_SOURCE_DIRS=[str(tmp_path)]):
        response = call(client, "post", "/api/jobs", {"source": str(source), "table": table, "start": True,
                                                      "rate_limit_wcu": 500, "concurrency": 4})  # fmt: skip
    assert response.status_code == 201, response.content
    body = response.json()
    job = Job.objects.get(pk=body["id"])
    assert (body["status"], body["message"]) == ("queued", f"job {job.pk} created and queued")
    assert (job.created_by_id, job.source_name, job.rate_limit_wcu, job.concurrency) == (user.pk, "in.csv", 500, 4)
    entry = LogEntry.objects.get(object_id=str(job.pk))
    assert (entry.user_id, entry.change_message) == (
        user.pk, f"start (status now queued) through the API (token {made.token.prefix})"
    )  # fmt: skip
    run_worker()
    done = client.get(f"/api/jobs/{job.pk}").json()
    assert (done["status"], done["succeeded"], done["finished"]) == ("succeeded", 30, True)
    assert len(scan(table)) == 30


def test_create_and_run_a_job_from_an_allowed_s3_object(
    s3: Any, bucket: str, make_table: Any, run_worker: Any, scan: Any
) -> None:
    table = make_table()
    s3.put_object(
        Bucket=bucket, Key="exports/in.csv", Body=b"pk,n:N\n" + b"".join(f"k{i},{i}\n".encode() for i in range(40))
    )
    client = api_client(token_for(staff_user("ops", *ALL)))
    url = f"s3://{bucket}/exports/in.csv"
    refused = call(client, "post", "/api/jobs", {"source": url, "table": table})
    assert (refused.status_code, "BULKWRITES_S3_ALLOWED" in refused.json()["detail"]) == (400, True)
    with bulkwrites(S3_ALLOWED=[f"{bucket}/exports"]):
        response = call(client, "post", "/api/jobs", {"source": url, "table": table, "start": True})
        assert response.status_code == 201, response.content
        job = Job.objects.get(pk=response.json()["id"])
        assert (job.source_kind, job.source_detail, job.source_format) == ("s3", url, "csv")
        run_worker()
    done = client.get(f"/api/jobs/{job.pk}").json()
    assert (done["status"], done["succeeded"]) == ("succeeded", 40)
    assert sorted(int(item["n"]["N"]) for item in scan(table)) == list(range(40))


def test_a_draft_can_be_started_later(tmp_path: Path, make_table: Any) -> None:
    table = make_table()
    source = write_csv(tmp_path / "in.csv", 2)
    client = api_client(token_for(staff_user("ops", *ALL)))
    with bulkwrites(API_SOURCE_DIRS=[str(tmp_path)]):
        created = call(client, "post", "/api/jobs", {"source": str(source), "table": table})
    assert created.status_code == 201
    job_id = created.json()["id"]
    assert created.json()["status"] == "draft"
    started = client.post(f"/api/jobs/{job_id}/actions/start")
    assert (started.status_code, started.json()["status"]) == (200, "queued")
    again = client.post(f"/api/jobs/{job_id}/actions/start")
    assert again.status_code == 409
    assert one_line_json(again) == f"Job {job_id} is queued; only a draft job can be started."


def test_server_side_paths_stay_inside_the_allowed_directories(tmp_path: Path, make_table: Any) -> None:
    table = make_table()
    allowed = tmp_path / "imports"
    allowed.mkdir()
    write_csv(allowed / "ok.csv", 1)
    (allowed / "escape.csv").symlink_to("/etc/passwd")
    (allowed / "up").symlink_to(tmp_path)
    write_csv(tmp_path / "secret.csv", 1)
    client = api_client(token_for(staff_user("ops", *ALL)))

    def create(source: str, **more: Any) -> tuple[int, str]:
        response = call(client, "post", "/api/jobs", {"source": source, "table": table, **more})
        return response.status_code, response.json()["detail"] if response.status_code != 201 else ""

    assert create(str(allowed / "ok.csv"))[0] == 400  # no directory allowed yet
    assert "no directory is allowed" in create(str(allowed / "ok.csv"))[1]
    with bulkwrites(API_SOURCE_DIRS=[str(allowed)]):
        assert create(str(allowed / "ok.csv"))[0] == 201
        for outside in (
            "/etc/passwd",
            str(allowed / "escape.csv"),  # a symlink out
            str(allowed / "up" / "secret.csv"),  # a directory symlink out
            str(allowed / ".." / "secret.csv"),
            str(allowed / "nope" / ".." / ".." / "secret.csv"),
            "/etc/no-such-file",  # outside: whether it exists is not told
        ):
            status, detail = create(outside)
            assert (status, detail) == (400, f"{outside} is not inside a directory the API may read "
                                             "(BULKWRITES_API_SOURCE_DIRS).")  # fmt: skip
        assert create(str(allowed / "missing.csv")) == (400, f"{allowed / 'missing.csv'}: no such file.")
        assert create("ok.csv") == (400, "Give the file's absolute path on the server.")
        assert create(str(allowed))[1] == f"{allowed}: no such file."
        status, detail = create("s3://bucket/key.csv")  # S3 is off until buckets are allowed
        assert status == 400
        assert "BULKWRITES_S3_ALLOWED" in detail
        status, detail = create(str(allowed / "ok.csv"), webhook_url="http://169.254.169.254/latest/")
        assert status == 400
        assert "link-local" in detail
        status, detail = create(str(allowed / "ok.csv"), concurrency=0)
        assert status == 400
        assert "concurrency" in detail.lower()
        status, detail = create(str(allowed / "ok.csv"), format="exe")
        assert (status, detail[:22]) == (400, "Unknown format 'exe'; ")
    assert Job.objects.count() == 1
    # The app's own files are never a source, even inside an allowed directory.
    app_file = Path(settings.BASE_DIR) / "project" / "settings.py"
    with bulkwrites(API_SOURCE_DIRS=[str(Path(settings.BASE_DIR).parent)]):
        assert create(str(app_file))[0] == 400
    assert create(str(allowed / "ok.csv"), table="no-such-table-here")[0] == 400


# --- control ------------------------------------------------------------------------------


def test_control_actions_answer_409_when_the_status_refuses_them() -> None:
    job = ledger_job(JobStatus.RUNNING)
    user = staff_user("ops", *ALL)
    client = api_client(token_for(user))
    paused = client.post(f"/api/jobs/{job.pk}/actions/pause")
    assert (paused.status_code, paused.json()["status"], paused.json()["message"]) == (200, "paused", "pause done")
    again = client.post(f"/api/jobs/{job.pk}/actions/pause")
    assert again.status_code == 409
    assert one_line_json(again) == f"Job {job.pk} is paused; only a queued or running job can be paused."
    assert client.post(f"/api/jobs/{job.pk}/actions/cancel").json()["status"] == "cancelled"
    assert client.post(f"/api/jobs/{job.pk}/actions/explode").status_code == 422
    assert client.post("/api/jobs/999999/actions/cancel").status_code == 404
    messages = list(
        LogEntry.objects.filter(object_id=str(job.pk)).order_by("pk").values_list("change_message", "user_id")
    )
    assert next(m for m, _ in messages).startswith("pause (status now paused) through the API (token ")
    assert [m.split(" through")[0] for m, _ in messages] == [
        "pause (status now paused)",
        "cancel (status now cancelled)",
    ]
    assert {u for _, u in messages} == {user.pk}


def test_retry_failed_items(rq_queue: Any) -> None:
    job = ledger_job(JobStatus.COMPLETED_WITH_FAILURES)
    client = api_client(token_for(staff_user("ops", *ALL)))
    response = client.post(f"/api/jobs/{job.pk}/actions/retry_failed")
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["message"]) == ("queued", "1 failed item(s) queued again")
    assert client.post(f"/api/jobs/{job.pk}/actions/retry_failed").status_code == 409


def test_the_rate_cap(rq_queue: Any) -> None:
    job = ledger_job(JobStatus.RUNNING)
    client = api_client(token_for(staff_user("ops", *ALL)))
    set_rate = call(client, "post", f"/api/jobs/{job.pk}/rate", {"wcu": 50})
    assert (set_rate.status_code, set_rate.json()["rate_limit_wcu"]) == (200, 50.0)
    assert set_rate.json()["message"] == "rate cap set to 50 WCU/s"
    removed = call(client, "post", f"/api/jobs/{job.pk}/rate", {"wcu": None})
    assert (removed.json()["rate_limit_wcu"], removed.json()["message"]) == (None, "rate cap removed")
    assert call(client, "post", f"/api/jobs/{job.pk}/rate", {"wcu": 0}).json()["rate_limit_wcu"] is None
    bad = call(client, "post", f"/api/jobs/{job.pk}/rate", {"wcu": -3})
    assert bad.status_code == 400
    assert "rate cap" in one_line_json(bad)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    assert call(client, "post", f"/api/jobs/{job.pk}/rate", {"wcu": 5}).status_code == 409


# --- exports --------------------------------------------------------------------------------


def test_exports_are_formula_safe_and_bounded() -> None:
    job = ledger_job()
    client = api_client(token_for(staff_user("ops", "view_job", "export_items")))
    response = client.get(f"/api/jobs/{job.pk}/items")
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith(f'attachment; filename="job-{job.pk}-failed-items-')
    (row,) = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert (row["position"], row["error_message"]) == ("2", "'@SUM(1)")
    assert row["item"] == '{"pk": {"S": "=1+1"}}'  # the payload, from its own table
    assert "X-Next-After" not in response

    as_json = client.get(f"/api/jobs/{job.pk}/items?format=json&status=succeeded")
    assert [int(r["position"]) for r in json.loads(as_json.content)] == [1]
    xlsx = client.get(f"/api/jobs/{job.pk}/items?format=xlsx")
    from openpyxl import load_workbook

    sheet = load_workbook(io.BytesIO(xlsx.content)).active
    assert sheet is not None
    header, values = ([c.value for c in r] for r in sheet.iter_rows(max_row=2))
    assert dict(zip(header, values, strict=True))["error_message"] == "'@SUM(1)"

    for position in range(3, 8):
        job.items.create(position=position, status="failed", error_code="X", error_message=f"e{position}")
    first = client.get(f"/api/jobs/{job.pk}/items?format=json&limit=4")
    assert [int(r["position"]) for r in json.loads(first.content)] == [2, 3, 4, 5]
    assert first["X-Next-After"] == "5"
    rest = client.get(f"/api/jobs/{job.pk}/items?format=json&limit=4&after=5")
    assert [int(r["position"]) for r in json.loads(rest.content)] == [6, 7]
    assert "X-Next-After" not in rest
    assert client.get(f"/api/jobs/{job.pk}/items?limit=1000000").status_code == 422
    assert client.get(f"/api/jobs/{job.pk}/items?format=exe").status_code == 422


# --- the schema and its docs ----------------------------------------------------------------


def test_openapi_schema_and_docs_for_staff(admin_client_tx: Any) -> None:
    schema = admin_client_tx.get("/api/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert set(paths) == {
        "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/actions/{action}", "/api/jobs/{job_id}/rate",
        "/api/jobs/{job_id}/items",
    }  # fmt: skip
    assert schema.json()["components"]["securitySchemes"]["TokenAuth"]["scheme"] == "bearer"
    docs = admin_client_tx.get("/api/docs").content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in docs  # served from here, not a CDN
    assert "cdn" not in docs.lower()
    anonymous = api_client().get("/api/openapi.json")
    assert (anonymous.status_code, anonymous["Location"]) == (302, "/admin/login/?next=/api/openapi.json")


def test_server_files_refuse_a_fifo(tmp_path: Path, make_table: Any) -> None:
    table = make_table()
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    client = api_client(token_for(staff_user("ops", *ALL)))
    with bulkwrites(API_SOURCE_DIRS=[str(tmp_path)]):
        response = call(client, "post", "/api/jobs", {"source": str(fifo), "table": table})
    assert (response.status_code, response.json()["detail"]) == (400, f"{fifo}: no such file.")
