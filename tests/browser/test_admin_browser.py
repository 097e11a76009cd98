"""The operator's admin in a real browser: headless Chromium, the live server, a real RQ worker process,
real DynamoDB Local.

What only a browser shows: the login form, the upload form's table select, the preview, the job page's
progress bar moving without a reload, the failed items and the CSV download. Screenshots go to
``artifacts/screenshots/``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import FilePayload, Page, expect

from bulkwrites.models import OPERATOR_ACTIONS, Item, ItemStatus, Job, JobStatus, Slice, Verification
from bulkwrites.resources import FORMULA_TRIGGERS
from bulkwrites.services import control, create
from faultproxy import FaultProxy
from tests.browser.conftest import PASSWORD, explain, live_log, log_in
from tests.conftest import wait_for

pytestmark = pytest.mark.browser

FORMULA = "=HYPERLINK(x)"  # no comma or quote: the CSV line of its row starts with "=" too
VALID_ROWS = 300
BAD_NUMBER_ROW = 101  # row numbers count data rows from 1, as the ledger's positions do
MISSING_KEY_ROW = 202


def operator_csv() -> bytes:
    """300 valid rows with typed columns, and 2 invalid ones (a bad number, an empty key)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["note", "pk", "n:N", "flag:BOOL", "tags:SS"])
    valid = iter(range(VALID_ROWS))
    for row in range(1, VALID_ROWS + 3):
        if row == BAD_NUMBER_ROW:
            writer.writerow([FORMULA, "bad-number", "not-a-number", "true", '["a"]'])
        elif row == MISSING_KEY_ROW:
            writer.writerow(["no key here", "", "7", "false", ""])
        else:
            i = next(valid)
            writer.writerow(
                [f"row {i}", f"item-{i:04d}", f"{i}.5", "true" if i % 2 else "false", f'["t{i % 3}","all"]']
            )
    return out.getvalue().encode("utf-8")


def wait_or_explain(predicate: Callable[[], Any], *, timeout: float, what: str, why: Callable[[], str]) -> Any:
    try:
        return wait_for(predicate, timeout=timeout, interval=0.2, what=what)
    except pytest.fail.Exception as exc:
        pytest.fail(f"{exc}\n{why()}", pytrace=False)


def finished_job_log(page: Page, *, timeout: float, why: Callable[[], str]) -> list[dict[str, Any]]:
    """Wait until the page's own poller has written a final percent into the page; the recorded log."""

    def live_hundred() -> list[dict[str, Any]] | None:
        try:
            entries = live_log(page)
        except PlaywrightError:  # the page reloads itself once the job is finished
            return None
        return entries if any(e["kind"] == "live" and e["text"].startswith("100") for e in entries) else None

    log: list[dict[str, Any]] = wait_or_explain(
        live_hundred, timeout=timeout, what="the job page to show 100% by itself", why=why
    )
    return log


def int_text(page: Page, selector: str) -> int:
    return int(page.locator(selector).inner_text().replace(",", "").strip())


def test_operator_uploads_previews_runs_and_exports(
    live_server: Any,
    page: Page,
    admin_user: Any,
    make_table: Any,
    scan: Any,
    start_worker: Any,
    rq_queue: Any,
    fault_proxy: FaultProxy,
    screenshot_dir: Any,
) -> None:
    base = live_server.url
    table = make_table()
    log_in(page, base, "root")

    # Jobs → Add: the add view sends the operator to the upload form.
    page.locator("tr.model-job th a").click()
    page.wait_for_url(f"{base}{reverse('admin:bulkwrites_job_changelist')}")
    page.locator(".object-tools a.addlink").click()
    page.wait_for_url(f"{base}{reverse('admin:bulkwrites_job_new_from_file')}")
    form = page.locator("#new-job-form")
    expect(form).to_be_visible()
    assert table in page.locator("#id_table_name option").all_inner_texts()  # listed by DynamoDB
    page.select_option("#id_table_name", table)
    upload: FilePayload = {"name": "items.csv", "mimeType": "text/csv", "buffer": operator_csv()}
    page.set_input_files("#id_file", files=[upload])
    form.locator("input[type=submit]").click()

    # Preview: counts, the invalid rows with their reasons, nothing written yet.
    page.wait_for_url(re.compile(r"/preview/$"))
    expect(page.locator("#count-rows")).to_have_text(str(VALID_ROWS + 2))
    expect(page.locator("#count-valid")).to_have_text(str(VALID_ROWS))
    expect(page.locator("#count-invalid")).to_have_text("2")
    invalid = page.locator("#invalid-rows tbody tr")
    expect(invalid).to_have_count(2)
    bad_number, missing_key = (invalid.nth(i).locator("td") for i in range(2))
    assert bad_number.nth(0).inner_text() == str(BAD_NUMBER_ROW)
    assert "'n'" in bad_number.nth(1).inner_text()
    assert "not a number" in bad_number.nth(1).inner_text()
    assert "not-a-number" in bad_number.nth(2).inner_text()
    assert missing_key.nth(0).inner_text() == str(MISSING_KEY_ROW)
    assert "missing key attribute 'pk'" in missing_key.nth(1).inner_text()
    expect(page.locator("#sample-items pre.bw-item").first).to_contain_text("item-0000")
    page.screenshot(path=str(screenshot_dir / "preview.png"), full_page=True)
    assert scan(table) == []
    job = Job.objects.get()
    assert job.status == JobStatus.DRAFT

    # Confirm, with a worker already listening. Its writes go through a proxy that adds 300 ms to each
    # call, so the job page is open, short of 100%, well before the job ends.
    fault_proxy.configure(latency_ms=300)
    worker = start_worker(AWS_ENDPOINT_URL_DYNAMODB=fault_proxy.url)

    def why() -> str:
        return explain(job, worker, rq_queue)

    page.locator("#confirm-start").click()
    page.wait_for_url(f"{base}{reverse('admin:bulkwrites_job_change', args=[job.pk])}")
    expect(page.locator("ul.messagelist")).to_contain_text(f"Job {job.pk} queued.")
    expect(page.locator("#job-status")).to_have_text(re.compile("queued|running"))

    # The page's own poller moves the bar to 100% (no reload by the test), then reloads once, finished.
    finished_job_log(page, timeout=60, why=why)
    expect(page.locator("#job-page")).to_have_attribute("data-finished", "1", timeout=10_000)

    # The reloaded page's attribute is visible before its DOMContentLoaded handler logs the load.
    def reloaded_log() -> list[dict[str, Any]] | None:
        entries = live_log(page)
        return entries if [e["kind"] for e in entries].count("load") >= 2 else None

    log = wait_or_explain(reloaded_log, timeout=10, what="the reloaded page to log its load", why=why)
    loads = [e for e in log if e["kind"] == "load"]
    live = [e for e in log if e["kind"] == "live"]
    final_live = next(e for e in live if e["text"].startswith("100"))
    assert final_live["width"] == "100%", final_live
    assert not loads[0]["text"].startswith("100"), loads[0]
    assert loads[0]["t"] <= final_live["t"]
    assert len(loads) == 2, f"the job page should load twice (open, then reload when finished): {log}"
    assert loads[1]["t"] >= final_live["t"]

    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED_WITH_FAILURES
    expect(page.locator("#job-status")).to_have_text(job.get_status_display())
    expect(page.locator("#job-percent")).to_have_text(re.compile(r"^100(\.0)?%$"))
    assert page.locator("#job-bar").evaluate("bar => bar.style.width") == "100%"
    page.screenshot(path=str(screenshot_dir / "job-page.png"), full_page=True)

    # The counts shown are the ledger's, and the table holds exactly the valid rows.
    ledger = {s: Item.objects.filter(job=job, status=s).count() for s in ItemStatus.values}
    assert ledger == {"pending": 0, "succeeded": VALID_ROWS, "failed": 2, "skipped": 0}
    assert int_text(page, "#count-total") == job.total_items == VALID_ROWS + 2
    assert int_text(page, "#count-succeeded") == job.succeeded_items == ledger["succeeded"]
    assert int_text(page, "#count-failed") == job.failed_items == ledger["failed"]
    assert int_text(page, "#count-skipped") == job.skipped_items == 0
    assert int_text(page, "#count-pending") == 0
    items = {i["pk"]["S"]: i for i in scan(table)}
    assert set(items) == {f"item-{i:04d}" for i in range(VALID_ROWS)}
    assert items["item-0007"] == {
        "pk": {"S": "item-0007"},
        "note": {"S": "row 7"},
        "n": {"N": "7.5"},
        "flag": {"BOOL": True},
        "tags": {"SS": items["item-0007"]["tags"]["SS"]},
    }
    assert sorted(items["item-0007"]["tags"]["SS"]) == ["all", "t1"]

    # The job page lists the 2 failed items; the "Failed items" link opens them in the item list.
    failed_on_page = page.locator("#failed-items tbody tr")
    expect(failed_on_page).to_have_count(2)
    failed = list(Item.objects.filter(job=job, status=ItemStatus.FAILED).order_by("position"))
    assert [i.position for i in failed] == [BAD_NUMBER_ROW, MISSING_KEY_ROW]
    for row, item in zip(failed_on_page.all(), failed, strict=True):
        assert row.locator("td").nth(0).inner_text() == str(item.position)
        assert item.error_message
        assert item.error_message in row.inner_text()
    page.locator("#failed-items-link").click()
    page.wait_for_url(re.compile(r"/admin/bulkwrites/item/\?"))
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    for row, item in zip(rows.all(), failed, strict=True):
        text = row.inner_text()
        assert str(item.position) in text
        assert "failed" in text
        assert item.error_code in text
        assert item.error_message[:120] in text
    page.screenshot(path=str(screenshot_dir / "failed-items.png"), full_page=True)
    page.go_back()

    # Export: the download has the 2 failed rows, and a cell starting with "=" is neutralised.
    with page.expect_download() as download_info:
        page.locator("#export-failed-csv").click()
    download = download_info.value
    assert download.suggested_filename == f"job-{job.pk}-failed-items.csv"
    with open(download.path(), encoding="utf-8", newline="") as exported:
        exported_rows = list(csv.DictReader(exported))
    assert [int(r["position"]) for r in exported_rows] == [BAD_NUMBER_ROW, MISSING_KEY_ROW]
    assert all(r["status"] == "failed" and r["error_code"] == "InvalidRow" for r in exported_rows)
    assert [r["error_message"] for r in exported_rows] == [i.error_message for i in failed]
    raw = exported_rows[0]["raw"]
    assert raw.startswith("'" + FORMULA), raw
    assert failed[0].raw.startswith(FORMULA)  # the ledger keeps the row as read; only the export changes it
    for exported_row in exported_rows:
        for column, cell in exported_row.items():
            assert not cell.startswith(FORMULA_TRIGGERS), (column, cell)


def test_staff_without_permission_cannot_see_or_use_actions(
    live_server: Any,
    page: Page,
    client: Any,
    admin_user: Any,
    screenshot_dir: Any,
    django_user_model: Any,
    make_table: Any,
    run_worker: Any,
    fault_proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = live_server.url
    table = make_table()
    # Row b is refused by DynamoDB (the proxy poisons it): a failure "Retry failed items" would send again.
    fault_proxy.configure(poison_attribute="flag", poison_value="poison")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", fault_proxy.url)
    content = b"pk,n:N,flag\na,1,ok\nb,2,poison\nc,3,ok\n"
    job = create.job_create_from_file(upload=io.BytesIO(content), file_name="small.csv", table_name=table)
    control.job_start(job=job)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED_WITH_FAILURES
    job_url = reverse("admin:bulkwrites_job_change", args=[job.pk])

    # The control: a superuser's job page has the buttons this test expects to be hidden.
    client.force_login(admin_user)
    html = client.get(job_url).content.decode()
    assert 'id="action-retry_failed"' in html
    assert 'id="verify"' in html
    assert 'id="export-failed-csv"' in html

    viewer = django_user_model.objects.create_user("viewer", "viewer@example.com", PASSWORD, is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(content_type__app_label="bulkwrites", codename__in=["view_job", "view_item"])
    )
    log_in(page, base, "viewer")

    page.goto(f"{base}{reverse('admin:bulkwrites_job_changelist')}")
    expect(page.locator("#result_list")).to_contain_text(table)
    expect(page.locator(".object-tools a.addlink")).to_have_count(0)

    page.goto(f"{base}{job_url}")
    expect(page.locator("#job-status")).to_have_text(job.get_status_display())
    expect(page.locator(".bw-actions form, .bw-actions input[type=submit]")).to_have_count(0)
    expect(page.locator("[id^=action-]")).to_have_count(0)
    expect(page.locator("#verify")).to_have_count(0)
    expect(page.locator("[id^=export-failed-]")).to_have_count(0)
    expect(page.locator("#failed-items tbody tr")).to_have_count(1)  # the viewer may still see outcomes
    page.screenshot(path=str(screenshot_dir / "job-page-view-only.png"), full_page=True)

    # A forged POST (with a valid CSRF token, so the refusal is the permission's) is refused.
    token = next(c["value"] for c in page.context.cookies(base) if c["name"] == "csrftoken")
    urls = [reverse("admin:bulkwrites_job_action", args=[job.pk, action]) for action in OPERATOR_ACTIONS]
    urls.append(reverse("admin:bulkwrites_job_verify", args=[job.pk]))
    for url in urls:
        response = page.request.post(f"{base}{url}", headers={"X-CSRFToken": token, "Referer": f"{base}{job_url}"})
        assert response.status == 403, (url, response.status)
        assert "CSRF" not in response.text(), url
    assert not Verification.objects.filter(job=job).exists()
    # The item list lets the viewer read the ledger, but offers no export either.
    page.locator("#failed-items-link").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("a.export_link")).to_have_count(0)
    assert not [o for o in page.locator("select[name=action] option").all_inner_texts() if "xport" in o]

    export = page.request.get(f"{base}{reverse('admin:bulkwrites_job_export', args=[job.pk, 'failed', 'csv'])}")
    assert export.status == 403
    refreshed = Job.objects.get(pk=job.pk)
    assert (refreshed.status, refreshed.failed_items) == (JobStatus.COMPLETED_WITH_FAILURES, 1)


def test_job_page_screenshot_while_running(
    live_server: Any,
    page: Page,
    admin_user: Any,
    make_table: Any,
    scan: Any,
    start_worker: Any,
    rq_queue: Any,
    fault_proxy: FaultProxy,
    screenshot_dir: Any,
) -> None:
    """Caught mid-run: the percent moves in place at least twice; then a Cancel click stops the worker."""
    base = live_server.url
    table = make_table()
    count = 5000
    source = "pk,n:N,body\n" + "".join(f"k{i:05d},{i},{'x' * 100}\n" for i in range(count))
    job = create.job_create_from_file(
        upload=io.BytesIO(source.encode()),
        file_name="big.csv",
        table_name=table,
        created_by=admin_user,
        concurrency=1,
        batch_size=25,
        # 5,000 items of 1 WCU at 250 WCU/s: the job lasts at least ~19 s however fast the machine,
        # so the page's 2 s polls see it mid-run several times (a fast machine finished it before two).
        rate_limit_wcu=250,
    )
    fault_proxy.configure(latency_ms=20)
    worker = start_worker(AWS_ENDPOINT_URL_DYNAMODB=fault_proxy.url)

    def why() -> str:
        return explain(job, worker, rq_queue)

    log_in(page, base, "root")
    control.job_start(job=job)
    page.goto(f"{base}{reverse('admin:bulkwrites_job_change', args=[job.pk])}")
    expect(page.locator("#job-status")).to_have_text(re.compile("queued|running"))

    def distinct_live_percents() -> list[str] | None:
        texts = [e["text"] for e in live_log(page) if e["kind"] == "live" and not e["text"].startswith("100")]
        distinct = list(dict.fromkeys(t for t in texts if t not in ("0%", "0.0%")))
        return distinct if len(distinct) >= 2 else None

    # At least two changes of the percent text while the page stays open, mid-run.
    seen = wait_or_explain(distinct_live_percents, timeout=30, what="two live percent changes", why=why)
    assert [e["kind"] for e in live_log(page)].count("load") == 1
    expect(page.locator("#job-status")).to_have_text("running")
    page.screenshot(path=str(screenshot_dir / "job-running.png"), full_page=True)
    text, width = page.evaluate(
        "[document.getElementById('job-percent').textContent, document.getElementById('job-bar').style.width]"
    )
    assert 0 < float(text.rstrip("%")) < 100, text
    assert float(width.rstrip("%")) == float(text.rstrip("%")), (text, width)
    rate = page.locator("#rate").inner_text()
    assert float(rate) > 0, rate
    values = [float(t.rstrip("%")) for t in seen]
    assert values == sorted(values), f"the percent went backwards: {seen}"

    # Then the operator cancels from the page. Cancel asks first, saying what it will do; "No" changes nothing.
    cancel = page.locator("#action-cancel")
    expect(cancel).to_have_value("Cancel…")
    cancel.click()
    confirmation = page.locator("#confirm-cancel")
    expect(confirmation).to_contain_text(f"Job {job.pk} (big.csv → {table}) is running")
    expect(confirmation).to_contain_text("not sent yet")
    expect(confirmation).to_contain_text("A cancelled job can be resumed later")
    page.screenshot(path=str(screenshot_dir / "cancel-confirmation.png"), full_page=True)
    assert Job.objects.status_of(job.pk) == JobStatus.RUNNING
    page.locator("#confirm-cancel-no").click()
    page.wait_for_url(f"{base}{reverse('admin:bulkwrites_job_change', args=[job.pk])}")
    expect(page.locator("#job-status")).to_have_text("running")
    assert Job.objects.status_of(job.pk) == JobStatus.RUNNING
    page.locator("#action-cancel").click()
    page.locator("#confirm-cancel-yes").click()
    # The worker stops and the page shows what it wrote.
    expect(page.locator("ul.messagelist")).to_contain_text(f"Job {job.pk} cancelled.")
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(page.locator("#job-page")).to_have_attribute("data-finished", "1")
    agreeing: list[int] = []  # consecutive checks where no slice is leased and the ledger matches the table

    def settled() -> bool:
        job.refresh_from_db()
        idle = not Slice.objects.filter(job=job).exclude(leased_by="").exists()
        if idle and job.succeeded_items == len(scan(table)):
            agreeing.append(job.succeeded_items)
        else:
            agreeing.clear()
        return len(agreeing) >= 2 and agreeing[-1] == agreeing[-2]

    wait_or_explain(settled, timeout=20, what="the worker to stop and the ledger to match the table", why=why)
    assert job.status == JobStatus.CANCELLED
    assert 0 < job.succeeded_items < count
    assert job.failed_items == job.skipped_items == 0
    page.reload()
    assert int_text(page, "#count-succeeded") == job.succeeded_items
    assert int_text(page, "#count-pending") == count - job.succeeded_items
    expect(page.locator("#action-resume")).to_be_visible()
    expect(page.locator("#action-cancel")).to_have_count(0)


def test_operator_verifies_and_repairs_from_the_job_page(
    live_server: Any,
    page: Page,
    admin_user: Any,
    make_table: Any,
    scan: Any,
    dynamodb: Any,
    start_worker: Any,
    rq_queue: Any,
    screenshot_dir: Any,
) -> None:
    """Verify finds what changed behind the job's back; Repair puts it right; the page follows by itself."""
    base = live_server.url
    table = make_table()
    source = "pk,n:N,tags:SS\n" + "".join(f'k{i:04d},{i},"[""a"", ""b{i % 3}""]"\n' for i in range(400))
    job = create.job_create_from_file(
        upload=io.BytesIO(source.encode()), file_name="rows.csv", table_name=table, created_by=admin_user
    )
    worker = start_worker()

    def why() -> str:
        return explain(job, worker, rq_queue)

    control.job_start(job=job)
    wait_or_explain(lambda: Job.objects.get(pk=job.pk).is_finished, timeout=60, what="the job to end", why=why)
    expected = {item["pk"]["S"]: item for item in scan(table)}
    for key in ("k0007", "k0100", "k0399"):
        dynamodb.delete_item(TableName=table, Key={"pk": {"S": key}})
    for key in ("k0010", "k0011"):
        dynamodb.put_item(TableName=table, Item={"pk": {"S": key}, "n": {"N": "-1"}})

    log_in(page, base, "root")
    page.goto(f"{base}{reverse('admin:bulkwrites_job_change', args=[job.pk])}")
    expect(page.locator("#verification-none")).to_be_visible()
    page.locator("#verify").click()
    expect(page.locator("ul.messagelist")).to_contain_text(f"of job {job.pk} queued")
    # The page follows the verification by itself and reloads once it has finished.
    expect(page.locator("#verification-status")).to_have_text("finished", timeout=60_000)
    expect(page.locator("#verification-missing")).to_have_text("3")
    expect(page.locator("#verification-different")).to_have_text("2")
    expect(page.locator("#verification-verified")).to_have_text("395")
    rows = page.locator("#mismatches tbody tr")
    expect(rows).to_have_count(5)
    expect(page.locator("#mismatches")).to_contain_text("k0010")
    expect(page.locator("#mismatches")).to_contain_text('{"N":"10"} → {"N":"-1"}')
    page.screenshot(path=str(screenshot_dir / "job-verified.png"), full_page=True)
    page.locator("#mismatches-link").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(5)
    page.go_back()

    page.locator("#action-repair").click()
    expect(page.locator("ul.messagelist")).to_contain_text("sent again, then verified again")
    # The job runs again, then the re-check: the page reloads after each and ends on the re-check.
    expect(page.locator("#verifications tbody tr")).to_have_count(2, timeout=90_000)
    expect(page.locator("#verification-status")).to_have_text("finished", timeout=60_000)
    expect(page.locator("#verification-verified")).to_have_text("5")
    expect(page.locator("#verification-missing")).to_have_text("0")
    expect(page.locator("#action-repair")).to_have_count(0)
    page.screenshot(path=str(screenshot_dir / "job-repaired.png"), full_page=True)
    assert {item["pk"]["S"]: item for item in scan(table)} == expected
