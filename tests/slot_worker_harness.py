"""`python -m tests.slot_worker_harness REDIS_URL QUEUE`: the runner's SlotWorker on one plain RQ queue.

The configuration that ships, with one difference: its job class allows the contract suite's
job functions (tests.rq_jobs) besides the runner's own. RunnerJob (no callbacks, no webhooks),
the job guard, the command channel, the maintenance thread and an `on_taken` hook that, as
production's (worker.jobs.begin_all), tracks each job as running before its start is recorded:
all as `python -m worker` runs them.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading

from redis import Redis
from rq.job import Job

from common.logs import configure_logging
from tests import rq_jobs
from worker.active import ActiveJobs
from worker.heartbeat import RQ_BEAT_S
from worker.jobguard import RUNNER_FUNCTIONS, RunnerJob
from worker.slots import SlotWorker

CONTRACT_FUNCTIONS = frozenset(f"tests.rq_jobs.{name}" for name in ("add", "boom", "hold", "flaky"))


class ContractJob(RunnerJob):
    """A RunnerJob that may also call the contract suite's functions."""

    allowed = RUNNER_FUNCTIONS | CONTRACT_FUNCTIONS


def main() -> None:
    """Run one SlotWorker (one slot) until SIGTERM, with the heartbeat the worker process gives it."""
    configure_logging("INFO")
    url, queue = sys.argv[1], sys.argv[2]
    active = ActiveJobs()
    rq_jobs.ACTIVE = active

    def on_taken(jobs: list[Job]) -> None:
        for job in jobs:
            rq_jobs.begin(job.id)

    worker = SlotWorker([queue], connection=Redis.from_url(url), name=f"{socket.gethostname()}.{os.getpid()}",
                        slots=1, active=active, grace_s=5.0, on_taken=on_taken, job_class=ContractJob)  # fmt: skip
    worker.set_queue_order([queue])

    def beat() -> None:
        while True:
            threading.Event().wait(RQ_BEAT_S)
            try:
                worker.beat()
            except Exception:
                logging.exception("beat failed")

    threading.Thread(target=beat, daemon=True).start()
    worker.work_until_stopped()


if __name__ == "__main__":
    main()
