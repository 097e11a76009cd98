"""Jobs whose source is not a file, in a real browser: "Copy to DynamoDB" on demo records, and a saved
PostgreSQL source run from its admin page. Headless Chromium, the live server, a real RQ worker process,
real DynamoDB Local; screenshots go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, expect

from bulkwrites.models import Job, JobStatus, SourceKind, SqlSource
from demo.models import Customer, Order
from tests.browser.conftest import explain, log_in
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.browser

HUNDRED = re.compile(r"^100(\.0)?%$")
PAID_QUERY = "SELECT number, total, status FROM demo_order WHERE status = 'paid'"


@pytest.fixture
def worker(worker_process: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A real worker process, started before the test body and not waited for.

    Django takes seconds to boot in it, more on a busy machine; until it listens, a confirmed job just
    waits in the RQ queue, and the job page shows it queued. Nothing here needs it listening sooner.
    """
    return worker_process()


def confirm_and_finish(page: Page, job: Job, worker: WorkerProcess, rq_queue: Any) -> None:
    """Click "Confirm and start" on the preview; wait until the job page shows the finished job at 100%."""

    def why() -> str:
        return explain(job, worker, rq_queue)

    page.locator("#confirm-start").click()
    try:
        page.wait_for_url(f"**{reverse('admin:bulkwrites_job_change', args=[job.pk])}", timeout=30_000)
        expect(page.locator("ul.messagelist")).to_contain_text(f"Job {job.pk} queued.")
        # The page polls by itself and reloads once the job has finished (the worker may still be booting).
        expect(page.locator("#job-page")).to_have_attribute("data-finished", "1", timeout=60_000)
    except (AssertionError, PlaywrightError) as exc:
        pytest.fail(f"{exc}\n{why()}", pytrace=False)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, why()
    expect(page.locator("#job-status")).to_have_text(job.get_status_display())
    expect(page.locator("#job-percent")).to_have_text(HUNDRED)
    assert page.locator("#job-bar").evaluate("bar => bar.style.width") == "100%"
    expect(page.locator("#count-failed")).to_have_text("0")
    expect(page.locator("#count-pending")).to_have_text("0")


def test_copy_selected_customers_from_the_demo_admin(
    live_server: Any,
    page: Page,
    admin_user: Any,
    make_table: Any,
    scan: Any,
    worker: WorkerProcess,
    rq_queue: Any,
    screenshot_dir: Path,
) -> None:
    base = live_server.url
    customers = Customer.objects.bulk_create(
        Customer(
            name=f"Customer {n:02d}", email=f"customer{n}@example.com", country=("DE", "FR", "GB")[n % 3], vip=n == 12
        )
        for n in range(1, 31)
    )
    chosen = [customers[4], customers[11], customers[23]]
    table = make_table(pk="id", pk_type="N")
    log_in(page, base, "root")

    # The Customer changelist: tick 3 rows, pick the action, run it.
    page.goto(f"{base}{reverse('admin:demo_customer_changelist')}")
    expect(page.locator("#result_list tbody tr")).to_have_count(len(customers))
    for customer in chosen:
        page.check(f"input[name=_selected_action][value='{customer.pk}']")
    expect(page.locator("input[name=_selected_action]:checked")).to_have_count(3)
    assert "Copy to DynamoDB" in page.locator("select[name=action] option").all_inner_texts()
    page.select_option("select[name=action]", "copy_to_dynamodb")
    page.locator("button[name=index]").click()

    # The intermediate form: pick the table, read the records.
    form = page.locator("#copy-form")
    expect(form).to_be_visible()
    expect(page.locator("h1")).to_have_text("Copy 3 customers to DynamoDB")
    assert table in page.locator("select[name=table_name] option").all_inner_texts()
    page.select_option("select[name=table_name]", table)
    page.locator("#copy-apply").click()

    # The preview: 3 rows, all valid, nothing written yet.
    page.wait_for_url(re.compile(r"/preview/$"))
    expect(page.locator("#count-rows")).to_have_text("3")
    expect(page.locator("#count-valid")).to_have_text("3")
    expect(page.locator("#count-invalid")).to_have_text("0")
    page.screenshot(path=str(screenshot_dir / "copy-preview.png"), full_page=True)
    job = Job.objects.get()
    assert job.source_kind == SourceKind.QUERYSET
    assert job.status == JobStatus.DRAFT
    assert scan(table) == []

    confirm_and_finish(page, job, worker, rq_queue)
    expect(page.locator("#count-succeeded")).to_have_text("3")
    page.screenshot(path=str(screenshot_dir / "copy-job.png"), full_page=True)

    items = {int(i["id"]["N"]): i["name"]["S"] for i in scan(table)}
    assert items == {c.pk: c.name for c in chosen}


def test_run_a_postgresql_source(
    sql_reader: str,  # the connection "reader": a role that may only read the demo shop (before the worker starts)
    live_server: Any,
    page: Page,
    admin_user: Any,
    make_table: Any,
    scan: Any,
    worker: WorkerProcess,
    rq_queue: Any,
    screenshot_dir: Path,
) -> None:
    base = live_server.url
    customer = Customer.objects.create(name="Ada", email="ada@example.com", country="GB")
    statuses = [Order.Status.NEW, Order.Status.PAID, Order.Status.SHIPPED, Order.Status.CANCELLED, Order.Status.PAID]
    orders = Order.objects.bulk_create(
        Order(customer=customer, number=f"SO-{n:03d}", total=Decimal("7.35") * n, status=statuses[n % len(statuses)])
        for n in range(1, 41)
    )
    paid = {o.number: o for o in orders if o.status == Order.Status.PAID}
    assert 0 < len(paid) < len(orders)
    table = make_table(pk="number", pk_type="S")
    log_in(page, base, "root")

    # Admin → SQL sources → Add: a query through the reader connection (never the app's own, `default`).
    page.locator("tr.model-sqlsource th a").click()
    page.wait_for_url(f"{base}{reverse('admin:bulkwrites_sqlsource_changelist')}")
    page.locator(".object-tools a.addlink").click()
    page.wait_for_url(f"{base}{reverse('admin:bulkwrites_sqlsource_add')}")
    connections = page.locator("#id_connection option").all_inner_texts()
    assert "reader" in connections
    assert "default" not in connections
    # The table list follows the connection in the URL (the first connection listed may be another).
    page.goto(f"{base}{reverse('admin:bulkwrites_sqlsource_add')}?connection=reader")
    page.fill("#id_name", "paid orders")
    page.select_option("#id_connection", "reader")
    page.fill("#id_query", PAID_QUERY)
    assert "public.demo_order" in page.locator("#id_table option").all_inner_texts()  # the table list, unused
    page.select_option("#id_table", "")
    page.locator("input[name=_save]").click()
    page.wait_for_url(f"{base}{reverse('admin:bulkwrites_sqlsource_changelist')}")
    expect(page.locator("ul.messagelist")).to_contain_text("paid orders")
    source = SqlSource.objects.get()
    assert (source.connection, source.query, source.created_by) == ("reader", PAID_QUERY, admin_user)

    # Open it from the list; its page offers a new job.
    page.locator("#result_list a", has_text="paid orders").click()
    page.wait_for_url(f"{base}{reverse('admin:bulkwrites_sqlsource_change', args=[source.pk])}")
    expect(page.locator("#id_query")).to_have_value(PAID_QUERY)
    new_job = page.locator("#new-job-from-source")
    expect(new_job).to_have_text("New job from this source")
    page.screenshot(path=str(screenshot_dir / "sql-source.png"), full_page=True)
    new_job.click()

    # The target form: pick the table, read the rows.
    page.wait_for_url(f"{base}{reverse('admin:bulkwrites_sqlsource_new_job', args=[source.pk])}")
    expect(page.locator("#sql-job-form")).to_be_visible()
    expect(page.locator("pre.bw-item")).to_have_text(PAID_QUERY)
    page.select_option("#sql-job-form select[name=table_name]", table)
    page.locator("#sql-preview").click()

    # The preview: the paid orders, all valid, nothing written yet.
    page.wait_for_url(re.compile(r"/preview/$"))
    expect(page.locator("#count-rows")).to_have_text(str(len(paid)))
    expect(page.locator("#count-valid")).to_have_text(str(len(paid)))
    expect(page.locator("#count-invalid")).to_have_text("0")
    job = Job.objects.get()
    assert job.source_kind == SourceKind.SQL
    assert scan(table) == []

    confirm_and_finish(page, job, worker, rq_queue)
    expect(page.locator("#count-succeeded")).to_have_text(str(len(paid)))
    page.screenshot(path=str(screenshot_dir / "sql-job.png"), full_page=True)

    items = {i["number"]["S"]: i for i in scan(table)}
    assert set(items) == set(paid)
    for number, order in paid.items():
        assert set(items[number]["total"]) == {"N"}, items[number]
        assert Decimal(items[number]["total"]["N"]) == order.total, items[number]
        assert items[number]["status"] == {"S": "paid"}
