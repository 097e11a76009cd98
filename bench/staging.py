"""Staging: a CSV from upload to a queue-ready job, in a child process whose memory is watched.

``staging``
    A ``--staging-rows`` CSV (~150 bytes a row) from ``job_create_from_file`` until
    ``job_stage`` is done, ``--staging-runs`` times; the job is deleted after each run.
``--scale N`` (issue 15, target 4; never part of ``--quick``)
    One job of N rows staged the same way (every 1,000th row invalid, so the job has failed
    items to page through), then, logged in as a superuser through Django's test client, the
    job's page and its failed items' page (median of 5 requests each, after one warm-up), then
    the time to delete the job with its items.

The child (``python -m bench.staging FILE TABLE``) reports the peak RSS (``VmHWM``) of itself and,
sampled every 0.1 s, of each process below it: the conversion processes
(``BULKWRITES_STAGING_PROCESSES``, started by a ``forkserver``) separately.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.app import delete_job, note_upload_cap
from bench.common import ROOT, BenchError, descendants, log, parent_pid, setup_django, summarize, vm_hwm_kb
from bench.items import write_staging_csv

if TYPE_CHECKING:
    from bench.context import Bench

PAGE_REQUESTS = 5
SCALE_INVALID_EVERY = 1000


# --- the child ----------------------------------------------------------------------------


class PeakWatch:
    """Samples the peak RSS of every process below this one until stopped.

    Once a second: each sample walks /proc (~5 ms for ~75 processes) on a thread of the staging
    process, and at 0.1 s it took ~11 % of that process's py-spy samples; staging a million rows
    went 14,122 / 12,997 -> 14,868 / 13,716 rows/s. VmHWM is a high-water mark, so a sample a
    second still sees each conversion process's peak (they live as long as the staging).
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.peaks: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-watch", daemon=True)

    def __enter__(self) -> PeakWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        me = os.getpid()
        for pid in descendants(me):
            peak = vm_hwm_kb(pid)
            if peak is None:
                continue
            seen = self.peaks.get(pid)
            if seen is None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    seen = self.peaks[pid] = {"pid": pid, "parent": parent_pid(stat), "cmd": cmdline[:200], "kb": 0}
            if seen is not None:
                seen["kb"] = max(seen["kb"], peak)

    def split(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(conversion processes, helpers): the conversion processes are the forkserver's children."""
        me = os.getpid()
        direct = [p for p in self.peaks.values() if p["parent"] == me]
        forkservers = {p["pid"] for p in direct if "forkserver" in p["cmd"]}
        conversion = [p for p in self.peaks.values() if p["parent"] in forkservers]
        helpers = [p for p in self.peaks.values() if p not in conversion]
        return conversion, helpers


def staging_child(path: str, table: str) -> None:
    """Upload to a staged job in this process; report time and peak RSS as JSON on stdout."""
    setup_django()
    from bulkwrites.services import create, work

    baseline = vm_hwm_kb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    with PeakWatch() as watch:
        with open(path, "rb") as upload:
            job = create.job_create_from_file(upload=upload, file_name="staging.csv", table_name=table)
        created = time.perf_counter()
        error = ""
        try:
            staged = work.job_stage(job)
        except Exception as exc:  # reported with the job id, so the bench can delete the job
            staged, error = False, f"{type(exc).__name__}: {exc}"
        done = time.perf_counter()
    job.refresh_from_db()
    if not staged:
        error = error or f"{job.error_code} {job.error_message}"
        print(f"staging failed: {error}", file=sys.stderr)
    conversion, helpers = watch.split()
    result = {
        "job_id": job.pk,
        "staged": staged,
        "error": error,
        "total_items": job.total_items,
        "failed_items": job.failed_items,
        "seconds": done - began,
        "create_seconds": created - began,
        "stage_seconds": done - created,
        "peak_rss_kb": vm_hwm_kb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "baseline_rss_kb": baseline,
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "conversion_peak_rss_kb": sorted(p["kb"] for p in conversion),
        "helper_processes": helpers,
    }
    print(json.dumps(result))
    sys.exit(0 if staged else 1)


def stage_in_child(path: Path, table: str) -> dict[str, Any]:
    """Run the child; its figures (the job is left for the caller, who must delete it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.staging", str(path), table],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=6 * 3600,
    )
    result: dict[str, Any] = {}
    with contextlib.suppress(ValueError, IndexError):
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    if proc.returncode != 0 or not result.get("staged"):
        if result.get("job_id"):
            from bulkwrites.models import Job

            for job in Job.objects.filter(pk=result["job_id"]):
                delete_job(job)
        raise BenchError(f"staging child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result["peak_rss_mb"] = result["peak_rss_kb"] / 1024
    result["baseline_rss_mb"] = result["baseline_rss_kb"] / 1024
    result["conversion_peak_rss_mb"] = [kb / 1024 for kb in result["conversion_peak_rss_kb"]]
    return result


# --- the ways -------------------------------------------------------------------------------


def measure_staging(bench: Bench) -> None:
    from bulkwrites.models import Job

    rows = bench.args.staging_rows
    path = write_staging_csv(bench.workdir / "staging.csv", rows)
    size = path.stat().st_size
    log(f"wrote staging CSV: {rows} rows, {size / 1e6:.1f} MB ({size / rows:.0f} bytes a row)")
    note_upload_cap(bench.results["notes"], size, "the staging file")
    runs = []
    with bench.tables.fresh("staging") as table:
        for k in range(bench.args.staging_runs):
            result = stage_in_child(path, table)
            began = time.perf_counter()
            for job in Job.objects.filter(pk=result["job_id"]):
                delete_job(job)
            result["untimed_delete_seconds"] = time.perf_counter() - began
            if result["total_items"] != rows:
                raise BenchError(f"staging: job {result['job_id']} staged {result['total_items']} items of {rows}")
            result["rows_per_s"] = rows / result["seconds"]
            runs.append(result)
            log(
                f"staging run {k + 1}/{bench.args.staging_runs}: {result['rows_per_s']:.0f} rows/s "
                f"({result['seconds']:.1f} s: create {result['create_seconds']:.1f} s + stage "
                f"{result['stage_seconds']:.1f} s), peak RSS {result['peak_rss_mb']:.0f} MB "
                f"(after Django setup {result['baseline_rss_mb']:.0f} MB), conversion processes "
                f"{', '.join(f'{mb:.0f}' for mb in result['conversion_peak_rss_mb']) or 'none'} MB; "
                f"job deleted in {result['untimed_delete_seconds']:.1f} s"
            )
    bench.results["staging"] = {
        "rows": rows,
        "file_bytes": size,
        **{f"rows_per_s_{k}": v for k, v in summarize(runs, "rows_per_s").items() if k != "runs"},
        "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs),
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
        "conversion_peak_rss_mb_max": max((max(r["conversion_peak_rss_mb"], default=0) for r in runs), default=0),
        "baseline_rss_mb_median": statistics.median(r["baseline_rss_mb"] for r in runs),
        "runs": len(runs),
        "raw": runs,
    }
    path.unlink()


def page_times(job_id: int) -> dict[str, Any]:
    """The job's page and its failed items' page, as a logged-in superuser; milliseconds."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    user_model = get_user_model()
    user = user_model.objects.create_superuser(f"bench-{os.getpid()}-{time.time_ns()}", password=None)
    try:
        client = Client(HTTP_HOST="localhost")
        client.force_login(user)
        pages = {
            "job_page": reverse("admin:bulkwrites_job_change", args=[job_id]),
            "failed_items_page": reverse("admin:bulkwrites_item_changelist")
            + f"?job__id__exact={job_id}&status__exact=failed",
        }
        out: dict[str, Any] = {}
        for name, url in pages.items():
            times = []
            for _ in range(PAGE_REQUESTS + 1):
                began = time.perf_counter()
                response = client.get(url)
                took = (time.perf_counter() - began) * 1000
                if response.status_code != 200:
                    raise BenchError(f"{name} {url} answered {response.status_code}")
                times.append(took)
            out[name] = {"url": url, "ms_median": statistics.median(times[1:]), "ms_all": times}
        return out
    finally:
        user.delete()


def measure_scale(bench: Bench) -> None:
    from bulkwrites.models import Job

    rows = bench.args.scale
    path = write_staging_csv(bench.workdir / "scale.csv", rows, invalid_every=SCALE_INVALID_EVERY)
    size = path.stat().st_size
    log(f"scale: wrote a {rows}-row CSV, {size / 1e6:.0f} MB; staging it")
    note_upload_cap(bench.results["notes"], size, "the scale file")
    with bench.tables.fresh("scale") as table:
        result = stage_in_child(path, table)
        path.unlink()
        job = Job.objects.get(pk=result["job_id"])
        try:
            if result["total_items"] != rows:
                raise BenchError(f"scale: job {job.pk} staged {result['total_items']} items of {rows}")
            result["rows"] = rows
            result["file_bytes"] = size
            result["rows_per_s"] = rows / result["seconds"]
            log(
                f"scale: {rows} rows staged at {result['rows_per_s']:.0f} rows/s ({result['seconds']:.0f} s), peak RSS "
                f"{result['peak_rss_mb']:.0f} MB, conversion processes "
                f"{', '.join(f'{mb:.0f}' for mb in result['conversion_peak_rss_mb']) or 'none'} MB; "
                f"{result['failed_items']} failed items; timing its pages"
            )
            result["pages"] = page_times(job.pk)
        finally:
            began = time.perf_counter()
            steps = delete_job(job)
            result["delete_seconds"] = time.perf_counter() - began
            result["delete_mark_seconds"] = steps.get("mark_seconds")
            result["delete_reclaim_seconds"] = steps.get("reclaim_seconds")
    pages = result["pages"]
    log(
        f"scale: job page {pages['job_page']['ms_median']:.0f} ms, failed items "
        f"{pages['failed_items_page']['ms_median']:.0f} ms (medians of {PAGE_REQUESTS}); "
        f"deleted in {result['delete_seconds']:.1f} s (hidden in {1000 * (result['delete_mark_seconds'] or 0):.0f} ms, "
        f"rows reclaimed in {result['delete_reclaim_seconds'] or 0:.1f} s)"
    )
    bench.results["scale"] = result


def main() -> None:
    parser = argparse.ArgumentParser(description="stage FILE into a job for TABLE; figures as JSON on stdout")
    parser.add_argument("file")
    parser.add_argument("table")
    args = parser.parse_args()
    staging_child(args.file, args.table)


if __name__ == "__main__":
    main()
