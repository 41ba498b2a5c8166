"""Stand-ins for the runner's job, run by RQ's own worker in the RQ contract suite.

RQ's worker cannot run the runner's job (`worker.jobs.generate` runs only inside a runner worker
process, on that process's engine and event publisher: worker.context), so the stock side of the
suite runs these, one per outcome the runner's job has: finish with a result, fail, run for a
while (until an operator stops it), fail once and succeed when requeued.
"""

from __future__ import annotations

import time

from rq import get_current_job


def add(a: int, b: int) -> int:
    """Finish with a result."""
    return a + b


def boom() -> None:
    """Fail."""
    raise RuntimeError("boom: this job fails")


def hold(seconds: float) -> str:
    """Run for `seconds` (a stock worker's stop kills its work horse)."""
    time.sleep(seconds)
    return "held"


def flaky(flag: str) -> str:
    """Fail the first time (setting `flag` in Redis), succeed once requeued."""
    job = get_current_job()
    assert job is not None
    if job.connection.set(flag, 1, nx=True, ex=600):
        raise RuntimeError("flaky: first run fails")
    return "second run"
