"""The bench's pure helpers: the plain-HTTP client's signature, the results history, /proc
parsing, and the table of issue 15's targets (its figures and verdicts)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bench.common import CpuMeter, append_results, cpu_seconds, load_history, parent_pid, stat_cpu_seconds
from bench.plain import TARGET_PREFIX, sigv4_headers
from bench.report import TargetRow, cores_medians, cores_table, target_rows, target_table


def test_the_plain_http_signature_is_botocores_sigv4() -> None:
    body = json.dumps({"RequestItems": {"t": [{"PutRequest": {"Item": {"pk": {"S": "a"}}}}]}}).encode()
    target = TARGET_PREFIX + "BatchWriteItem"
    request = AWSRequest(
        method="POST",
        url="http://127.0.0.1:8778/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": target},
    )
    SigV4Auth(Credentials("AKIDEXAMPLE", "secret/key"), "dynamodb", "eu-west-1").add_auth(request)
    ours = sigv4_headers(
        body,
        host="127.0.0.1:8778",
        target=target,
        amz_date=request.headers["X-Amz-Date"],
        region="eu-west-1",
        access_key="AKIDEXAMPLE",
        secret_key="secret/key",
    )
    assert ours["Authorization"] == request.headers["Authorization"]
    other = sigv4_headers(
        body + b" ",
        host="127.0.0.1:8778",
        target=target,
        amz_date=request.headers["X-Amz-Date"],
        region="eu-west-1",
        access_key="AKIDEXAMPLE",
        secret_key="secret/key",
    )
    assert other["Authorization"] != request.headers["Authorization"]  # the body is signed


def test_results_are_appended_and_an_old_single_run_file_is_kept_as_the_first(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    assert load_history(path) == []
    path.write_text(json.dumps({"machine": {"git_commit": "old"}, "ways": {}}))  # the shape before history
    assert append_results(path, {"machine": {"git_commit": "new1"}}) == 2
    assert append_results(path, {"machine": {"git_commit": "new2"}}) == 3
    assert [d["machine"]["git_commit"] for d in load_history(path)] == ["old", "new1", "new2"]


def test_proc_stat_parsing_survives_a_command_with_spaces_and_parentheses() -> None:
    stat = "4242 (python (x) y) S 17 4242 4242 0 -1 4194304 1 0 0 0 300 200 0 0 20 0 3 0 1 1 1"
    assert parent_pid(stat) == 17
    import os

    assert cpu_seconds(stat) == pytest.approx(500 / os.sysconf("SC_CLK_TCK"))
    # With the children it reaped (fields 16 and 17: cutime, cstime), as a group's count takes it.
    assert stat_cpu_seconds(stat, children=True) == pytest.approx(500 / os.sysconf("SC_CLK_TCK"))
    reaped = stat.replace(" 300 200 0 0 ", " 300 200 40 60 ")
    assert stat_cpu_seconds(reaped, children=True) == pytest.approx(600 / os.sysconf("SC_CLK_TCK"))
    assert stat_cpu_seconds(reaped, children=False) == pytest.approx(500 / os.sysconf("SC_CLK_TCK"))


# A child of this process that spends ~0.3 s of CPU in a grandchild it waits for (reaped: gone
# from /proc), then ~0.3 s itself, then says so and sleeps until killed.
BURNER = """
import os, subprocess, sys, time
BURN = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.3: pass"
subprocess.run([sys.executable, "-c", BURN], check=True)
exec(BURN)
print("burnt", flush=True)
time.sleep(60)
"""


def test_the_cpu_of_a_runs_processes_is_counted_also_once_a_process_has_ended() -> None:
    import subprocess
    import sys

    meter = CpuMeter()
    child = subprocess.Popen([sys.executable, "-c", BURNER], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "burnt"
        cores = meter.cores()
        wall = time.perf_counter() - meter.began
    finally:
        child.kill()
        child.wait()
    # The grandchild ended before the look; its 0.3 s is in the child's count of reaped children.
    workers_seconds = cores["workers"] * wall
    assert 0.55 <= workers_seconds <= 0.6 + 0.5 * wall  # the interpreters' start-up is CPU too
    assert cores["client"] * wall < 0.3  # this process only waited


def way(median: float, runs: int = 3) -> dict[str, Any]:
    return {"median": median, "min": median * 0.9, "max": median * 1.1, "runs": runs}


def scale(rows: int, rate: float, delete_seconds: float) -> dict[str, Any]:
    return {
        "rows": rows,
        "rows_per_s": rate,
        "peak_rss_mb": 120.0,
        "conversion_peak_rss_mb": [40.0, 250.0],
        "pages": {"job_page": {"ms_median": 120.0}, "failed_items_page": {"ms_median": 700.0}},
        "delete_seconds": delete_seconds,
    }


def by_what(rows: list[TargetRow]) -> dict[str, TargetRow]:
    return {row.what.strip(): row for row in rows}


def test_each_target_is_judged_from_the_medians() -> None:
    results = {
        "ways": {
            "threaded_batch_write_item": way(5000),
            "plain_http": way(9000),
            "csv_threads": way(4000),
            "bulkwrites_1_worker": way(6500),
            "end_to_end": way(3000, runs=1),
            "sink_bulkwrites_1_worker": way(12000),
        },
        "ledger": {**way(39000), "threads": 4},
        "scale": scale(10_000_000, 60_000, 31.0),
    }
    rows = by_what(target_rows(results))
    first = rows["1. file to table, end to end / the csv+threads script"]
    assert (first.figure, first.verdict) == ("0.75x", "NOT met")
    second = rows["2. writing, 1 worker, full ledger / threaded boto3"]
    assert (second.figure, second.verdict) == ("1.30x", "met")
    assert rows["(the limit to approach: plain HTTP / threaded boto3)"].figure == "1.80x"
    assert rows["3. sink: items/s per worker, full ledger"].verdict == "met"
    assert rows["3. ledger alone: outcomes recorded/s (4 recorders)"].verdict == "NOT met"
    assert rows["4. staging rate, 10,000,000 rows"].verdict == "met"
    assert rows["4. peak RSS of each conversion process (2)"].verdict == "NOT met"  # 250 MB > 200
    assert rows["4. failed items page"].verdict == "NOT met"
    assert rows["4. deleting the job"].verdict == "NOT met"
    # The ways are rows too, with their ratio to the threaded ceiling and a warning of too few runs.
    e2e = rows["bulkwrites end to end: from the file, staging included"]
    assert e2e.figure.endswith("0.60x threaded [1 run]")
    assert len(target_table(target_rows(results))) == 2 + len(target_rows(results))


def test_a_part_not_run_is_not_measured_and_scale_falls_back_to_the_newest_earlier_run() -> None:
    results: dict[str, Any] = {"ways": {"threaded_batch_write_item": way(5000)}}
    rows = by_what(target_rows(results))
    assert rows["1. file to table, end to end / the csv+threads script"].verdict == "not measured"
    assert rows["3. ledger alone: outcomes recorded/s"].verdict == "not measured"
    assert rows["4. scale of one job (`--scale N`)"].verdict == "not measured"
    history = [
        {"machine": {"date": "2026-01-01T00:00:00", "git_commit": "aaaaaaa1"}, "scale": scale(10_000_000, 1, 1)},
        {"machine": {"date": "2026-01-02T00:00:00", "git_commit": "bbbbbbb2"}, "scale": scale(1_000_000, 55_000, 2)},
        {"machine": {"date": "2026-01-03T00:00:00", "git_commit": "ccccccc3"}},
    ]
    rows = by_what(target_rows(results, history))
    rate = rows["4. staging rate, 1,000,000 rows (earlier run 2026-01-02 at bbbbbbb)"]
    assert (rate.figure, rate.verdict) == ("55,000 rows/s", "met (at 1M rows, not 10M)")


def _chaos_way(seconds: list[float], not_finished: int = 0) -> dict[str, Any]:
    return {
        "seconds_median": sorted(seconds)[len(seconds) // 2],
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "runs": len(seconds),
        "not_finished": not_finished,
    }


def test_a_chaos_run_that_did_not_finish_fails_the_target_whatever_the_median() -> None:
    from bench.chaos import report_lines

    ways = {"boto3_batch_writer": _chaos_way([12.0, 13.0, 14.0]), "bulkwrites_1_worker": _chaos_way([2.5, 3.0, 60.0])}
    finished = report_lines({"chaos": {"items": 5000, "ways": ways, "bulkwrites_over_batch_writer": 3.0 / 13.0}})
    assert finished[-1].endswith("(target <= 1.5: met)")

    ways["bulkwrites_1_worker"] = _chaos_way([2.5, 3.0, 60.0], not_finished=1)
    stalled = report_lines({"chaos": {"items": 5000, "ways": ways, "bulkwrites_over_batch_writer": 3.0 / 13.0}})
    assert "1 NOT FINISHED" in stalled[-2]
    assert stalled[-1].endswith("(target <= 1.5: NOT met: 1 run(s) did not finish)")


def test_chaos_without_the_reference_writer_prints_no_ratio() -> None:
    from bench.chaos import report_lines

    ways = {"bulkwrites_1_worker": _chaos_way([2.5, 3.0, 3.5])}
    lines = report_lines({"chaos": {"items": 5000, "ways": ways, "bulkwrites_over_batch_writer": None}})
    assert not any("batch_writer time" in line for line in lines)


def test_the_cores_each_way_used_are_medians_of_its_runs_with_the_cpu_per_item() -> None:
    def run(items_per_s: float, dynamodb: float, workers: float, postgres: float) -> dict[str, Any]:
        cores = {"dynamodb": dynamodb, "client": 0.01, "workers": workers, "postgres": postgres, "redis": 0.0}
        return {"items_per_s": items_per_s, "cores": cores}

    results: dict[str, Any] = {
        "ways": {
            "threaded_batch_write_item": {
                **way(8000),
                "raw": [run(8000, 1.2, 0.0, 0.0) | {"cores": {"dynamodb": 1.2, "client": 0.56}}] * 3,
            },
            "bulkwrites_1_worker": {
                **way(7000),
                "raw": [run(7000, 1.1, 0.35, 0.14), run(6000, 1.3, 0.3, 0.2), run(8000, 1.0, 0.4, 0.1)],
            },
            "plain_http": way(11000),  # an old run's figures, without cores: no row
        },
        "machine": {"nproc": 2},
    }
    bulkwrites = cores_medians(results["ways"]["bulkwrites_1_worker"])
    assert bulkwrites is not None
    assert (bulkwrites["dynamodb"], bulkwrites["workers"], bulkwrites["postgres"]) == (1.1, 0.35, 0.14)
    # Per item, each run's own ratio, then the median: 1e6 x 0.5 / 7000, 0.51 / 6000, 0.51 / 8000.
    assert bulkwrites["us_per_item_rest"] == pytest.approx(1e6 * 0.5 / 7000)
    assert bulkwrites["us_per_item_dynamodb"] == pytest.approx(1e6 * 1.1 / 7000)
    table = cores_table(results)
    assert table[0].startswith("| way | DynamoDB Local | bench process | workers | PostgreSQL |")
    assert "Redis" not in table[0]  # nobody used it
    assert "fault proxy" not in table[0]
    assert [line.split(" | ")[0] for line in table[2:]] == ["| threaded_batch_write_item", "| bulkwrites_1_worker"]
    assert table[2].endswith("| 150 / 70 |")
    row = by_what(target_rows(results))[
        "(cores DynamoDB Local got / everything else used: threaded boto3; bulkwrites, 1 worker)"
    ]
    assert row.figure == "1.20 / 70 µs an item; 1.10 / 71 µs an item"
    assert cores_table({"ways": {"plain_http": way(11000)}}) == []
