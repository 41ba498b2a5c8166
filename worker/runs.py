"""Running a started job in its slot thread, then recording how it ended (worker.records).

A job cancelled by its client is recorded as canceled, one stopped by an operator as stopped, one
cut short by shutdown as failed, as RQ records them. The worker's RQ state (idle, busy,
suspended) follows the jobs running and `rq suspend`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from functools import partial

from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import Job
from rq.job_lifecycle import format_exc_info
from rq.worker import BaseWorker, WorkerStatus

from common.errors import JobCancelled
from common.outage import through_outage
from worker import records
from worker.active import ActiveJobs
from worker.draining import Slots
from worker.jobs import SHUTDOWN
from worker.starts import Batch, record_unstarted

logger = logging.getLogger(__name__)

# What RQ's worker records for a job stopped with `send_stop_job_command` (rq/worker/worker_classes.py).
STOPPED_FAILURE = "Job stopped by user, work-horse terminated."


class Runner:
    """Runs jobs in slot threads and records their ends; keeps the worker's RQ state."""

    def __init__(self, worker: records.Recorder, slots: Slots, active: ActiveJobs) -> None:
        self.worker = worker
        self.slots = slots
        self.active = active
        # Jobs an operator stopped (RQ's stop-job command): recorded stopped, not canceled.
        self.stopped_ids: set[str] = set()
        self._suspended = False
        self._state_lock = threading.Lock()

    def _set_state(self, state: WorkerStatus) -> None:
        assert isinstance(self.worker, BaseWorker)
        self.worker.set_state(state)

    def note_suspension(self, suspended: bool) -> None:
        """Follow `rq suspend` / `rq resume` as RQ's worker does (state SUSPENDED while suspended)."""
        if suspended == self._suspended:
            return
        name = self.worker.name
        if suspended:
            logger.info("worker %s: suspended, run `rq resume` to resume", name)
        else:
            logger.info("worker %s: resumed", name)
        with self._state_lock:  # a job thread going idle writes the state too
            self._suspended = suspended
            self._set_state(WorkerStatus.SUSPENDED if suspended else WorkerStatus.IDLE)

    def run(self, job: Job, batch: Batch, index: int) -> None:
        """Run one job in this thread and record its end; then give its slot back."""
        try:
            self._perform(job, batch, index)
        except Exception:
            logger.exception("job %s: bookkeeping failed", job.id)
        finally:
            if self.slots.release():
                with contextlib.suppress(RedisError, OSError), self._state_lock:
                    self._set_state(WorkerStatus.SUSPENDED if self._suspended else WorkerStatus.IDLE)

    def _perform(self, job: Job, batch: Batch, index: int) -> None:
        """Run one job in this thread, then record its success, failure or cancellation."""
        # Each end is recorded once Redis answers: a job that ends during a failover is recorded
        # on the new master (the record is guarded on its state, so a repeat changes nothing).
        what = f"job {job.id}: end bookkeeping"
        try:
            return_value = job.perform()
        except JobCancelled as exc:
            if (execution := self._started(job, batch, index, exc)) is not None:
                through_outage(partial(self._record_cancelled, job, execution, exc.msg), what)
        except Exception as exc:
            exc_info = sys.exc_info()
            if (execution := self._started(job, batch, index, exc)) is not None:
                records.log_failure(job, *exc_info)
                failed = partial(records.record_failure, self.worker, job, execution, format_exc_info(exc_info))
                through_outage(failed, what)
        else:
            if (execution := self._started(job, batch, index, return_value)) is not None:
                through_outage(partial(records.record_success, self.worker, job, execution, return_value), what)
        finally:
            self.stopped_ids.discard(job.id)

    def _started(self, job: Job, batch: Batch, index: int, end: object) -> Execution | None:
        """The job's execution once its start is recorded (waits for the bookkeeping); None if it
        was not started here: ended elsewhere first, or its start could not be recorded (then
        its end, `end`, is recorded here: worker.starts.record_unstarted)."""
        if batch.recorded():
            return batch.execution(index)
        record_unstarted(self.worker, job, batch, index, end)
        return None

    def _record_cancelled(self, job: Job, execution: Execution, why: str) -> None:
        """A cancelled job: canceled if its client left, stopped if an operator stopped it, failed on shutdown."""
        logger.info("job %s: cancelled (%s)", job.id, why)
        if job.id in self.stopped_ids:
            records.record_failure(self.worker, job, execution, STOPPED_FAILURE, stopped=True)
        elif why == SHUTDOWN:
            records.record_failure(self.worker, job, execution, f"JobCancelled: {why}")
        else:
            records.record_canceled(self.worker, job, execution)
