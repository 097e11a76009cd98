"""Write-capacity rate control shared by every worker of a job, kept in Redis.

Every process and thread writing for one job shares one budget, under
``bulkwrites:rate:{<job>}:*`` (``keys.py``), changed only by two Lua programs run atomically
in Redis: ``take.lua`` (the token bucket) and ``report.lua`` (what calls cost and how DynamoDB
answered; the adaptive rate), with ``common.lua`` shared by both.

The rate a call may use is the lower of

* the operator's **cap** (``set_rate_cap``), paced at ``cap x (1 - burst / 10 s)`` so that no
  window of 10 s or more gets more than the cap, even one that starts with a full bucket; and
* the **adaptive rate**, which follows what DynamoDB takes:

  - *Evidence is weighed by share.* Each call reports the share of its units DynamoDB refused (1
    for a throttling error, 3/25 for 3 of 25 unprocessed). Faults that say nothing about capacity
    (5xx, a dropped connection, a timeout) are not evidence at all (botocore's adaptive mode
    reacts to throttling errors only).
  - *Once per round.* Shares are summed over a round of at least 0.25 s, two smoothed round trips
    and 8 calls, counting only calls admitted since the round began (TCP reacts once per round
    trip; calls in flight describe the old rate). A round counts when its mean share exceeds the
    background share by 2.5 standard errors: one unlucky call is not a trend. Except above the
    last good rate with no background learnt: there a single refused item answers the probe
    (a rate 1-2 % above the table's refuses one item in some calls, never significant in a round).
  - *Cut to what the table took* (TCP Westwood): the rate sent x (1 - the share beyond background),
    less 5 % headroom, never below a **floor**: 90 % of what the table delivered over the last 10 s.
    Where the table refused nearly every call of a round it was empty throughout, and what those
    calls consumed over the time they were sent is its rate, if lower. A probe answered far above
    the last take a full round measured goes back to that take (the table's burst hid how far
    above it the probe had gone).
  - *Probe back, then beyond* (CUBIC): W(t) = w_max (1 + c (t - k)^3) climbs back to w_max, the rate
    the table last took, in k = cbrt(cut / c) seconds, lingers there, then probes above it:
    linearly at 2 % of w_max per second for 5 s (a table's burst capacity hides an overshoot
    until it is spent), then ever faster (a w_max set on an unreliable round is left in seconds);
    never above twice the rate actually sent (botocore's clamp).
  - *Faults are told from capacity by how they answer a cut.* The round after a cut checks it: had
    capacity caused the refusals, the table's take stayed the same and the share falls as the
    rate does. If the share stays, it does not depend on the rate: it becomes the background
    (which then follows the rounds' shares, and fades when the faults stop) and the cut is undone.
    A chain of such tests compares each round with the share pooled over the chain's rounds, and
    learns that pooled share: one round of eight calls is too noisy to stand for it. The writer
    is told the background with each report: a refusal it explains does not lengthen the
    writer's backoff.
    The test starts again whenever a call sent before the cut comes back during it: until then
    the table was still spending its capacity on the old rate.
  - An uncapped job starts unlimited (no Redis call per call); its first round with refusals starts
    the adaptive rate from what was sent in that round, over a real round, with an empty bucket,
    cut by the share of the calls the table refused (not diluted by those its burst served whole),
    and aimed back up where the diluted estimates put the table.
    After 10 s without a cut and a curve above twice what it sends, it is unlimited again.

The last decision and its numbers are kept in the control hash for the job page
(``status.read_status``): "allowed 812 WCU/s; cut x0.81 at 12:03:04 after DynamoDB refused 18 % of
a round's units; floor 640; climbing back to 950".

Token bucket with tickets (``take.lua``): at most ``rate x burst`` tokens, refilled at ``rate``;
``take(n)`` books n tokens (the bucket may go negative: a queue) and hands out a ticket; the caller
goes once the bucket, counted from its ticket, holds ``min(n, capacity)``. Waiting callers are
served first come, first served, polling at most every 0.5 s at the rate of that moment, so an
operator's change reaches them at once. What DynamoDB reports consumed replaces the estimate
after the call; a throttled call keeps its estimate charged.

All times are the Redis server's ``TIME``. This package is plain Python (no Django).
"""

from .keys import JobKeys, delete_rate_state, get_rate_cap, set_rate_cap
from .limiter import JobRateLimiter
from .policy import RatePolicy, charge_delta
from .scripts import GRANTED, UNLIMITED, WAIT, Limits, Outcomes, Scripts, Take
from .status import RateStatus, explain, observed_from, read_status

__all__ = [
    "GRANTED",
    "UNLIMITED",
    "WAIT",
    "JobKeys",
    "JobRateLimiter",
    "Limits",
    "Outcomes",
    "RatePolicy",
    "RateStatus",
    "Scripts",
    "Take",
    "charge_delta",
    "delete_rate_state",
    "explain",
    "get_rate_cap",
    "observed_from",
    "read_status",
    "set_rate_cap",
]
