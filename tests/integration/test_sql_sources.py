"""PostgreSQL sources: saved in the admin, run from the admin and from the CLI, read-only."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from bulkwrites.models import Job, JobStatus, SourceKind, SqlSource
from demo.models import Customer, Order
from tests.conftest import run_cli

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("sql_reader")]


@pytest.fixture
def orders() -> list[Order]:
    customer = Customer.objects.create(name="Ada", email="ada@example.com", country="GB")
    return [
        Order.objects.create(customer=customer, number=f"N-{n}", total=Decimal("1.10") * n, status="paid")
        for n in range(1, 41)
    ]


def test_saved_query_previewed_and_copied(
    admin_client_tx: Any, orders: list[Order], make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table(pk="number", pk_type="S")
    add = admin_client_tx.post(
        reverse("admin:bulkwrites_sqlsource_add"),
        {
            "name": "paid orders",
            "connection": "reader",
            "query": "SELECT number, total, status, customer_id AS customer FROM demo_order WHERE status = 'paid';",
            "table": "",
        },
    )
    assert add.status_code == 302, add.content.decode()[:3000]
    source = SqlSource.objects.get()
    assert source.query.endswith("'paid'")  # normalised: no trailing semicolon

    page = admin_client_tx.get(reverse("admin:bulkwrites_sqlsource_change", args=[source.pk]))
    assert 'id="new-job-from-source"' in page.content.decode()
    response = admin_client_tx.post(
        reverse("admin:bulkwrites_sqlsource_new_job", args=[source.pk]),
        {"table_name": table, "operation": "put", "duplicate_policy": "last", "concurrency": 2, "workers": 1,
         "max_attempts": 10, "batch_size": 25},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:3000]
    job = Job.objects.get()
    assert job.source_kind == SourceKind.SQL
    assert job.source_spec == {"connection": "reader", "query": source.query}
    assert "password" not in job.source_detail.lower()

    preview = admin_client_tx.get(response["Location"])
    assert preview.context["preview"].rows == 40
    assert preview.context["preview"].valid == 40
    assert scan(table) == []

    admin_client_tx.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]))
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    items = {i["number"]["S"]: i for i in scan(table)}
    assert len(items) == 40
    assert items["N-3"]["total"] == {"N": "3.3"}
    assert items["N-3"]["customer"] == {"N": str(orders[0].customer_id)}


def test_a_table_picked_from_the_lists(admin_client_tx: Any, orders: list[Order]) -> None:
    form_page = admin_client_tx.get(reverse("admin:bulkwrites_sqlsource_add") + "?connection=reader")
    assert "public.demo_order" in form_page.content.decode()
    response = admin_client_tx.post(
        reverse("admin:bulkwrites_sqlsource_add"),
        {"name": "orders table", "connection": "reader", "query": "", "table": "public.demo_order",
         "columns": ["number", "total"]},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:3000]
    source = SqlSource.objects.get()
    assert source.column_list == ["number", "total"]


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM demo_order",
        "SELECT 1; DROP TABLE demo_order",
        "UPDATE demo_order SET total = 0",
        "SELECT * INTO x FROM demo_order",
    ],
)
def test_anything_but_one_read_only_query_is_refused(admin_client_tx: Any, orders: list[Order], query: str) -> None:
    response = admin_client_tx.post(
        reverse("admin:bulkwrites_sqlsource_add"),
        {"name": "bad", "connection": "reader", "query": query, "table": ""},
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["query"]
    assert not SqlSource.objects.exists()
    assert Order.objects.count() == 40


def test_sql_sources_need_their_permissions(client: Any, django_user_model: Any, orders: list[Order]) -> None:
    source = SqlSource.objects.create(name="s", connection="reader", query="SELECT number FROM demo_order")
    user = django_user_model.objects.create_user("op", "op@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["run_job", "use_sql_sources"]))
    client.force_login(user)
    assert client.get(reverse("admin:bulkwrites_sqlsource_new_job", args=[source.pk])).status_code == 200
    assert client.get(reverse("admin:bulkwrites_sqlsource_add")).status_code == 403  # manage_sources

    user.user_permissions.set(Permission.objects.filter(codename__in=["run_job"]))
    client.force_login(django_user_model.objects.get(pk=user.pk))
    assert client.get(reverse("admin:bulkwrites_sqlsource_new_job", args=[source.pk])).status_code == 403


def _dsn() -> str:
    """The reader role by URL (a terminal may give one instead of a connection name)."""
    db = connection.settings_dict
    return f"postgres://bw_test_reader_{os.getpid()}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def test_cli_copy_from_a_table_by_url(orders: list[Order], make_table: Any, scan: Any, run_worker: Any) -> None:
    table = make_table(pk="number", pk_type="S")
    code, out, _ = run_cli(
        "copy", "--database", _dsn(), "--from-table", "public.demo_order", "--columns", "number,total", "--table", table
    )
    assert code == 0
    job = Job.objects.get()
    assert out.strip() == f"job {job.pk}"
    assert job.staged_at is not None  # read in this process: the URL never reaches a worker
    assert job.source_spec["connection"] == _dsn()  # no password in it to hide here; redacted when there is
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert {i["number"]["S"] for i in scan(table)} == {o.number for o in orders}


def test_cli_copy_refuses_a_write_and_changes_nothing(orders: list[Order], make_table: Any) -> None:
    from django.core.management.base import CommandError

    table = make_table()
    with pytest.raises(CommandError, match="refused"):
        call_command("bulkwrite", "copy", "--database", "reader", "--query", "DELETE FROM demo_order", "--table", table)
    assert Order.objects.count() == 40
    assert not Job.objects.exists()


def test_cli_copy_with_an_alias_is_read_by_the_worker(
    orders: list[Order], make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table(pk="number", pk_type="S")
    code, _, _ = run_cli(
        "copy", "--database", "reader", "--query", "SELECT number, status FROM demo_order", "--table", table
    )
    assert code == 0
    job = Job.objects.get()
    assert job.staged_at is None
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.total_items == 40
    assert len(scan(table)) == 40


def test_a_broken_query_fails_the_job_with_the_reason(make_table: Any, run_worker: Any) -> None:
    table = make_table()
    code, _, _ = run_cli("copy", "--database", "reader", "--query", "SELECT * FROM no_such_table", "--table", table)
    assert code == 0
    run_worker()
    job = Job.objects.get()
    assert job.status == JobStatus.FAILED
    assert "no_such_table" in job.error_message


def test_building_the_form_opens_no_connection(monkeypatch: Any) -> None:
    """The catalog (tables, columns) is asked by the view; the form only uses what it is handed."""
    from bulkwrites.forms import SqlSourceForm
    from bulkwrites.sources import postgres

    def no_connection(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the form opened a PostgreSQL connection")

    monkeypatch.setattr(postgres, "list_tables", no_connection)
    monkeypatch.setattr(postgres, "list_columns", no_connection)
    form = SqlSourceForm(data={"connection": "reader", "table": "public.demo_order"})
    assert ("reader", "reader") in form.fields["connection"].choices  # type: ignore[attr-defined]
    assert form.table_choices == []
