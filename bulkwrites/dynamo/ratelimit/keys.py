"""Where a job's rate state lives in Redis, and the operator's cap.

Keys are ``bulkwrites:rate:{<job>}:<part>``; the braces are a Redis Cluster hash tag, so a job's
keys share a slot, as the scripts need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "bulkwrites:rate"


@dataclass(frozen=True)
class JobKeys:
    cap: str  # the operator's ceiling in WCU/s; absent = none
    control: str  # the adaptive rate's state (report.lua), and its last decision
    bucket: str  # the token bucket (take.lua)
    consumed: str  # WCU consumed per second of server time

    @classmethod
    def for_job(cls, job_id: object) -> JobKeys:
        base = f"{KEY_PREFIX}:{{{job_id}}}"
        return cls(f"{base}:cap", f"{base}:ctl", f"{base}:bucket", f"{base}:consumed")

    def all(self) -> tuple[str, str, str, str]:
        return (self.cap, self.control, self.bucket, self.consumed)


def set_rate_cap(redis: Any, job_id: object, wcu_per_second: float | None) -> None:
    """Set the job's ceiling in WCU/s; None or 0 makes it unlimited. Every worker sees it within ~1 s."""
    key = JobKeys.for_job(job_id).cap
    if wcu_per_second is None or wcu_per_second == 0:
        redis.delete(key)
        return
    rate = float(wcu_per_second)
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"a rate cap must be a positive number of WCU/s or None, not {wcu_per_second!r}")
    redis.set(key, repr(rate))


def get_rate_cap(redis: Any, job_id: object) -> float | None:
    return positive(redis.get(JobKeys.for_job(job_id).cap))


def delete_rate_state(redis: Any, job_id: object) -> None:
    """Forget everything about a job's rate, its cap included (for a deleted job)."""
    redis.delete(*JobKeys.for_job(job_id).all())


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def positive(value: Any) -> float | None:
    if value is None or value in ("", b""):
        return None
    number = float(value)
    return number if number > 0 else None
