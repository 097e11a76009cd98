"""A worker asked to stop: its run stops as for a pause, but hands the rest over (services/shutdown.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bulkwrites.services import shutdown
from bulkwrites.services.running import RunControl, RunReport


@pytest.fixture
def stop_requested() -> Iterator[None]:
    shutdown.request()
    yield
    shutdown.clear()


def test_a_run_whose_worker_is_asked_to_stop_stops_and_hands_over(stop_requested: None) -> None:
    control = RunControl(lambda: ("running", None), ["running"])
    assert control.should_stop()
    assert control.stop_reason == "shutdown"
    assert RunReport(stopped_by=control.stop_reason).hands_over


def test_without_the_request_a_run_goes_on_and_a_pause_is_not_handed_over() -> None:
    running = RunControl(lambda: ("running", None), ["running"])
    running.poll(force=True)
    assert not running.should_stop()
    paused = RunControl(lambda: ("paused", None), ["running"])
    paused.poll(force=True)
    assert paused.should_stop()
    assert paused.stop_reason == "paused"
    assert not RunReport(stopped_by=paused.stop_reason).hands_over
    assert RunReport(stopped_by="budget").hands_over


def test_an_operators_stop_seen_first_keeps_its_reason(stop_requested: None) -> None:
    cancelled = RunControl(lambda: ("cancelled", None), ["running"])
    cancelled.poll(force=True)
    assert cancelled.should_stop()
    assert cancelled.stop_reason == "cancelled"  # not handed over: the operator stopped it
