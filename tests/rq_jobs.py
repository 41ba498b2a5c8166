"""Job functions for the RQ contract suite: run by a stock RQ worker and by the runner's SlotWorker alike."""

from __future__ import annotations

import time

from rq import get_current_job

from common.errors import JobCancelled
from worker.active import ActiveJobs

# Set by the SlotWorker harness: its running jobs, so an operator's stop reaches `hold`.
ACTIVE: ActiveJobs | None = None


def add(a: int, b: int) -> int:
    """Finish with a result."""
    return a + b


def boom() -> None:
    """Fail."""
    raise RuntimeError("boom: this job fails")


def hold(seconds: float) -> str:
    """Run for `seconds`; under SlotWorker an operator's stop ends it (a stock worker kills its horse)."""
    job = get_current_job()
    assert job is not None
    handle = ACTIVE.start(job.id, "") if ACTIVE is not None else None
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if handle is not None and handle.cancel_reason is not None:
                raise JobCancelled(handle.cancel_reason)
            time.sleep(0.05)
        return "held"
    finally:
        if ACTIVE is not None:
            ACTIVE.finish(job.id)


def flaky(flag: str) -> str:
    """Fail the first time (setting `flag` in Redis), succeed once requeued."""
    job = get_current_job()
    assert job is not None
    if job.connection.set(flag, 1, nx=True, ex=600):
        raise RuntimeError("flaky: first run fails")
    return "second run"
