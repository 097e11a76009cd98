"""Seed the demo shop: a few thousand customers and orders, the same every time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from demo.models import Customer, Order

COUNTRIES = ["DE", "FR", "GB", "US", "NL", "ES", "IT", "PL"]


def seed_demo(*, customers: int = 1000, orders: int = 4000) -> str:
    if Customer.objects.exists():
        return f"demo shop exists ({Customer.objects.count()} customers, {Order.objects.count()} orders)"
    rng = random.Random(42)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    Customer.objects.bulk_create(
        Customer(
            name=f"Customer {n}",
            email=f"customer{n}@example.com",
            country=rng.choice(COUNTRIES),
            vip=rng.random() < 0.1,
            created_at=start + timedelta(minutes=n),
        )
        for n in range(1, customers + 1)
    )
    ids = list(Customer.objects.values_list("id", flat=True))
    notes = ["", "", "gift wrap", "=SUM(A1:A2)", "leave at the door"]
    Order.objects.bulk_create(
        Order(
            customer_id=rng.choice(ids),
            number=f"ORD-{n:06d}",
            total=Decimal(rng.randint(100, 100_000)) / 100,
            status=rng.choice(Order.Status.values),
            placed_at=start + timedelta(hours=n),
            note=rng.choice(notes),
        )
        for n in range(1, orders + 1)
    )
    return f"demo shop seeded ({customers} customers, {orders} orders)"
