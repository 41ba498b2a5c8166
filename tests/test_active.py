"""The worker's running-jobs map: cancels that arrive before their job, and what they cost."""

from __future__ import annotations

import time

import pytest

from common.errors import JobCancelled
from worker import active
from worker.active import ActiveJobs


def test_a_cancel_that_arrives_early_refuses_its_job_once() -> None:
    jobs = ActiveJobs()
    assert jobs.cancel("j1", "the client went away") is False
    with pytest.raises(JobCancelled):
        jobs.start("j1", "reply")
    jobs.start("j1", "reply")  # the cancel was used up
    assert jobs.early_cancels() == 0


def test_early_cancels_are_forgotten_after_their_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(active.time, "monotonic", lambda: clock[0])
    jobs = ActiveJobs()
    jobs.cancel("old", "x")
    clock[0] += active.EARLY_CANCEL_MEMORY_S + 1
    jobs.cancel("new", "x")
    assert jobs.early_cancels() == 1
    jobs.start("old", "reply")  # forgotten: it runs


def test_early_cancels_are_bounded_in_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(active, "EARLY_CANCEL_MAX", 10)
    jobs = ActiveJobs()
    for i in range(25):
        jobs.cancel(f"j{i}", "x")
    assert jobs.early_cancels() == 10
    with pytest.raises(JobCancelled):
        jobs.start("j24", "reply")


def test_a_cancel_costs_the_same_however_many_came_before() -> None:
    """Every refusal and cancel reaches every worker: the n-th must not cost more than the first."""
    jobs = ActiveJobs()

    def cpu_for(start: int, count: int) -> float:
        began = time.process_time()
        for i in range(start, start + count):
            jobs.cancel(f"job-{i:08d}", "the client went away")
        return time.process_time() - began

    first = cpu_for(0, 4000)
    second = cpu_for(4000, 4000)
    # Linear bookkeeping costs the same per cancel; rebuilding the map per cancel tripled it.
    assert second < max(first, 0.005) * 1.8, (first, second)
