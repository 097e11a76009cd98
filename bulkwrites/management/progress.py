"""The CLI's one-line progress bar, like dynein's: ``[#####-----] 52.0% 26,000/50,000 4,812 items/s ETA 5 s running``.

The rate is measured by the bar itself over its last samples (the CLI polls the job's
counters twice a second), so it says how fast the job goes now, not on average since it
started; before two samples exist it falls back to the job's average.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

RATE_WINDOW_SECONDS = 10.0


def format_duration(seconds: float) -> str:
    """``5 s``, ``2 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_line(
    *, done: int, total: int, percent: float, items_per_second: float | None, eta_seconds: float | None,
    status: str, width: int = 30,
) -> str:  # fmt: skip
    filled = max(0, min(width, int(width * percent / 100)))
    parts = [f"[{'#' * filled}{'-' * (width - filled)}]", f"{percent:5.1f}%", f"{done:,}/{total:,}"]
    if items_per_second is not None:
        parts.append(f"{items_per_second:,.0f} items/s")
    if eta_seconds is not None:
        parts.append(f"ETA {format_duration(eta_seconds)}")
    parts.append(status)
    return " ".join(parts)


class RateMeter:
    """Items per second over the last ``window`` seconds of samples of a growing count."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, count: int) -> float | None:
        now = self.clock()
        if self.samples and count < self.samples[-1][1]:
            self.samples.clear()  # retry failed items: the count went down, start over
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        first_at, first = self.samples[0]
        if now - first_at < 0.5:
            return None
        return (count - first) / (now - first_at)


class ProgressBar:
    """A one-line progress bar redrawn in place on a terminal; silent when output is not a terminal."""

    def __init__(self, stream: Any, width: int = 30, meter: RateMeter | None = None) -> None:
        self.stream = stream
        self.width = width
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.meter = meter or RateMeter()
        self.drawn = False
        self._last_len = 0

    def show(self, job: Any, *, average_rate: float = 0.0) -> None:
        """Draw ``job``'s counters; ``average_rate`` is used until the bar has measured its own."""
        if not self.enabled:
            return
        rate = self.meter.add(job.done_items)
        running = job.status == "running"
        if rate is None and running and average_rate > 0:
            rate = average_rate
        eta = job.pending_items / rate if running and rate and rate > 0 else None
        line = progress_line(
            done=job.done_items,
            total=job.total_items,
            percent=job.progress_percent,
            items_per_second=rate if running or rate else None,
            eta_seconds=eta,
            status=job.status,
            width=self.width,
        )
        padding = " " * max(0, self._last_len - len(line))  # a shorter line must cover the last
        self.stream.write(f"\r{line}{padding}")
        self.stream.flush()
        self._last_len = len(line)
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
