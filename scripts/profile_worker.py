"""One worker, in this process, against a sink or DynamoDB Local: items/s and where the CPU went.

Stages a job of ``--items`` 1 KB items (the bench's rows, through the real staging path), then
runs :func:`bulkwrites.services.running.job_run` on it in this process - what an RQ worker's
task does, without RQ in the way - and prints items/s with the CPU seconds of this process, of
the fault proxy (``--sink``: a separate ``python -m faultproxy --sink`` process, so its CPU is
its own) and of PostgreSQL's backends. ``--py-spy FILE`` samples this process with py-spy
(``pip install py-spy``) into a collapsed-stack file; ``--top`` prints its heaviest frames.

    eval "$(make -s services)"
    .venv/bin/python scripts/profile_worker.py --items 50000 --runs 3 --sink
    .venv/bin/python scripts/profile_worker.py --items 20000 --runs 3            # DynamoDB Local
    .venv/bin/python scripts/profile_worker.py --items 50000 --sink --py-spy /tmp/worker.txt
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False, task: int | None = None) -> float:
    """User + system CPU of a process so far (with ``children``: also of its exited children;
    with ``task``: of that thread only)."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def postgres_cpu() -> float:
    """CPU of this checkout's PostgreSQL: the postmaster, its live children (backends, writers) and
    the ones that exited (a run's threads close their connections as they end)."""
    pids = postgres_pids()
    return sum(cpu_seconds(pid, children=pid == pids[0]) for pid in pids) if pids else 0.0


def postgres_pids() -> list[int]:
    """The postmaster of this checkout's PostgreSQL first, then its children."""
    pid_file = ROOT / ".local" / "pg" / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int(pid_file.read_text().split()[0])
        pids = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(stat.parent.name))
        return pids
    return []


class GCTime:
    """Seconds the cyclic garbage collector ran, per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds: Counter[int] = Counter()
        self._began = 0.0

    def __enter__(self) -> GCTime:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._began


class ThreadCPU:
    """CPU seconds per kind of thread of this process (call threads, prefetcher, recorder, main),
    read from /proc every 0.1 s: with the GIL, a thread's CPU is about its time holding it."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="profile-monitor", daemon=True)

    def __enter__(self) -> ThreadCPU:
        self._base = {t.native_id: cpu_seconds_of_task(t.native_id) for t in threading.enumerate() if t.native_id}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        for thread in threading.enumerate():
            if thread.native_id and thread is not self._thread:
                name = thread.name.rstrip("0123456789_").removesuffix("-")
                spent = cpu_seconds_of_task(thread.native_id) - self._base.get(thread.native_id, 0.0)
                self.seen[thread.native_id] = (name, max(spent, self.seen.get(thread.native_id, ("", 0.0))[1]))

    def by_kind(self) -> dict[str, float]:
        kinds: Counter[str] = Counter()
        for name, spent in self.seen.values():
            kinds[name] += spent
        return dict(kinds.most_common())


def cpu_seconds_of_task(tid: int) -> float:
    return cpu_seconds(int(f"{os.getpid()}"), task=tid)


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def sink_proxy(upstream: str) -> Iterator[tuple[str, int]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "faultproxy", "--upstream", upstream, "--sink"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("faultproxy listening on "):
            raise SystemExit(f"the fault proxy did not start: {line!r}")
        yield line.rsplit(" ", 1)[1], process.pid
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--sink", action="store_true", help="write through `python -m faultproxy --sink`")
    parser.add_argument("--concurrency", type=int, default=None, help="the job's calls in flight (default: the app's)")
    parser.add_argument("--py-spy", metavar="FILE", help="sample this process with py-spy into FILE (collapsed)")
    parser.add_argument("--top", type=int, default=40, help="frames to print from the py-spy samples")
    args = parser.parse_args()

    from bench.app import Bulkwrites, Workers, delete_job
    from bench.common import default_concurrency, endpoint, env_override, make_client, setup_django
    from bench.items import make_items, write_items_csv
    from bench.tables import Tables

    setup_django()
    from bulkwrites.services import running

    upstream = endpoint()
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
        url, proxy_pid = stack.enter_context(sink_proxy(upstream)) if args.sink else (upstream, 0)
        csv_path = write_items_csv(Path(workdir) / "items.csv", make_items(args.items, 1024))
        client = make_client(url)
        tables = Tables(client)
        app = Bulkwrites(Workers(Path(workdir)), keep_jobs=False)
        concurrency = args.concurrency or default_concurrency()
        figures = []
        for run in range(args.runs):
            with tables.fresh("profile") as table, env_override(AWS_ENDPOINT_URL_DYNAMODB=url):
                job = app.staged_job(csv_path, table, workers=1, concurrency=concurrency, job_endpoint=url)
                try:
                    assert job.start(queue="profile")
                    spy = None
                    if args.py_spy:
                        spy = subprocess.Popen(
                            ["py-spy", "record", "--pid", str(os.getpid()), "--format", "raw", "--rate", "200", "--gil",
                             "--output", args.py_spy, "--nonblocking"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )  # fmt: skip
                        time.sleep(1.0)
                    before = (self_cpu(), cpu_seconds(proxy_pid) if proxy_pid else 0.0, postgres_cpu())
                    began = time.perf_counter()
                    with ThreadCPU() as threads, GCTime() as collector:
                        report = running.job_run(job.pk, worker=f"profile-{os.getpid()}", budget_seconds=3600)
                    seconds = time.perf_counter() - began
                    after = (self_cpu(), cpu_seconds(proxy_pid) if proxy_pid else 0.0, postgres_cpu())
                    if spy is not None:
                        spy.send_signal(2)
                        spy.wait(30)
                    job.refresh_from_db()
                    if not report.finished or job.succeeded_items != args.items:
                        raise SystemExit(f"job {job.pk}: {report} {job.status} {job.succeeded_items}/{args.items}")
                    worker_cpu, proxy_cpu, pg_cpu = (a - b for a, b in zip(after, before, strict=True))
                    figures.append(args.items / seconds)
                    print(
                        f"run {run + 1}: {args.items / seconds:,.0f} items/s ({seconds:.2f} s); CPU s: worker "
                        f"{worker_cpu:.2f} ({worker_cpu / seconds:.0%}), proxy {proxy_cpu:.2f}, postgres {pg_cpu:.2f}; "
                        f"calls {job.calls}",
                        flush=True,
                    )
                    print(
                        "  CPU s by thread: "
                        + ", ".join(f"{name} {spent:.2f}" for name, spent in threads.by_kind().items())
                        + "; GC s by generation: "
                        + ", ".join(f"{gen}: {spent:.2f}" for gen, spent in sorted(collector.seconds.items())),
                        flush=True,
                    )
                finally:
                    delete_job(job)
        print(f"median of {len(figures)}: {statistics.median(figures):,.0f} items/s ({'sink' if args.sink else url})")
    if args.py_spy:
        print_top(Path(args.py_spy), args.top)


def print_top(path: Path, top: int) -> None:
    """Self and total samples per frame from py-spy's collapsed stacks (idle frames left out)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    print(f"\n{samples} samples; heaviest by own time:")
    for frame, count in own.most_common(top):
        print(f"{count / samples:6.1%}  {frame}")
    print("\nheaviest by total time:")
    for frame, count in total.most_common(top):
        print(f"{count / samples:6.1%}  {frame}")


if __name__ == "__main__":
    main()
