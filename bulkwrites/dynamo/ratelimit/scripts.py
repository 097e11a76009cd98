"""The two Lua programs, read from their files once and registered per Redis client.

``common.lua`` is prepended to each: Redis runs a script as one chunk, so shared functions
travel with it. redis-py's ``Script`` loads a script again by itself when the server lost it
(a restart or ``SCRIPT FLUSH``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from .keys import JobKeys, positive, text
from .policy import RatePolicy

STATE_TTL_MS = 3_600_000  # bucket and control state of a job idle for an hour are forgotten
CONSUMED_TTL_MS = 60_000

UNLIMITED = "unlimited"
GRANTED = "granted"
WAIT = "wait"


def _source(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


COMMON_LUA = _source("common.lua")
TAKE_LUA = COMMON_LUA + _source("take.lua")
REPORT_LUA = COMMON_LUA + _source("report.lua")


@dataclass(frozen=True)
class Take:
    status: str  # GRANTED, WAIT or UNLIMITED
    wait: float = 0.0  # seconds until the ticket is due (WAIT only), at the current rate
    ticket: float | None = None
    rate: float | None = None
    now: float = 0.0  # server time of the decision


@dataclass(frozen=True)
class Limits:
    cap: float | None
    rate: float | None  # what calls may use now (paced cap and adaptive rate together); None = unlimited
    now: float
    event: str = ""  # "cut", "undo", "open" when this report made the round's decision
    # The share of each call DynamoDB refuses whatever the rate, as learnt from the rounds (0: none
    # learnt; refusals are taken for capacity).
    background: float = 0.0


@dataclass(frozen=True)
class Outcomes:
    """What one or more calls cost and how DynamoDB answered them, for one report."""

    calls: int = 0  # calls that reached DynamoDB's capacity check (not 5xx or dropped connections)
    units: float = 0.0  # units those calls asked for
    refused: float = 0.0  # units DynamoDB refused (throttled calls: all of theirs)
    share_sum: float = 0.0  # sum over the calls of their refused share
    share_sq: float = 0.0  # sum of the squared shares (the round's standard error)
    consumed: float = 0.0  # units DynamoDB reported consumed (or estimated for successes)
    span: float = 0.0  # seconds these outcomes cover (0: just now)
    latency: float = 0.0  # sum of the calls' round trips, seconds
    refused_calls: int = 0  # calls of which DynamoDB refused some or all units


def _arg(value: float | None) -> str:
    return "" if value is None else repr(float(value))


class Scripts:
    """``take`` and ``report`` on one Redis client; ``now`` replaces the server's TIME (tests)."""

    def __init__(self, redis: Any, policy: RatePolicy) -> None:
        self.policy = policy
        self._take = redis.register_script(TAKE_LUA)
        self._report = redis.register_script(REPORT_LUA)

    def take(self, keys: JobKeys, units: float, ticket: float | None = None, *, now: float | None = None) -> Take:
        status, wait, ticket_text, rate, server_now = self._take(
            keys=[keys.cap, keys.control, keys.bucket],
            args=[repr(float(units)), _arg(ticket), _arg(now), STATE_TTL_MS, *self.policy.args()],
        )
        return Take(
            text(status),
            float(wait),
            float(ticket_text) if text(ticket_text) else None,
            positive(rate),
            float(server_now),
        )

    def report(
        self,
        keys: JobKeys,
        outcomes: Outcomes = Outcomes(),
        *,
        acquired_at: float | None = None,
        delta: float = 0.0,
        now: float | None = None,
        heard_background: float = 0.0,
    ) -> Limits:
        o = outcomes
        cap, rate, server_now, event, background = self._report(
            keys=list(keys.all()),
            args=[
                o.calls,
                repr(float(o.units)),
                repr(float(o.refused)),
                repr(float(o.share_sum)),
                repr(float(o.share_sq)),
                repr(float(o.consumed)),
                repr(max(0.0, float(o.span))),
                repr(max(0.0, float(o.latency))),
                _arg(acquired_at),
                repr(float(delta)),
                _arg(now),
                STATE_TTL_MS,
                CONSUMED_TTL_MS,
                o.refused_calls,
                repr(float(heard_background)),
                *self.policy.args(),
            ],
        )
        return Limits(positive(cap), positive(rate), float(server_now), text(event), float(background))
