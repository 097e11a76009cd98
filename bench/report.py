"""What ``make bench`` prints: each way's figures, then one table of issue 15's targets.

:func:`target_rows` is pure (the results document in, rows out), so it has unit tests.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Any

from bench.common import CPU_GROUP_NAMES, CPU_GROUPS, ratio

WAYS = (
    "boto3_batch_writer",
    "threaded_batch_write_item",
    "plain_http",
    "plain_http_consumed",
    "csv_threads",
    "bulkwrites_1_worker",
    "bulkwrites_2_workers",
    "bulkwrites_1_worker_c4",
    "end_to_end",
    "sink_bulkwrites_1_worker",
    "sink_threaded_batch_write_item",
    "sink_plain_http",
)
WAY_NAMES = {
    "boto3_batch_writer": "boto3 `batch_writer`, 1 thread",
    "threaded_batch_write_item": "threaded boto3 `batch_write_item` (the SDK's ceiling)",
    "plain_http": "plain HTTP, no SDK, 16 threads (the endpoint's limit)",
    "plain_http_consumed": "plain HTTP asking ReturnConsumedCapacity=TOTAL, as bulkwrites does",
    "csv_threads": "plain script: `csv` + 16 threads of `batch_write_item`, from the file",
    "bulkwrites_1_worker": "bulkwrites, 1 worker, full ledger (staged beforehand)",
    "bulkwrites_2_workers": "bulkwrites, 2 workers (staged beforehand)",
    "bulkwrites_1_worker_c4": "bulkwrites, 1 worker, 4 calls in flight",
    "end_to_end": "bulkwrites end to end: from the file, staging included",
    "sink_bulkwrites_1_worker": "sink: bulkwrites, 1 worker, full ledger",
    "sink_threaded_batch_write_item": "sink: threaded boto3, 16 threads",
    "sink_plain_http": "sink: plain HTTP, 16 threads",
}
SCALE_ROWS_TARGET = 10_000_000


@dataclass(frozen=True)
class TargetRow:
    what: str
    figure: str
    target: str = ""
    verdict: str = ""  # "met", "NOT met", "not measured" or "" (a way, no target of its own)


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _verdict(ok: bool, note: str = "") -> str:
    return ("met" if ok else "NOT met") + (f" {note}" if note else "")


def _runs_note(runs: int) -> str:
    return f" [{runs} run{'s' if runs != 1 else ''}]" if runs < 3 else ""


def target_rows(results: dict[str, Any], history: list[dict[str, Any]] | None = None) -> list[TargetRow]:
    """The ways (items/s, median of the runs, and x the threaded boto3 ceiling), then each target of
    issue 15 with its figure and whether it is met. A part not run says so; the scale part, if not
    run now, is taken from the newest earlier run in ``history`` that has one (and says which)."""
    ways = results.get("ways", {})
    rows: list[TargetRow] = []
    ceiling = ways.get("threaded_batch_write_item", {}).get("median")
    for way in WAYS:
        s = ways.get(way)
        if not s or s.get("median") is None:
            continue
        versus = ratio(s["median"], ceiling)
        figure = f"{_n(s['median'])} items/s ({_n(s['min'])}-{_n(s['max'])})"
        if versus is not None and not way.startswith("sink_"):
            figure += f", {versus:.2f}x threaded"
        rows.append(TargetRow(WAY_NAMES[way], figure + _runs_note(s["runs"])))

    def median(way: str) -> float | None:
        value = ways.get(way, {}).get("median")
        return None if value is None else float(value)

    def ratio_row(what: str, top: str, bottom: str, least: float) -> TargetRow:
        value = ratio(median(top), median(bottom))
        if value is None:
            return TargetRow(what, "-", f"≥ {least:.2f}x", "not measured")
        return TargetRow(what, f"{value:.2f}x", f"≥ {least:.2f}x", _verdict(value >= least))

    def floor_row(what: str, value: float | None, least: float, unit: str) -> TargetRow:
        if value is None:
            return TargetRow(what, "-", f"≥ {_n(least)} {unit}", "not measured")
        return TargetRow(what, f"{_n(value)} {unit}", f"≥ {_n(least)} {unit}", _verdict(value >= least))

    rows.append(ratio_row("1. file to table, end to end / the csv+threads script", "end_to_end", "csv_threads", 1.0))
    rows.append(
        ratio_row(
            "2. writing, 1 worker, full ledger / threaded boto3",
            "bulkwrites_1_worker",
            "threaded_batch_write_item",
            1.2,
        )
    )
    limit = ratio(median("plain_http"), median("threaded_batch_write_item"))
    if limit is not None:
        rows.append(TargetRow("   (the limit to approach: plain HTTP / threaded boto3)", f"{limit:.2f}x"))
    limit_consumed = ratio(median("plain_http_consumed"), median("threaded_batch_write_item"))
    if limit_consumed is not None:
        rows.append(
            TargetRow("   (the same limit asking for consumed capacity, as bulkwrites does)", f"{limit_consumed:.2f}x")
        )
    rest = {way: cores_medians(ways.get(way, {})) for way in ("threaded_batch_write_item", "bulkwrites_1_worker")}
    threaded_cores, bulkwrites_cores = rest["threaded_batch_write_item"], rest["bulkwrites_1_worker"]
    if threaded_cores and bulkwrites_cores:
        rows.append(
            TargetRow(
                "   (cores DynamoDB Local got / everything else used: threaded boto3; bulkwrites, 1 worker)",
                f"{threaded_cores['dynamodb']:.2f} / {threaded_cores['us_per_item_rest']:.0f} µs an item; "
                f"{bulkwrites_cores['dynamodb']:.2f} / {bulkwrites_cores['us_per_item_rest']:.0f} µs an item",
            )
        )
    rows.append(
        floor_row("3. sink: items/s per worker, full ledger", median("sink_bulkwrites_1_worker"), 10_000, "items/s")
    )
    ledger = results.get("ledger")
    rows.append(
        floor_row(
            "3. ledger alone: outcomes recorded/s" + (f" ({ledger['threads']} recorders)" if ledger else ""),
            ledger.get("median") if ledger else None,
            40_000,
            "outcomes/s",
        )
    )
    staging = results.get("staging")
    if staging:
        rows.append(
            TargetRow(
                f"   (staging {_n(staging['rows'])} rows, this run's staging way)",
                f"{_n(staging['rows_per_s_median'])} rows/s; peak RSS {_n(staging['peak_rss_mb_max'])} MB, "
                f"conversion processes ≤ {_n(staging['conversion_peak_rss_mb_max'])} MB",
            )
        )
    rows.extend(_scale_rows(results, history or []))
    return rows


def _scale_rows(results: dict[str, Any], history: list[dict[str, Any]]) -> list[TargetRow]:
    scale, source = results.get("scale"), ""
    if not scale:
        for document in reversed(history):
            if document.get("scale"):
                scale = document["scale"]
                machine = document.get("machine", {})
                source = f" (earlier run {machine.get('date', '?')[:10]} at {machine.get('git_commit', '?')[:7]})"
                break
    if not scale:
        return [TargetRow("4. scale of one job (`--scale N`)", "-", "10M rows", "not measured")]
    rows_n = scale["rows"]
    size = f"{_n(rows_n)} rows{source}"
    partial = "" if rows_n >= SCALE_ROWS_TARGET else f"(at {rows_n / 1e6:g}M rows, not 10M)"
    pages = scale["pages"]
    conversion = max(scale["conversion_peak_rss_mb"], default=0.0)
    checks = [
        (
            f"4. staging rate, {size}",
            f"{_n(scale['rows_per_s'])} rows/s",
            "≥ 50,000 rows/s",
            scale["rows_per_s"] >= 50_000,
        ),
        (
            "4. peak RSS of the staging process",
            f"{_n(scale['peak_rss_mb'])} MB",
            "≤ 200 MB",
            scale["peak_rss_mb"] <= 200,
        ),
        (
            f"4. peak RSS of each conversion process ({len(scale['conversion_peak_rss_mb'])})",
            ", ".join(f"{mb:.0f}" for mb in scale["conversion_peak_rss_mb"]) + " MB"
            if scale["conversion_peak_rss_mb"]
            else "none",
            "≤ 200 MB each",
            conversion <= 200,
        ),
        ("4. job page", f"{_n(pages['job_page']['ms_median'])} ms", "< 300 ms", pages["job_page"]["ms_median"] < 300),
        (
            "4. failed items page",
            f"{_n(pages['failed_items_page']['ms_median'])} ms",
            "< 500 ms",
            pages["failed_items_page"]["ms_median"] < 500,
        ),
        (
            "4. deleting the job",
            f"{_n(scale['delete_seconds'], 1)} s"
            + (
                f" (hidden in {_n(1000 * scale['delete_mark_seconds'])} ms)"
                if scale.get("delete_mark_seconds") is not None
                else ""
            ),
            "< 30 s",
            scale["delete_seconds"] < 30,
        ),
    ]
    return [TargetRow(what, figure, target, _verdict(ok, partial)) for what, figure, target, ok in checks]


def _cores(run: dict[str, Any]) -> dict[str, float] | None:
    cores = run.get("cores")
    return cores if isinstance(cores, dict) and run.get("items_per_s") else None


def cores_medians(way: dict[str, Any]) -> dict[str, float] | None:
    """A way's median cores per group over its runs, and the CPU microseconds per item spent by
    DynamoDB Local (``us_per_item_dynamodb``) and by everything else (``us_per_item_rest``)."""
    runs = [r for r in way.get("raw", []) if _cores(r)]
    if not runs:
        return None
    medians = {group: statistics.median(r["cores"].get(group, 0.0) for r in runs) for group in CPU_GROUPS}
    medians["us_per_item_dynamodb"] = statistics.median(
        1e6 * r["cores"].get("dynamodb", 0.0) / r["items_per_s"] for r in runs
    )
    medians["us_per_item_rest"] = statistics.median(
        1e6 * sum(v for g, v in r["cores"].items() if g != "dynamodb") / r["items_per_s"] for r in runs
    )
    return medians


def cores_table(results: dict[str, Any]) -> list[str]:
    """Where the machine's cores went during each write way's runs (medians), as a Markdown table."""
    ways = results.get("ways", {})
    measured: list[tuple[str, dict[str, float]]] = []
    for way in WAYS:
        medians = cores_medians(ways.get(way, {}))
        if medians is not None:
            measured.append((way, medians))
    if not measured:
        return []
    groups = [g for g in CPU_GROUPS if any(m[g] >= 0.005 for _, m in measured)]
    lines = [
        "| way | "
        + " | ".join(CPU_GROUP_NAMES[g] for g in groups)
        + " | µs of CPU per item: DynamoDB Local / the rest |",
        "|---|" + "---:|" * len(groups) + "---:|",
    ]
    for way, m in measured:
        cells = " | ".join(f"{m[g]:.2f}" for g in groups)
        lines.append(f"| {way} | {cells} | {m['us_per_item_dynamodb']:.0f} / {m['us_per_item_rest']:.0f} |")
    return lines


def target_table(rows: list[TargetRow]) -> list[str]:
    """A Markdown table (the README's Performance section takes it as printed)."""
    lines = ["| way or target | figure (median) | target | |", "|---|---:|---:|---|"]
    lines += [f"| {r.what.strip()} | {r.figure} | {r.target} | {r.verdict} |" for r in rows]
    return lines


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_details(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Every way's spread and notes, the staging, capacity, chaos and verification parts."""
    ways = results["ways"]
    print()
    print(f"bulkwrites benchmark: {args.items} items of {args.item_bytes} bytes, DynamoDB Local, {args.runs} runs")
    print(f"{'way':<28} {'median items/s':>14} {'min':>8} {'max':>8} {'runs':>5}  notes")
    for way in WAYS:
        if way not in ways:
            continue
        s = ways[way]
        if "workers" not in s:
            note = f"{s['threads']} thread(s)"
        else:
            note = f"{s['workers']} worker(s), concurrency {s['concurrency']}"
        if way.startswith("bulkwrites") or way == "sink_bulkwrites_1_worker":
            raw = s["raw"]
            spawn = statistics.median(r["seconds"] - (r["job_running_seconds"] or 0) for r in raw)
            slots = s["workers"] * s["concurrency"]
            busy = statistics.median(
                r["ddb_call_seconds_sum"] / (slots * r["job_running_seconds"]) for r in raw if r["job_running_seconds"]
            )
            note += f"; {spawn:.1f} s before the job ran; call slots busy {100 * busy:.0f}%"
        if "proxy_cores_median" in s:
            note += f"; the sink proxy used {s['proxy_cores_median']:.2f} cores"
        if s["runs"] < 3:
            note += f" [only {s['runs']} run(s)]"
        print(f"{way:<28} {fmt(s['median']):>14} {fmt(s['min']):>8} {fmt(s['max']):>8} {s['runs']:>5}  {note}")
    sizing = ways.get("threaded_batch_write_item", {}).get("sizing")
    if sizing:
        print("threaded sizing (items/s): " + ", ".join(f"{x['threads']}t {x['items_per_s']:.0f}" for x in sizing))
    print()
    for name, value in results.get("ratios", {}).items():
        if value is not None:
            print(f"{name:<28} {value:.2f}")
    cores = cores_table(results)
    if cores:
        nproc = results.get("machine", {}).get("nproc", "?")
        print()
        print(f"where the machine's {nproc} cores went during each way's runs (CPU seconds / wall seconds, medians):")
        print("\n".join(cores))
    st = results.get("staging")
    if st:
        print()
        print(
            f"staging {st['rows']} rows ({st['file_bytes'] / 1e6:.0f} MB CSV), upload to staged job: "
            f"median {st['rows_per_s_median']:.0f} rows/s (min {st['rows_per_s_min']:.0f}, max "
            f"{st['rows_per_s_max']:.0f}, {st['runs']} run(s)); peak RSS {st['peak_rss_mb_median']:.0f} MB "
            f"(max {st['peak_rss_mb_max']:.0f}; {st['baseline_rss_mb_median']:.0f} MB after Django setup); "
            f"conversion processes at most {st['conversion_peak_rss_mb_max']:.0f} MB each"
            + (f" [only {st['runs']} run(s)]" if st["runs"] < 3 else "")
        )
    cap = results.get("capacity")
    if cap:
        print()
        print(f"capacity: FaultProxy bucket of {cap['capacity_wcu']:g} WCU/s, {cap['items']} items of 1 WCU each")
        for way, c in cap["ways"].items():
            raw = c["raw"]
            print(
                f"  {way:<22} {100 * c['share_median']:5.1f}% of capacity (min {100 * c['share_min']:.1f}, max "
                f"{100 * c['share_max']:.1f}; sustained beyond the 1 s burst "
                f"{100 * statistics.median(x['sustained_share'] for x in raw):.1f}%), "
                f"{c['batch_write_calls_median']:.0f} calls: {100 * c['throttled_call_share_median']:.1f}% throttled, "
                f"{100 * c['unprocessed_call_share_median']:.1f}% carried unprocessed items "
                f"({c['unprocessed_items_median']:.0f} items), {c['runs']} run(s)"
                + (f" [only {c['runs']} run(s)]" if c["runs"] < 3 else "")
            )
    if results.get("chaos"):
        from bench import chaos

        print("\n".join(chaos.report_lines(results)))
    if st:
        ru = statistics.median(r["ru_maxrss_kb"] for r in st["raw"]) / 1024
        print(
            f"(peak RSS is the child's VmHWM; its ru_maxrss says {ru:.0f} MB because Linux carries the "
            "parent's peak over fork/exec)"
        )
    from bench import verify

    verification = verify.report_lines(results)
    if verification:
        print()
        print("\n".join(verification))
    for note in results.get("notes", []):
        print(f"note: {note}")


def print_report(results: dict[str, Any], args: argparse.Namespace, history: list[dict[str, Any]]) -> None:
    print_details(results, args)
    machine = results.get("machine", {})
    print()
    print(
        f"issue 15's targets, commit {machine.get('git_commit', '?')[:7]}"
        + (" (with uncommitted changes)" if machine.get("git_uncommitted") else "")
        + f", {machine.get('date', '?')}: medians of {args.runs} run(s) of {args.items:,} items of {args.item_bytes} "
        "bytes; the machine is shared, so the figures are noisy: compare ratios within one run"
    )
    print("\n".join(target_table(target_rows(results, history))))
