"""The rate controller's pure Python side: charges, shares, the cap's pace, the policy's wire order, the words."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources

import pytest

from bulkwrites.dynamo.ratelimit import JobKeys, RatePolicy, charge_delta, explain
from bulkwrites.dynamo.ratelimit.policy import refused_share

POLICY = RatePolicy()


@pytest.mark.parametrize(("estimate", "consumed", "delta"), [(25, 25, 0), (25, 30, 5), (25, 20, -5), (25, 0, 0)])
def test_charge_delta_prefers_what_dynamodb_reported(estimate: float, consumed: float, delta: float) -> None:
    assert charge_delta(estimate, consumed) == delta


@pytest.mark.parametrize(("estimate", "consumed", "delta"), [(25, 10, 0), (25, 30, 5), (25, 0, 0)])
def test_a_throttled_call_is_not_refunded_what_dynamodb_refused(estimate: float, consumed: float, delta: float) -> None:
    assert charge_delta(estimate, consumed, throttled=True) == delta


def test_a_refused_share_is_the_part_of_the_call_refused() -> None:
    assert refused_share(25, 25) == 1.0  # a throttling error
    assert refused_share(25, 1) == pytest.approx(0.04)  # 1 of 25: a much weaker signal
    assert refused_share(0, 0) == 0.0
    assert refused_share(10, 12) == 1.0


def test_a_cap_is_paced_so_that_a_full_bucket_never_puts_a_10_second_window_over_it() -> None:
    paced = POLICY.paced_cap(1000.0)
    assert paced == pytest.approx(1000.0 * (1 - POLICY.burst_seconds / POLICY.cap_window))
    for window in (10.0, 30.0, 600.0):  # worst case: a full bucket at the window's start
        assert paced * window + paced * POLICY.burst_seconds <= 1000.0 * window


def test_the_policy_reaches_lua_in_the_order_common_lua_reads_it() -> None:
    source = resources.files("bulkwrites.dynamo.ratelimit").joinpath("common.lua").read_text()
    block = re.search(r"POLICY_FIELDS = \{(.*?)\}", source, re.S)
    assert block is not None
    lua_names = re.findall(r"'(\w+)'", block.group(1))
    assert len(lua_names) == len(dataclasses.fields(RatePolicy)) == len(POLICY.args())
    assert lua_names[:3] == ["burst", "cap_window", "c"]
    assert lua_names[-1] == "seen_rank"
    assert [f.name for f in dataclasses.fields(RatePolicy)][-1] == "seen_rank"


def test_keys_share_a_cluster_slot() -> None:
    keys = JobKeys.for_job("bulkwrites:12")
    tags = {re.search(r"\{(.*?)\}", key).group(1) for key in keys.all()}  # type: ignore[union-attr]
    assert tags == {"bulkwrites:12"}


def test_the_page_says_why_a_cut_rate_is_what_it_is() -> None:
    control = {
        "mode": "ctl",
        "w_max": "1057",
        "ev": "cut",
        "ev_at": "1796246584.0",
        "ev_s": "0.06",
        "ev_bg": "0",
        "ev_from": "1100",
        "ev_to": "1004",
        "ev_floor": "880",
    }
    text = explain(control, cap=None, allowed=1004.0, policy=POLICY)
    assert text.startswith("allowed 1,004 WCU/s; cut x0.91 at ")
    assert "after DynamoDB refused 6 % of a round's units" in text
    assert "floor 880" in text
    assert text.endswith("climbing back to 1,057")
    held = explain(control | {"hold": "4"}, cap=None, allowed=1004.0, policy=POLICY)
    assert held.endswith(
        "climbing back to 1,057 after 4 s held below it (the last cuts found the table at the same rate)"
    )


def test_the_page_says_when_the_floor_held_and_when_faults_were_told_from_capacity() -> None:
    held = {"mode": "ctl", "w_max": "720", "ev": "cut", "ev_at": "1", "ev_s": "1", "ev_from": "5000"}
    held |= {"ev_to": "720", "ev_floor": "720"}
    assert "held at the floor 720 = 90 % of what the table delivered over the last 10 s" in explain(
        held, cap=None, allowed=720.0, policy=POLICY
    )
    undo = {"mode": "ctl", "w_max": "3000", "ev": "undo", "ev_at": "1", "ev_s": "0.33", "ev_bg": "0.33"}
    assert "refused whatever the rate (a fault, not capacity)" in explain(undo, cap=None, allowed=3000.0, policy=POLICY)
    assert explain({}, cap=None, allowed=None, policy=POLICY).startswith("unlimited")
    opened = {"mode": "open", "ev": "undo", "ev_at": "1", "ev_s": "0.04", "ev_bg": "0.04", "ev_to": ""}
    assert "unlimited again since" in explain(opened, cap=None, allowed=None, policy=POLICY)
    assert "4 % of units are refused whatever the rate" in explain(opened, cap=None, allowed=None, policy=POLICY)
    at_cap = explain({}, cap=1000.0, allowed=POLICY.paced_cap(1000.0), policy=POLICY)
    assert at_cap.startswith("allowed 975 WCU/s: the cap of 1,000 WCU/s, paced at 975")
