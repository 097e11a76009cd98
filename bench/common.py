"""The bench's shared plumbing: its environment, clients, log, medians and results file.

Every other module of ``bench/`` takes these from here; none of them holds a way's logic.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_REDIS_DB = 14
SEED = 20240611
POLL_SECONDS = 0.1
UPLOAD_CAP_BYTES = 1 << 34  # the bench's files may exceed the app's upload cap (1 GiB by default)
APP_UPLOAD_CAP = int(os.environ.get("BULKWRITES_MAX_UPLOAD_BYTES") or 1024 * 1024 * 1024)  # before setup_django
HISTORY_KEY = "history"  # results.json: {"history": [document, ...]}, oldest first

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the app, project and faultproxy packages

_started = time.monotonic()


class BenchError(RuntimeError):
    pass


class RunTimedOut(BenchError):
    """A job not finished within the time a way allows it (its job cancelled, its workers stopped)."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- environment ------------------------------------------------------------------------


def bench_redis_url() -> str:
    """The services' Redis with database 14 (the URL's path is the database number)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:63799/0"))
    return urlunsplit(parts._replace(path=f"/{BENCH_REDIS_DB}"))


def setup_django() -> None:
    """Django for the bench: the normal database, Redis database 14, no upload cap in the way."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ["REDIS_URL"] = bench_redis_url()
    os.environ["BULKWRITES_MAX_UPLOAD_BYTES"] = str(UPLOAD_CAP_BYTES)
    os.environ.setdefault("BULKWRITES_LOG_LEVEL", "WARNING")
    import django

    django.setup()


def default_concurrency() -> int:
    from bulkwrites.models import DEFAULT_CONCURRENCY

    return DEFAULT_CONCURRENCY


def endpoint() -> str:
    url = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
    if not url:
        sys.exit('AWS_ENDPOINT_URL_DYNAMODB is not set: run `eval "$(make -s services)"` first (or `make bench`)')
    return url


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def boto_config(pool: int = 10) -> Any:
    """botocore's defaults (retries included), with a connection pool of at least ``pool``."""
    from botocore.config import Config

    return Config(region_name=region(), max_pool_connections=max(10, pool))


def make_client(url: str | None = None, pool: int = 10) -> Any:
    import boto3

    return boto3.session.Session().client("dynamodb", endpoint_url=url or endpoint(), config=boto_config(pool))


@contextlib.contextmanager
def env_override(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_mb = int(line.split()[1]) // 1024
    commit, changed = "", []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
    versions: dict[str, str] = {}
    for name in ("boto3", "botocore", "django", "rq", "django_rq", "psycopg"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mb": mem_total_mb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_uncommitted": changed,  # the figures are of this working tree, not of the commit alone
        "versions": versions,
        "dynamodb_endpoint": os.environ.get("AWS_ENDPOINT_URL_DYNAMODB"),
    }


# --- processes ----------------------------------------------------------------------------


def vm_hwm_kb(pid: int | str = "self") -> int | None:
    """Peak RSS of a process's own address space (``VmHWM``), in KB; None once it is gone.

    Not ``ru_maxrss``: Linux carries it over ``fork``/``exec`` (``exec`` keeps the larger of the
    old and the new image's peak), so a child started by the bench would report the bench's own
    RSS whenever that is larger than its own.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def parent_pid(stat: str) -> int:
    """The parent's pid from the text of ``/proc/PID/stat`` (the command may hold spaces and ')')."""
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from the text of ``/proc/PID/stat``."""
    return stat_cpu_seconds(stat, children=False)


def process_cpu_seconds(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    return None


def process_stats() -> dict[int, str]:
    """The text of ``/proc/PID/stat`` of every living process, by pid."""
    stats: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stats[int(entry.name)] = (entry / "stat").read_text()
    return stats


def descendants(pid: int, stats: dict[int, str] | None = None) -> list[int]:
    """Every living process below ``pid`` (children, their children, ...), from ``stats`` if given."""
    children: dict[int, list[int]] = {}
    for child, stat in (process_stats() if stats is None else stats).items():
        with contextlib.suppress(ValueError, IndexError):
            children.setdefault(parent_pid(stat), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# --- where the cores go -----------------------------------------------------------------

# A write run shares the machine with DynamoDB Local, PostgreSQL and Redis: on two cores, what
# the client spends is what DynamoDB Local does not get. Each run reports them side by side.
CPU_GROUPS = ("dynamodb", "client", "workers", "postgres", "redis", "proxy")
CPU_GROUP_NAMES = {
    "dynamodb": "DynamoDB Local",
    "client": "bench process",
    "workers": "workers",
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "proxy": "fault proxy",
}


def stat_cpu_seconds(stat: str, *, children: bool) -> float:
    """User + system CPU seconds from the text of ``/proc/PID/stat``; with ``children``, also
    those of the children it has reaped (a worker's finished work horses, PostgreSQL's closed
    backends), which would otherwise vanish from every count between two looks."""
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_by_group(bench_pid: int) -> dict[str, float]:
    """CPU seconds so far of each group of :data:`CPU_GROUPS` on this machine.

    ``client`` is the bench process itself (its own threads: the plain ways run there);
    ``workers`` and ``proxy`` are its descendants (the rqworkers it spawns with their work horses
    and conversion processes; the fault proxy); the services are found by name. A difference of
    two looks is the CPU spent in between, also by processes that ended meanwhile, as long as
    their parent reaped them within the group (each group's processes count their reaped
    children; the bench process does not, so a worker it stops after the second look is not
    counted twice)."""
    stats = process_stats()
    below = set(descendants(bench_pid, stats))
    totals = dict.fromkeys(CPU_GROUPS, 0.0)
    for pid, stat in stats.items():
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        if pid == bench_pid:
            totals["client"] += stat_cpu_seconds(stat, children=False)
            continue
        if pid in below:
            group = "proxy" if b"faultproxy" in _cmdline(pid) else "workers"
        elif comm == "postgres":
            group = "postgres"
        elif comm == "redis-server":
            group = "redis"
        elif comm == "java" and b"DynamoDBLocal" in _cmdline(pid):
            group = "dynamodb"
        else:
            continue
        with contextlib.suppress(ValueError, IndexError):  # a process caught mid-exit, as descendants() skips it
            totals[group] += stat_cpu_seconds(stat, children=True)
    return totals


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


class CpuMeter:
    """The cores each group used from now until :meth:`cores` (CPU seconds over wall seconds)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.before = cpu_by_group(self.pid)
        self.began = time.perf_counter()

    def cores(self) -> dict[str, float]:
        after = cpu_by_group(self.pid)
        wall = max(time.perf_counter() - self.began, 1e-9)
        return {group: round(max(0.0, after[group] - self.before[group]) / wall, 3) for group in CPU_GROUPS}


# --- statistics -------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], key: str = "items_per_s") -> dict[str, Any]:
    values = [r[key] for r in runs]
    return {
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "runs": len(values),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# --- results.json -----------------------------------------------------------------------


def load_history(path: Path) -> list[dict[str, Any]]:
    """The documents of earlier runs, oldest first; a file of the old shape (one run) is one entry."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(data, dict) and isinstance(data.get(HISTORY_KEY), list):
        return list(data[HISTORY_KEY])
    if isinstance(data, dict) and data:
        return [data]
    return []


def append_results(path: Path, document: dict[str, Any]) -> int:
    """Add this run's document to the file's history (kept whole); how many runs it now holds."""
    history = load_history(path)
    history.append(document)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({HISTORY_KEY: history}, indent=1, default=str) + "\n")
    tmp.replace(path)
    return len(history)
