"""The preview's estimate: write units, then duration and cost from what DescribeTable says (no server)."""

from __future__ import annotations

import pytest

from bulkwrites.dynamo.estimates import Prices, TableCapacity, estimate_writes, write_units

PRICES = Prices(on_demand_per_million_writes=0.625, provisioned_wcu_hour=0.00065, on_demand_assumed_wcu=4000)

ON_DEMAND = {
    "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
    "ProvisionedThroughput": {"WriteCapacityUnits": 0},
}
PROVISIONED = {"ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 100}}  # no summary: provisioned


@pytest.mark.parametrize(
    ("size", "delete", "units"),
    [(1, False, 1), (1024, False, 1), (1025, False, 2), (409_600, False, 400), (5000, True, 1)],
)
def test_write_units_are_ceil_of_size_in_kb_for_puts_and_one_for_deletes(size: int, delete: bool, units: int) -> None:
    assert write_units(size, delete=delete) == units


def test_capacity_from_describe_table() -> None:
    assert TableCapacity.from_describe_table(PROVISIONED) == TableCapacity("PROVISIONED", provisioned_wcu=100)
    table = {
        **ON_DEMAND,
        "OnDemandThroughput": {"MaxWriteRequestUnits": 2000},
        "WarmThroughput": {"WriteUnitsPerSecond": 12000, "Status": "ACTIVE"},
        "TableClassSummary": {"TableClass": "STANDARD_INFREQUENT_ACCESS"},
        "GlobalSecondaryIndexes": [{}, {}],
        "LocalSecondaryIndexes": [{}],
    }
    capacity = TableCapacity.from_describe_table(table)
    assert capacity == TableCapacity(
        "PAY_PER_REQUEST",
        max_write_units=2000,
        warm_write_units=12000,
        table_class="STANDARD_INFREQUENT_ACCESS",
        indexes=3,
    )
    assert capacity.on_demand
    # -1 is what DynamoDB reports for "no maximum".
    assert (
        TableCapacity.from_describe_table(
            {**ON_DEMAND, "OnDemandThroughput": {"MaxWriteRequestUnits": -1}}
        ).max_write_units
        == 0
    )


def test_on_demand_without_a_cap_assumes_the_configured_rate_and_says_so() -> None:
    estimate = estimate_writes(2_000_000, TableCapacity.from_describe_table(ON_DEMAND), rate_cap=None, prices=PRICES)
    assert estimate.rate_wcu == 4000
    assert estimate.seconds == 500
    assert estimate.cost_usd == pytest.approx(1.25)
    assert "assumed 4,000 WCU/s" in estimate.rate_basis
    assert "$0.625 per million" in estimate.cost_basis
    assert any("ceil(item size / 1 KB)" in a for a in estimate.assumptions)


def test_on_demand_prefers_the_cap_then_warm_throughput_within_the_table_maximum() -> None:
    warm = TableCapacity("PAY_PER_REQUEST", warm_write_units=10_000)
    assert estimate_writes(1000, warm, rate_cap=None, prices=PRICES).rate_wcu == 10_000
    assert estimate_writes(1000, warm, rate_cap=250, prices=PRICES).rate_basis == "the job's cap of 250 WCU/s"
    capped_table = TableCapacity("PAY_PER_REQUEST", warm_write_units=10_000, max_write_units=500)
    estimate = estimate_writes(1000, capped_table, rate_cap=2000, prices=PRICES)
    assert (estimate.rate_wcu, estimate.seconds) == (500, 2)
    assert "maximum of 500" in estimate.rate_basis


def test_provisioned_runs_at_the_table_capacity_or_a_lower_cap_and_costs_the_capacity_for_the_time() -> None:
    table = TableCapacity.from_describe_table(PROVISIONED)
    estimate = estimate_writes(360_000, table, rate_cap=None, prices=PRICES)
    assert (estimate.rate_wcu, estimate.seconds) == (100, 3600)
    assert estimate.cost_usd == pytest.approx(100 * 0.00065)  # 100 WCU for one hour
    assert "paid whether the job runs or not" in estimate.cost_basis
    assert estimate_writes(360_000, table, rate_cap=50, prices=PRICES).seconds == 7200
    assert estimate_writes(360_000, table, rate_cap=500, prices=PRICES).rate_wcu == 100  # the table is the limit


def test_what_the_estimate_cannot_count_is_said() -> None:
    table = TableCapacity("PROVISIONED", provisioned_wcu=0, table_class="STANDARD_INFREQUENT_ACCESS", indexes=2)
    estimate = estimate_writes(10, table, rate_cap=None, prices=PRICES, deletes=True)
    assert estimate.seconds is None
    assert "no provisioned write capacity" in estimate.rate_basis
    text = " ".join(estimate.assumptions)
    assert "1 write unit per delete" in text
    assert "2 secondary index(es)" in text
    assert "STANDARD_INFREQUENT_ACCESS" in text
