"""What the job page shows about a job's rate: the numbers, and why the rate is what it is."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .keys import JobKeys, positive, text
from .policy import RatePolicy

OBSERVED_WINDOW = 10


def observed_from(fields: Mapping[Any, Any], now: float, window: int) -> float:
    """WCU/s consumed over the last ``window`` seconds, from the per-second sums of the ``consumed`` hash."""
    values = {text(k): float(v) for k, v in fields.items()}
    second = math.floor(now)
    total = sum(values.get(str(s), 0.0) for s in range(second - window + 1, second + 1))
    span = window - 1 + (now - second)
    first = values.get("first")
    if first is not None:
        span = min(span, now - first)  # a job that began 2 s ago has not been idle for 8
    return total / max(1.0, span)


@dataclass(frozen=True)
class RateStatus:
    cap: float | None
    allowed: float | None  # WCU/s calls may use now; None = unlimited
    observed: float  # WCU/s consumed over the last 10 s
    reason: str  # one sentence: why the rate is what it is


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")


def _n(value: float) -> str:
    return f"{value:,.0f}"


def explain(control: Mapping[str, str], *, cap: float | None, allowed: float | None, policy: RatePolicy) -> str:
    """The limiter's last decision in words, from the control hash (see report.lua's ``ev*`` fields)."""
    f = {k: float(v) for k, v in control.items() if k not in ("mode", "ev", "qs") and v not in ("", None)}
    event, mode = control.get("ev", ""), control.get("mode", "")
    restored = (
        f"Redis had lost the job's rate state at {_clock(f['ev_at'])}; the {100 * f.get('ev_bg', 0.0):.0f} % of units"
        " its workers last heard were refused whatever the rate is background again"
        if event == "restore"
        else ""
    )
    if allowed is None:
        head = "unlimited: DynamoDB has not refused anything the job could not absorb"
        if restored:
            head = f"unlimited: {restored}"
        if event == "open":
            head = f"unlimited again since {_clock(f['ev_at'])}: no cut for {policy.release_after:.0f} s"
        elif event == "undo":
            head = (
                f"unlimited again since {_clock(f['ev_at'])}: cuts undone, {100 * f.get('ev_bg', 0.0):.0f} % of units"
                " are refused whatever the rate (a fault, not capacity), now treated as background"
            )
        return head
    parts = [f"allowed {_n(allowed)} WCU/s"]
    at_cap = cap is not None and allowed >= policy.paced_cap(cap) - 1e-9
    if cap is not None and at_cap:
        parts[0] += (
            f": the cap of {_n(cap)} WCU/s, paced at {_n(policy.paced_cap(cap))} so that no "
            f"{policy.cap_window:.0f} s window gets more"
        )
    if event == "cut":
        share, bg = f.get("ev_s", 0.0), f.get("ev_bg", 0.0)
        factor = f["ev_to"] / f["ev_from"] if f.get("ev_from") else 1.0
        text_ = (
            f"cut x{factor:.2f} at {_clock(f['ev_at'])} after DynamoDB refused {100 * share:.0f} % of a round's"
            f" units" + (f" (background {100 * bg:.0f} %)" if bg >= 0.005 else "")
        )
        floor = f.get("ev_floor", 0.0)
        if floor and f.get("ev_to", 0.0) <= floor + 1e-6:
            text_ += (
                f"; held at the floor {_n(floor)} = {100 * policy.floor_fraction:.0f} % of what the table"
                f" delivered over the last {policy.floor_window} s"
            )
        elif floor:
            text_ += f"; floor {_n(floor)}"
        parts.append(text_)
    elif restored:
        parts.append(restored)
    elif event == "undo":
        parts.append(
            f"a cut undone at {_clock(f['ev_at'])}: {100 * f.get('ev_s', 0.0):.0f} % of units are refused whatever the"
            f" rate (a fault, not capacity), now treated as background"
        )
    if mode == "ctl" and f.get("w_max") and not at_cap:
        if allowed < f["w_max"] * 0.995:
            climb = f"climbing back to {_n(f['w_max'])}"
            if f.get("hold"):
                climb += f" after {f['hold']:.0f} s held below it (the last cuts found the table at the same rate)"
            parts.append(climb)
        else:
            parts.append(f"probing above {_n(f['w_max'])}, the last rate the table took")
    return "; ".join(parts)


def read_status(redis: Any, job_id: object, *, policy: RatePolicy | None = None) -> RateStatus:
    """The job's rate as every worker sees it (one read of the state and one script run)."""
    from .scripts import Scripts

    policy = policy or RatePolicy()
    keys = JobKeys.for_job(job_id)
    limits = Scripts(redis, policy).report(keys)
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.control)
    pipe.hgetall(keys.consumed)
    control_raw, consumed = pipe.execute()
    control = {text(k): text(v) for k, v in control_raw.items()}
    observed = observed_from(consumed, limits.now, OBSERVED_WINDOW)
    reason = explain(control, cap=limits.cap, allowed=limits.rate, policy=policy)
    return RateStatus(cap=positive(limits.cap), allowed=limits.rate, observed=observed, reason=reason)
