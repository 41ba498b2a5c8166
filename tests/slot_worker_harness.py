"""`python -m tests.slot_worker_harness REDIS_URL QUEUE`: the runner's SlotWorker on one plain RQ queue."""

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
from worker import jobguard
from worker.active import ActiveJobs
from worker.heartbeat import RQ_BEAT_S
from worker.slots import SlotWorker


def main() -> None:
    """Run one SlotWorker (one slot) until SIGTERM, with the heartbeat the worker process gives it."""
    configure_logging("INFO")
    url, queue = sys.argv[1], sys.argv[2]
    active = ActiveJobs()
    rq_jobs.ACTIVE = active
    worker = SlotWorker([queue], connection=Redis.from_url(url), name=f"{socket.gethostname()}.{os.getpid()}",
                        slots=1, active=active, grace_s=5.0)  # fmt: skip
    # The contract compares RQ's bookkeeping on plain RQ jobs: let this SlotWorker run the suite's
    # functions, which the runner's allow-list (worker.jobguard) refuses everywhere else.
    worker.job_class = Job
    jobguard.admit = lambda jobs, connection: jobs
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
