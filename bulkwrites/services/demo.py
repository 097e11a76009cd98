"""What ``make run`` sets up so an operator can try bulkwrites at once."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from bulkwrites.dynamo import client as dynamo_client

DEMO_TABLE = "bulkwrites-demo"
DEMO_RECORDS_TABLE = "bulkwrites-demo-records"  # for "Copy to DynamoDB" on the demo shop
DEMO_ROWS = 1000


def demo_setup() -> Iterator[str]:
    from demo.seed import seed_demo

    yield ensure_admin_user()
    yield ensure_table(DEMO_TABLE)
    yield ensure_table(DEMO_RECORDS_TABLE, key="id", key_type="N", sort_key=None)
    yield seed_demo()
    yield write_demo_file(Path(settings.BASE_DIR) / ".local" / "demo" / "demo-items.csv")


def ensure_admin_user() -> str:
    username = os.environ.get("BULKWRITES_ADMIN_USER", "admin")
    password = os.environ.get("BULKWRITES_ADMIN_PASSWORD", "admin")
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username, defaults={"is_staff": True, "is_superuser": True})
    if created:
        user.set_password(password)
        user.save()
        return f"admin user {username!r} created"
    return f"admin user {username!r} exists"


def ensure_table(name: str, *, key: str = "pk", key_type: str = "S", sort_key: str | None = "sk") -> str:
    """A demo table; by default keyed like many real ones (string partition, number sort key)."""
    client = dynamo_client.reading_client()
    if name in client.list_tables().get("TableNames", []):
        return f"table {name!r} exists at {dynamo_client.endpoint_label()}"
    attributes = [{"AttributeName": key, "AttributeType": key_type}]
    schema = [{"AttributeName": key, "KeyType": "HASH"}]
    if sort_key:
        attributes.append({"AttributeName": sort_key, "AttributeType": "N"})
        schema.append({"AttributeName": sort_key, "KeyType": "RANGE"})
    client.create_table(
        TableName=name, AttributeDefinitions=attributes, KeySchema=schema, BillingMode="PAY_PER_REQUEST"
    )
    client.get_waiter("table_exists").wait(TableName=name)
    return f"table {name!r} created at {dynamo_client.endpoint_label()}"


def write_demo_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["pk", "sk", "name", "price:N", "active:BOOL", "tags:SS", "attributes:M"])
        for n in range(1, DEMO_ROWS + 1):
            writer.writerow(
                [
                    f"customer#{n % 97:03d}",
                    n,
                    f"Order {n}",
                    f"{n * 1.25:.2f}",
                    "true" if n % 3 else "false",
                    json.dumps(["demo", f"batch-{n % 5}"]),
                    json.dumps({"channel": "web" if n % 2 else "store", "items": n % 7 + 1}),
                ]
            )
    return f"demo file {path} ({DEMO_ROWS} rows) — upload it in the admin: Jobs → Add"
