"""Job functions for the RQ contract suite: run by a stock RQ worker and by the runner's SlotWorker alike."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rq import get_current_job

from common.errors import JobCancelled
from worker.active import ActiveJobs, Handle

# Set by the SlotWorker harness: its running jobs, so an operator's stop reaches `hold`.
ACTIVE: ActiveJobs | None = None
# Jobs the harness began tracking when it took them, as production's on_taken does (worker.jobs.begin).
BEGUN: dict[str, Handle] = {}


def begin(job_id: str) -> None:
    """Track a job as running from the moment it is taken (the SlotWorker harness's on_taken)."""
    if ACTIVE is not None:
        BEGUN[job_id] = ACTIVE.start(job_id, "")


@contextmanager
def tracked() -> Iterator[Handle | None]:
    """The current job's handle while it runs (None under a stock RQ worker)."""
    job = get_current_job()
    assert job is not None
    handle = BEGUN.pop(job.id, None)
    try:
        yield handle
    finally:
        if ACTIVE is not None:
            ACTIVE.finish(job.id)


def add(a: int, b: int) -> int:
    """Finish with a result."""
    with tracked():
        return a + b


def boom() -> None:
    """Fail."""
    with tracked():
        raise RuntimeError("boom: this job fails")


def hold(seconds: float) -> str:
    """Run for `seconds`; under SlotWorker an operator's stop ends it (a stock worker kills its horse)."""
    with tracked() as handle:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if handle is not None and handle.cancel_reason is not None:
                raise JobCancelled(handle.cancel_reason)
            time.sleep(0.05)
        return "held"


def flaky(flag: str) -> str:
    """Fail the first time (setting `flag` in Redis), succeed once requeued."""
    with tracked():
        job = get_current_job()
        assert job is not None
        if job.connection.set(flag, 1, nx=True, ex=600):
            raise RuntimeError("flaky: first run fails")
        return "second run"
