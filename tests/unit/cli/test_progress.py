"""The CLI's progress line (dynein-like: items/s and ETA), drawn only on a terminal."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from bulkwrites.management.progress import ProgressBar, RateMeter, format_duration, progress_line


def test_the_line_reads_like_dyneins() -> None:
    line = progress_line(
        done=26_000, total=50_000, percent=52.0, items_per_second=4_812.4, eta_seconds=5.0, status="running", width=10
    )
    assert line == "[#####-----]  52.0% 26,000/50,000 4,812 items/s ETA 5 s running"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (4.6, "5 s"), (59, "59 s"), (60, "1 min 00 s"), (125, "2 min 05 s"), (3725, "1 h 02 min")],
)
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_measured_over_the_recent_window() -> None:
    clock = Clock()
    meter = RateMeter(window=10.0, clock=clock)
    assert meter.add(0) is None  # one sample: no rate yet
    for second in range(1, 31):
        clock.now += 1
        # 100 items/s for 20 s, then 1,000 items/s
        count = second * 100 if second <= 20 else 2_000 + (second - 20) * 1_000
        rate = meter.add(count)
    assert rate == pytest.approx(1_000, rel=0.01)  # not the average since the start (~400/s)


def test_a_count_going_down_starts_over() -> None:
    clock = Clock()
    meter = RateMeter(clock=clock)
    meter.add(500)
    clock.now += 1
    meter.add(600)
    clock.now += 1
    assert meter.add(100) is None  # retry-failed made items pending again


@dataclass
class FakeJob:
    done_items: int
    total_items: int
    pending_items: int
    progress_percent: float
    status: str


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_shows_rate_and_eta() -> None:
    clock = Clock()
    stream = Tty()
    bar = ProgressBar(stream, width=10, meter=RateMeter(clock=clock))
    bar.show(FakeJob(0, 1_000, 1_000, 0.0, "running"), average_rate=0.0)
    clock.now += 2
    bar.show(FakeJob(400, 1_000, 600, 40.0, "running"))
    bar.close()
    last = stream.getvalue().split("\r")[-1]
    assert last.startswith("[####------]  40.0% 400/1,000 200 items/s ETA 3 s running")
    assert stream.getvalue().endswith("\n")


def test_not_a_terminal_nothing_is_drawn() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar.show(FakeJob(1, 2, 1, 50.0, "running"), average_rate=1.0)
    bar.close()
    assert stream.getvalue() == ""
