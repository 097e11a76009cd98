"""The pages that must tell the truth at a glance, in headless Chromium: the preview as a table with its
estimate, the job page while staging and with no worker, the throughput chart, the job list.

Cancel's confirmation is walked in test_admin_browser.py, on a job really running. Screenshots go to
``artifacts/screenshots/``; the README's (docs/*.png) are copies of the ones named below.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import Page, expect

from bulkwrites.models import Job, JobStatus, SourceKind
from bulkwrites.services import control, create
from faultproxy import FaultProxy
from tests.browser.conftest import VIEWPORT, explain, live_log, log_in
from tests.rq_helpers import registered_worker

pytestmark = pytest.mark.browser

BIG_INVALID_ROW = 7
BIG_NAME = "lorem-ipsum-" * 75  # 900 characters without a space: wrapped nowhere


def no_horizontal_overflow(page: Page) -> int:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORT["width"], f"the page is {width} px wide in a {VIEWPORT['width']} px window"
    return int(width)


def test_the_preview_is_a_table_that_keeps_its_layout(
    live_server: Any, page: Page, admin_user: Any, make_table: Any, screenshot_dir: Any
) -> None:
    base = live_server.url
    table = make_table(sk="sk", sk_type="N")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["pk", "sk", "name", "price:N", "active:BOOL", "tags:SS", "body"])
    for n in range(1, 13):
        if n == BIG_INVALID_ROW:  # a big row whose price is not a number
            writer.writerow([f"item-{n:02d}", n, BIG_NAME, "abc", "true", "", ""])
        else:  # ~1.5 KB each: 2 write units
            writer.writerow([f"item-{n:02d}", n, f"Item {n}", f"{n}.50", "true", '["a","b"]', "y" * 1500])
    job = create.job_create_from_file(
        upload=io.BytesIO(out.getvalue().encode()),
        file_name="typed.csv",
        table_name=table,
        created_by=admin_user,
        rate_limit_wcu=2,
    )
    log_in(page, base, "root")
    page.goto(f"{base}{reverse('admin:bulkwrites_job_preview', args=[job.pk])}")

    # The first items as columns: the key attributes first, each header with its DynamoDB type.
    headers = page.locator("#sample-items thead th")
    texts = [" ".join(t.split()).lower() for t in headers.all_inner_texts()]  # the admin's CSS upper-cases them
    assert texts[:2] == ["#", "dynamodb json"]
    assert texts[2:] == ["pk key s", "sk key n", "name s", "price n", "active bool", "tags ss", "body s"]
    rows = page.locator("#sample-items tbody tr")
    expect(rows).to_have_count(10)
    first = rows.nth(0).locator("td")
    assert [first.nth(i).inner_text() for i in (2, 3, 4, 5, 6, 7)] == [
        "item-01",
        "1",
        "Item 1",
        "1.5",
        "true",
        "{a, b}",
    ]
    # The raw DynamoDB JSON is one click away.
    raw = rows.nth(0).locator("td.bw-json pre")
    expect(raw).to_be_hidden()
    rows.nth(0).locator("td.bw-json summary").click()
    expect(raw).to_be_visible()
    expect(raw).to_contain_text('"price": {\n  "N": "1.5"\n }')

    # The big invalid row does not stretch the page, and its reason is not one word a line.
    no_horizontal_overflow(page)
    big = page.locator("#invalid-rows tbody tr").filter(has_text=str(BIG_INVALID_ROW)).first
    reason = big.locator("td.bw-reason")
    expect(reason).to_have_text("column 'price': 'abc' is not a number")
    box = reason.bounding_box()
    assert box is not None
    assert box["width"] >= 250, box
    assert box["height"] <= 3 * 24, f"the reason wraps into {box['height']} px: {box}"
    # The row as read is cut to one line; all of it is one click away.
    full = big.locator("td.bw-raw pre")
    expect(full).to_be_hidden()
    summary = big.locator("td.bw-raw summary")
    assert summary.bounding_box()["height"] <= 24  # type: ignore[index]
    summary.click()
    expect(full).to_be_visible()
    assert BIG_NAME in full.inner_text()
    no_horizontal_overflow(page)

    # The estimate: 11 valid rows of 2 units; at the job's cap of 2 WCU/s, 11 s; an estimate, said so.
    expect(page.locator("#estimate-units")).to_have_text("22")
    expect(page.locator("#estimate-duration")).to_contain_text("~11 s")
    expect(page.locator("#estimate-duration")).to_contain_text("the job's cap of 2 WCU/s")
    expect(page.locator("#estimate-cost")).to_contain_text("$0.0000")
    expect(page.locator("#estimate-cost")).to_contain_text("on-demand: $0.625 per million write request units")
    expect(page.locator("#estimate")).to_contain_text("not a quote")
    expect(page.locator("#estimate-assumptions")).to_contain_text("BULKWRITES_PRICE_")
    rows.nth(0).locator("td.bw-json summary").click()  # closed again for the picture
    full.evaluate("pre => pre.closest('details').open = false")
    page.screenshot(path=str(screenshot_dir / "preview.png"), full_page=True)


def test_the_job_page_while_staging_and_with_no_worker(
    live_server: Any, page: Page, admin_user: Any, rq_queue: Any, screenshot_dir: Any
) -> None:
    """What the page says before a job has items: how far staging got, and that nobody serves the queue.

    The job row is put where staging puts it (tests/integration/test_pages.py proves staging writes it
    there while its transaction is open); the page's poller must follow it without a reload.
    """
    base = live_server.url
    job = Job.objects.create(
        table_name="orders",
        region="us-east-1",
        key_schema=[{"name": "pk", "type": "S", "role": "HASH"}],
        source_kind=SourceKind.FILE,
        source_name="orders-2024.csv",
        source_size=9_000_000,
        status=JobStatus.QUEUED,
        queue=rq_queue.name,
        created_by=admin_user,
        staging_started_at=timezone.now(),
        staging_rows_read=12_000,
        staging_rows_estimate=60_000,
    )
    log_in(page, base, "root")
    page.goto(f"{base}{reverse('admin:bulkwrites_job_change', args=[job.pk])}")

    expect(page.locator("#job-status")).to_have_text("queued")
    expect(page.locator("#job-state")).to_have_text("— staging: 12,000 of ~60,000 rows read")
    expect(page.locator("#count-total")).to_have_text("staging…")
    warning = page.locator("#worker-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text(f"No worker is listening on queue '{rq_queue.name}'")
    page.screenshot(path=str(screenshot_dir / "job-staging.png"), full_page=True)

    # Staging goes on, and a worker shows up: the page follows by itself.
    Job.objects.filter(pk=job.pk).update(staging_rows_read=30_000, staging_rows_estimate=61_000)
    with registered_worker(rq_queue, f"browser-test-{job.pk}"):
        expect(page.locator("#job-state")).to_have_text("— staging: 30,000 of ~61,000 rows read")
        expect(warning).to_be_hidden()
    assert [e["kind"] for e in live_log(page)].count("load") == 1  # no reload: the poller did it

    # Staged: the total is the items'; the state line says no more than the status.
    Job.objects.filter(pk=job.pk).update(
        staged_at=timezone.now(), total_items=60_500, status=JobStatus.PAUSED, staging_rows_read=60_500
    )
    expect(page.locator("#count-total")).to_have_text("60500")
    expect(page.locator("#job-state")).to_have_text("")


def test_the_throughput_chart_has_a_time_axis_and_the_throttled_share_and_stays_after_the_end(
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
    count = 2000
    body = "x" * 1500  # ~1.5 KB items: 2 write units each, so WCU/s runs at twice items/s
    source = "pk,n:N,body\n" + "".join(f"k{i:05d},{i},{body}\n" for i in range(count))
    job = create.job_create_from_file(
        upload=io.BytesIO(source.encode()),
        file_name="throttled.csv",
        table_name=table,
        created_by=admin_user,
        rate_limit_wcu=400,  # 4,000 units: ~10 s at least, whatever the machine: several points on the chart
        slice_size=200,
    )
    fault_proxy.configure(throttle_share=0.15, throttle_code="ThrottlingException", seed=7)
    worker = start_worker(AWS_ENDPOINT_URL_DYNAMODB=fault_proxy.url)
    log_in(page, base, "root")
    control.job_start(job=job)
    page.goto(f"{base}{reverse('admin:bulkwrites_job_change', args=[job.pk])}")
    try:
        expect(page.locator("#job-page")).to_have_attribute("data-finished", "1", timeout=120_000)
    except AssertionError as exc:
        pytest.fail(f"{exc}\n{explain(job, worker, rq_queue)}", pytrace=False)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, explain(job, worker, rq_queue)
    assert len(scan(table)) == count
    assert job.throttled_calls > 0

    # Drawn on the finished job's page from what the page was served (the poller has stopped).
    chart = page.locator("#throughput-chart")
    expect(chart.locator("canvas")).to_be_visible()
    expect(page.locator("#chart-empty")).to_be_hidden()
    legend = " ".join(chart.locator(".u-legend").inner_text().split())
    for label in ("items/s", "WCU/s", "throttled calls %"):
        assert label in legend, legend
    times, items, wcu, throttled = page.evaluate("window.bulkwritesChart.data()")
    assert len(times) >= 4
    assert times == sorted(times)
    assert job.started_at is not None
    assert job.finished_at is not None
    assert job.started_at.timestamp() - 1 <= times[0] <= times[-1] <= job.finished_at.timestamp() + 1
    assert max(items) > 0
    assert max(wcu) == pytest.approx(2 * max(items), rel=0.05)
    assert max(throttled) > 0  # the share of calls throttled, in %, overlaid
    assert all(0 <= share <= 100 for share in throttled)
    # A time axis: its ticks are clock times (":ss" or "hh:mm"), drawn on the canvas.
    x_ticks = page.evaluate("window.bulkwritesChart.ticks()")
    assert x_ticks, x_ticks
    assert all(re.search(r":\d\d", tick) for tick in x_ticks), x_ticks

    # Opened again later, the chart is the same.
    page.reload()
    expect(chart.locator("canvas")).to_be_visible()
    again = page.evaluate("window.bulkwritesChart.data()")
    assert again[0] == times
    no_horizontal_overflow(page)
    page.screenshot(path=str(screenshot_dir / "job-page-chart.png"), full_page=True)


def test_the_job_list_is_honest(live_server: Any, page: Page, admin_user: Any, screenshot_dir: Any) -> None:
    base = live_server.url
    schema = [{"name": "pk", "type": "S", "role": "HASH"}]

    def job(name: str, status: str, hours_old: float = 0.1, **fields: Any) -> Job:
        made = Job.objects.create(
            table_name="orders",
            key_schema=schema,
            source_kind=SourceKind.FILE,
            source_name=name,
            status=status,
            created_by=admin_user,
            **fields,
        )
        Job.objects.filter(pk=made.pk).update(created_at=timezone.now() - timedelta(hours=hours_old))
        return made

    expired = job("abandoned.csv", JobStatus.DRAFT, hours_old=30)
    draft = job("fresh.csv", JobStatus.DRAFT)
    discarded = job("discarded.csv", JobStatus.CANCELLED)
    unreadable = job(
        "broken.json",
        JobStatus.FAILED,
        error_code="SourceUnreadable",
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    mixed = job(
        "customers.csv",
        JobStatus.COMPLETED_WITH_FAILURES,
        total_items=1_250_000,
        succeeded_items=1_000_000,
        failed_items=200_000,
        skipped_items=50_000,
    )
    running = job(
        "orders.csv", JobStatus.RUNNING, total_items=80_000, succeeded_items=20_000, started_at=timezone.now()
    )
    log_in(page, base, "root")
    page.goto(f"{base}{reverse('admin:bulkwrites_job_changelist')}")

    def row(job: Job) -> Any:
        return page.locator(f"#result_list tbody tr:has(th.field-id a:text-is('{job.pk}'))")

    expect(page.locator("#result_list tbody tr")).to_have_count(5)
    expect(row(expired)).to_have_count(0)  # expired drafts are hidden by default
    # A job that wrote nothing has no bar (certainly not a red one at 100 %), but words.
    for nothing, words in (
        (draft, "draft: nothing sent"),
        (discarded, "discarded: nothing sent"),
        (unreadable, "nothing written"),
    ):
        expect(row(nothing).locator(".bw-progress")).to_have_count(0)
        expect(row(nothing).locator("td.field-progress")).to_have_text(words)
    # A bar of outcomes: a job with failures is not one red (or green) block.
    segments = row(mixed).locator(".bw-seg")
    widths = [segments.nth(i).evaluate("s => s.style.width") for i in range(3)]
    assert widths == ["80%", "16%", "4%"], widths
    expect(row(mixed).locator(".bw-counts-line")).to_have_text("1,000,000 / 200,000 / 50,000 of 1,250,000")
    expect(row(running).locator(".bw-counts-line")).to_have_text("20,000 / 0 / 0 of 80,000")

    # Every column, the counts included, is inside the list: nothing is cut off or scrolled away.
    results = page.locator("#changelist .results")
    overflow = results.evaluate("r => r.scrollWidth - r.clientWidth")
    assert overflow <= 0, f"the job list scrolls sideways by {overflow} px"
    right = results.bounding_box()["x"] + results.bounding_box()["width"]  # type: ignore[index]
    for cell in page.locator(".bw-counts-line, td.field-created").all():
        box = cell.bounding_box()
        assert box is not None
        assert box["x"] + box["width"] <= right + 1, box
    no_horizontal_overflow(page)
    page.screenshot(path=str(screenshot_dir / "job-list.png"), full_page=True)

    # The expired draft is one filter away, and named so.
    page.get_by_role("link", name="include expired drafts").click()
    expect(row(expired)).to_have_count(1)
    page.get_by_role("link", name="expired drafts only").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(row(expired)).to_have_count(1)
