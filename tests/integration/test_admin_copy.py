"""'Copy to DynamoDB' on admin records: selected rows or everything the filters match."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from bulkwrites.models import Job, JobStatus, SourceKind
from demo.models import Customer, Order

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def shop() -> list[Customer]:
    customers = [
        Customer.objects.create(name=f"C{n}", email=f"c{n}@example.com", country="DE" if n % 2 else "FR", vip=n == 3)
        for n in range(1, 7)
    ]
    for n, customer in enumerate(customers):
        Order.objects.create(customer=customer, number=f"O-{n}", total=Decimal("12.50") * (n + 1), note="=1+1")
    return customers


def copy(client: Any, changelist: str, selected: list[int], *, select_across: bool = False, **fields: Any) -> Any:
    data = {
        "action": "copy_to_dynamodb",
        "_selected_action": [str(pk) for pk in selected],
        "select_across": "1" if select_across else "0",
        "index": "0",
        **fields,
    }
    return client.post(changelist, data)


def form_fields(table: str, **extra: Any) -> dict[str, Any]:
    return {
        "copy_apply": "1",
        "table_name": table,
        "operation": "put",
        "duplicate_policy": "last",
        "concurrency": 2,
        "workers": 1,
        "max_attempts": 10,
        "batch_size": 25,
        **extra,
    }


def start_and_run(client: Any, job: Job, run_worker: Any) -> None:
    """Start the job from its admin page, let a burst worker run it, reload it."""
    client.post(reverse("admin:bulkwrites_job_action", args=[job.pk, "start"]))
    run_worker()
    job.refresh_from_db()


def test_copy_selected_customers(
    admin_client_tx: Any, shop: list[Customer], make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table(pk="id", pk_type="N")
    changelist = reverse("admin:demo_customer_changelist")
    chosen = [shop[0].pk, shop[2].pk]

    intermediate = copy(admin_client_tx, changelist, chosen)
    assert intermediate.status_code == 200
    assert "Copy 2 customers to DynamoDB" in intermediate.content.decode()

    response = copy(admin_client_tx, changelist, chosen, **form_fields(table))
    assert response.status_code == 302, response.content.decode()[:3000]
    job = Job.objects.get()
    assert job.source_kind == SourceKind.QUERYSET
    assert job.source_name == "demo.Customer"
    assert "2 selected customers" in job.source_detail
    assert scan(table) == []  # read and staged, not written

    preview = admin_client_tx.get(response["Location"])
    assert preview.context["preview"].rows == 2
    assert preview.context["preview"].valid == 2

    start_and_run(admin_client_tx, job, run_worker)
    assert job.status == JobStatus.SUCCEEDED
    items = {int(i["id"]["N"]): i for i in scan(table)}
    assert set(items) == set(chosen)
    third = items[shop[2].pk]
    assert third["name"] == {"S": "C3"}
    assert third["vip"] == {"BOOL": True}
    assert third["created_at"]["S"].startswith(str(shop[2].created_at.year))


def test_copy_everything_the_filters_match_with_a_mapping(
    admin_client_tx: Any, shop: list[Customer], make_table: Any, scan: Any, run_worker: Any
) -> None:
    table = make_table(pk="order_no", pk_type="S")
    changelist = reverse("admin:demo_order_changelist") + "?customer__country__exact=DE"
    mapping = "number -> order_no\ntotal -> amount:N\ncustomer -> customer_id\nnote"
    first_order = Order.objects.first()
    assert first_order is not None
    response = copy(
        admin_client_tx,
        changelist,
        [first_order.pk],
        select_across=True,
        **form_fields(table, mapping=mapping),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    job = Job.objects.get()
    start_and_run(admin_client_tx, job, run_worker)
    assert job.status == JobStatus.SUCCEEDED, list(job.items.values_list("error_message", flat=True))
    items = {i["order_no"]["S"]: i for i in scan(table)}
    german = Order.objects.filter(customer__country="DE")
    assert set(items) == {o.number for o in german}
    order = german.first()
    assert order is not None
    assert items[order.number]["amount"] == {"N": str(order.total.normalize())}
    assert items[order.number]["customer_id"] == {"N": str(order.customer_id)}
    assert items[order.number]["note"] == {"S": "=1+1"}
    assert set(items[order.number]) == {"order_no", "amount", "customer_id", "note"}


def test_a_mapping_without_the_key_is_refused(admin_client_tx: Any, shop: list[Customer], make_table: Any) -> None:
    table = make_table(pk="sku", pk_type="S")
    response = copy(
        admin_client_tx,
        reverse("admin:demo_customer_changelist"),
        [shop[0].pk],
        **form_fields(table, mapping="name\nemail"),
    )
    assert response.status_code == 200
    assert "No field is mapped to the key attribute &#x27;sku&#x27;" in response.content.decode()
    assert not Job.objects.exists()


def test_the_action_is_only_offered_to_users_who_may_run_jobs(
    client: Any, django_user_model: Any, shop: list[Customer]
) -> None:
    user = django_user_model.objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_customer", "change_customer"]))
    client.force_login(user)
    changelist = reverse("admin:demo_customer_changelist")
    assert "copy_to_dynamodb" not in client.get(changelist).content.decode()
    copy(client, changelist, [shop[0].pk], **form_fields("t"))  # Django answers "no such action"
    assert not Job.objects.exists()


def test_copying_thousands_of_records_converts_them_in_worker_processes(
    admin_client_tx: Any, shop: list[Customer], make_table: Any, scan: Any, run_worker: Any
) -> None:
    # Over one conversion chunk (2,000 rows), so staging uses its process pool while it reads
    # the records through a server-side cursor on the same connection it COPYs with.
    customer = shop[0]
    Order.objects.bulk_create(
        Order(customer=customer, number=f"B-{n:05d}", total=Decimal(n) / 4, note=f"bulk {n}") for n in range(4500)
    )
    table = make_table(pk="order_no", pk_type="S")
    changelist = reverse("admin:demo_order_changelist")
    first_order = Order.objects.first()
    assert first_order is not None
    response = copy(
        admin_client_tx,
        changelist,
        [first_order.pk],
        select_across=True,
        **form_fields(table, mapping="number -> order_no\ntotal -> amount:N"),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    job = Job.objects.get()
    assert (job.total_items, job.failed_items) == (4506, 0)
    start_and_run(admin_client_tx, job, run_worker)
    assert (job.status, job.succeeded_items) == (JobStatus.SUCCEEDED, 4506)
    items = {i["order_no"]["S"]: i["amount"]["N"] for i in scan(table)}
    assert len(items) == 4506
    assert items["B-00007"] == "1.75"
    assert items["B-04499"] == "1124.75"
