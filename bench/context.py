"""What every way of the bench works with: its arguments, tables, workers, items and results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.app import Bulkwrites, Workers, note_upload_cap
from bench.common import SEED, log, make_client, summarize
from bench.items import Row, make_items, write_items_csv
from bench.tables import Tables


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.client = make_client(pool=64)
        self.tables = Tables(self.client)
        self.workers = Workers(workdir)
        self.app = Bulkwrites(self.workers, args.keep_jobs)
        self.results: dict[str, Any] = {"ways": {}, "notes": []}
        self._rows: list[Row] | None = None
        self._csv: Path | None = None

    def skipped(self, *names: str) -> bool:
        return any(n in self.args.skip for n in names)

    @property
    def rows(self) -> list[Row]:
        if self._rows is None:
            n = max(self.args.items, self.capacity_items() if not self.skipped("capacity") else 0)
            log(f"generating {n} items of {self.args.item_bytes} bytes (seed {SEED})")
            self._rows = make_items(n, self.args.item_bytes)
        return self._rows

    @property
    def items_csv(self) -> Path:
        if self._csv is None:
            self._csv = write_items_csv(self.workdir / "items.csv", self.rows[: self.args.items])
            size = self._csv.stat().st_size
            log(f"wrote {size / 1e6:.1f} MB CSV of {self.args.items} items")
            note_upload_cap(self.results["notes"], size, "the items' CSV")
        return self._csv

    def capacity_items(self) -> int:
        return int(min(self.args.items, self.args.capacity_wcu * 30))

    def record(self, way: str, runs: list[dict[str, Any]], **extra: Any) -> None:
        self.results["ways"][way] = {**summarize(runs), "raw": runs, **extra}
        s = self.results["ways"][way]
        log(f"{way}: median {s['median']:.0f} items/s (min {s['min']:.0f}, max {s['max']:.0f}, {s['runs']} runs)")
