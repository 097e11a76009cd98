"""What a job will cost in write units, dollars and time, estimated before it runs.

Plain arithmetic over what ``DescribeTable`` says of the table (billing mode, provisioned or
maximum throughput, warm throughput, table class, indexes) and prices handed in by the caller:
prices differ by region and change, so they are settings, never constants here. Every figure
comes with the assumptions it rests on, in words an operator reads next to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KB = 1024
PAY_PER_REQUEST = "PAY_PER_REQUEST"
PROVISIONED = "PROVISIONED"


def write_units(size: int, *, delete: bool) -> int:
    """Write units one request consumes: ceil(size / 1 KB) for a put, 1 for a delete."""
    if delete:
        return 1
    return max(1, math.ceil(size / KB))


@dataclass(frozen=True)
class TableCapacity:
    """The parts of ``DescribeTable`` that set what writing to a table costs and how fast it may go."""

    billing_mode: str  # PAY_PER_REQUEST or PROVISIONED
    provisioned_wcu: int = 0  # provisioned tables
    max_write_units: int = 0  # on-demand tables with a configured maximum (0: none)
    warm_write_units: int = 0  # what the table serves at once (0: not reported)
    table_class: str = "STANDARD"
    indexes: int = 0  # global and local secondary indexes

    @classmethod
    def from_describe_table(cls, table: Mapping[str, Any]) -> TableCapacity:
        mode = (table.get("BillingModeSummary") or {}).get("BillingMode") or PROVISIONED
        provisioned = (table.get("ProvisionedThroughput") or {}).get("WriteCapacityUnits") or 0
        maximum = (table.get("OnDemandThroughput") or {}).get("MaxWriteRequestUnits") or 0
        warm = (table.get("WarmThroughput") or {}).get("WriteUnitsPerSecond") or 0
        return cls(
            billing_mode=str(mode),
            provisioned_wcu=max(0, int(provisioned)),
            max_write_units=max(0, int(maximum)),
            warm_write_units=max(0, int(warm)),
            table_class=str((table.get("TableClassSummary") or {}).get("TableClass") or "STANDARD"),
            indexes=len(table.get("GlobalSecondaryIndexes") or ()) + len(table.get("LocalSecondaryIndexes") or ()),
        )

    @property
    def on_demand(self) -> bool:
        return self.billing_mode == PAY_PER_REQUEST


@dataclass(frozen=True)
class Prices:
    """USD prices of the table's region and class, and the rate assumed for an on-demand table."""

    on_demand_per_million_writes: float
    provisioned_wcu_hour: float
    on_demand_assumed_wcu: float


@dataclass(frozen=True)
class WriteEstimate:
    write_units: int
    rate_wcu: float  # the rate the duration assumes (0: none can be assumed)
    rate_basis: str
    seconds: float | None
    cost_usd: float
    cost_basis: str
    assumptions: tuple[str, ...]


def estimate_writes(
    units: int, table: TableCapacity, *, rate_cap: float | None, prices: Prices, deletes: bool = False
) -> WriteEstimate:
    """Duration and cost of ``units`` write units into ``table`` at the rate the job will get."""
    assumptions = [
        "1 write unit per delete (deleting an item larger than 1 KB costs more)"
        if deletes
        else "ceil(item size / 1 KB) write units per put, by DynamoDB's item-size rules"
    ]
    if table.indexes:
        assumptions.append(f"the table's {table.indexes} secondary index(es) cost extra writes, not counted here")
    if table.table_class != "STANDARD":
        assumptions.append(f"prices are the Standard class's; this table is {table.table_class}")
    if table.on_demand:
        rate, rate_basis = _on_demand_rate(table, rate_cap, prices)
        cost = units / 1_000_000 * prices.on_demand_per_million_writes
        cost_basis = f"on-demand: ${prices.on_demand_per_million_writes:g} per million write request units"
    else:
        rate, rate_basis = _provisioned_rate(table, rate_cap)
        seconds = units / rate if rate else 0.0
        cost = table.provisioned_wcu * seconds / 3600 * prices.provisioned_wcu_hour
        cost_basis = (
            f"provisioned: {table.provisioned_wcu:,} WCU for the duration at ${prices.provisioned_wcu_hour:g} "
            "per WCU-hour, paid whether the job runs or not"
        )
    return WriteEstimate(
        write_units=units,
        rate_wcu=rate,
        rate_basis=rate_basis,
        seconds=units / rate if rate else None,
        cost_usd=cost,
        cost_basis=cost_basis,
        assumptions=tuple(assumptions),
    )


def _on_demand_rate(table: TableCapacity, rate_cap: float | None, prices: Prices) -> tuple[float, str]:
    if rate_cap:
        rate, basis = rate_cap, f"the job's cap of {rate_cap:g} WCU/s"
    elif table.warm_write_units:
        rate, basis = float(table.warm_write_units), f"the table's warm throughput, {table.warm_write_units:,} WCU/s"
    else:
        rate = prices.on_demand_assumed_wcu
        basis = f"an assumed {rate:,.0f} WCU/s (what a new on-demand table serves at once)"
    if table.max_write_units and table.max_write_units < rate:
        rate, basis = float(table.max_write_units), f"the table's maximum of {table.max_write_units:,} WCU/s"
    return rate, basis


def _provisioned_rate(table: TableCapacity, rate_cap: float | None) -> tuple[float, str]:
    wcu = float(table.provisioned_wcu)
    if rate_cap and (not wcu or rate_cap < wcu):
        return rate_cap, f"the job's cap of {rate_cap:g} WCU/s"
    if wcu:
        return wcu, f"the table's provisioned {table.provisioned_wcu:,} WCU/s (traffic that shares it slows the job)"
    return 0.0, "no rate: the table has no provisioned write capacity"
