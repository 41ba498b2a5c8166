"""How a job's end is written to Redis: exactly as RQ's worker writes it, and only once.

Each function buffers RQ's own bookkeeping for one end (rq/worker/base.py: handle_job_success,
handle_job_failure; rq/job.py: Job.cancel) and commits it through `common.job_state.transition`,
so it happens only if the job is still in the state this worker left it in. Every key of the
job then expires: finished and canceled after the job's result TTL, failed and stopped after
its failure TTL (RQ's FailedJobRegistry.add expires the hash). Every end, the ends of jobs that
never started included, notes the job for prompt retention (`Recorder.note_end`) in the same
write. None sends RQ's webhooks or calls callbacks (worker.jobguard).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol

from redis import Redis
from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry
from rq.results import Result
from rq.utils import now, utcformat

from common.errors import RunnerError
from common.job_state import MISSING, transition
from common.jobs import RESULT_TTL_S


class Recorder(Protocol):
    """What recording an end needs of the worker (RQ's BaseWorker, plus `note_end`)."""

    name: str
    connection: Redis
    default_result_ttl: int
    serializer: Any
    job_class: type[Job]

    def cleanup_execution(self, job: Job, pipeline: Pipeline, execution: Execution | None = None) -> None:
        """RQ's: drop the execution's records."""

    def increment_successful_job_count(self, pipeline: Pipeline | None = None) -> None:
        """RQ's worker counter."""

    def increment_failed_job_count(self, pipeline: Pipeline | None = None) -> None:
        """RQ's worker counter."""

    def increment_total_working_time(self, job_execution_time: timedelta, pipeline: Pipeline) -> None:
        """RQ's worker counter."""

    def note_end(self, job: Job, pipe: Pipeline) -> None:
        """Note the job's end for prompt retention, in the end's own write."""


logger = logging.getLogger(__name__)


def log_failure(job: Job, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> bool:
    """Log a failed job: one line for errors we expect (engine failures), a traceback otherwise."""
    if isinstance(exc, RunnerError):
        logger.warning("job %s failed: %s", job.id, exc.msg)
    else:
        logger.error("job %s crashed", job.id, exc_info=(exc_type, exc, tb))
    return False


def _lost_race(worker: Recorder, job: Job, execution: Execution | None, end: str, status: str) -> None:
    """Another process recorded the job's end first: keep its record, drop only our execution."""
    if status == MISSING:
        # A failover to a replica that never had the job, or an emptied Redis: nothing to record it in.
        logger.warning("job %s: its record is gone from Redis (lost in a failover or a restart); ended %s, "
                       "not recorded", job.id, end)  # fmt: skip
    else:
        logger.info("job %s: already %s elsewhere; not recording it %s here", job.id, status, end)
    if execution is not None:
        with worker.connection.pipeline() as pipe:
            worker.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.execute()


def record_success(
    worker: Recorder,
    job: Job,
    execution: Execution,
    return_value: Any,
    *,
    expected: frozenset[str] = frozenset({JobStatus.STARTED}),
) -> bool:
    """RQ's success bookkeeping (status, result, registries, counters), atomically."""
    job.ended_at = now()
    job._status = JobStatus.FINISHED
    started_at = job.started_at or job.ended_at
    result_ttl = job.get_result_ttl(worker.default_result_ttl)

    def write(pipe: Pipeline) -> None:
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        pipe.hset(job.key, "ended_at", utcformat(job.ended_at))  # type: ignore[arg-type]
        Result.create(
            job, Result.Type.SUCCESSFUL, result_ttl, return_value=return_value, worker_name=worker.name,
            pipeline=pipe, execution_id=execution.id, execution_started_at=execution.created_at,
            execution_ended_at=job.ended_at,
        )  # fmt: skip
        job.finished_job_registry.add(job, result_ttl, pipe)
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        worker.cleanup_execution(job, pipeline=pipe, execution=execution)
        worker.increment_successful_job_count(pipeline=pipe)
        worker.increment_total_working_time(job.ended_at - started_at, pipe)  # type: ignore[operator]
        worker.note_end(job, pipe)

    status = transition(worker.connection, job.key, expected, write)
    if status is not None:
        _lost_race(worker, job, execution, "finished", status)
    return status is None


def record_canceled(worker: Recorder, job: Job, execution: Execution | None) -> bool:
    """A job its client gave up on: CANCELED in the CanceledJobRegistry, as Job.cancel records it."""
    job.ended_at = now()
    registry = CanceledJobRegistry(job.origin, connection=worker.connection, serializer=worker.serializer)

    def write(pipe: Pipeline) -> None:
        job.set_status(JobStatus.CANCELED, pipeline=pipe)
        pipe.hset(job.key, "ended_at", utcformat(job.ended_at))  # type: ignore[arg-type]
        registry.add(job, pipeline=pipe)
        worker.cleanup_execution(job, pipeline=pipe, execution=execution)
        pipe.expire(job.key, RESULT_TTL_S)
        worker.note_end(job, pipe)

    status = transition(worker.connection, job.key, {JobStatus.STARTED}, write)
    if status is not None:
        _lost_race(worker, job, execution, "canceled", status)
    return status is None


def record_failure(
    worker: Recorder,
    job: Job,
    execution: Execution | None,
    exc_string: str,
    *,
    stopped: bool = False,
    expected: frozenset[str] = frozenset({JobStatus.STARTED}),
) -> bool:
    """RQ's failure bookkeeping: FAILED (STOPPED when an operator stopped it), FailedJobRegistry,
    a failure Result, counters, and every key expiring after the job's failure TTL."""
    job.ended_at = now()
    end = JobStatus.STOPPED if stopped else JobStatus.FAILED
    job._status = end
    # RQ's FailedJobRegistry.add saves the whole job from memory; keep the stored data instead,
    # which prompt retention may have blanked since the job was fetched.
    stored = worker.connection.hget(job.key, "data")

    def write(pipe: Pipeline) -> None:
        job.set_status(end, pipeline=pipe)
        worker.cleanup_execution(job, pipeline=pipe, execution=execution)
        job._handle_failure(
            exc_string,
            pipeline=pipe,
            worker_name=worker.name,
            execution_id=execution.id if execution else None,
            execution_started_at=execution.created_at if execution else None,
            execution_ended_at=job.ended_at,
        )
        if stored is not None:
            pipe.hset(job.key, "data", stored)
        worker.increment_failed_job_count(pipe)
        if job.started_at is not None:
            worker.increment_total_working_time(job.ended_at - job.started_at, pipe)  # type: ignore[operator]
        worker.note_end(job, pipe)

    status = transition(worker.connection, job.key, expected, write)
    if status is not None:
        _lost_race(worker, job, execution, end, status)
    return status is None
