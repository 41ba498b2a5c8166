"""RQ's start bookkeeping for a batch of jobs, in one round trip, safe to run twice.

Only jobs still queued start: one the web cancelled meanwhile stays canceled, and its generation
(already on its way) is stopped. A start is tried again while Redis cannot be reached, for as
long as an outage may last (common.outage: a restart, a failover); one that still cannot be
recorded stops every generation of the batch: a job running outside RQ's records would be failed
by RQ's intermediate-queue cleanup a minute later while it still ran. Its client hears why (a
Failed event), and each job's end is recorded by its thread once Redis answers
(`record_unstarted`). The commands are RQ's (rq/executions.py Execution.create, rq/job.py
Job.prepare_for_execution), except that the registries' expiry scores are written on Redis's
clock (worker.clock), which the web counts them with. The RQ execution each start creates is its
`done_if` key (common.job_state): a start whose reply was lost and that the client sent again
finds its own execution, and counts as started, not as "ended elsewhere".
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from uuid import uuid4

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.utils import now, utcformat
from rq.worker import BaseWorker, WorkerStatus

from common.errors import JobCancelled
from common.job_state import Command, Guarded, commands, run_guarded
from common.outage import through_outage
from worker import records
from worker.active import ActiveJobs
from worker.clock import RedisClock
from worker.retention import PromptRetention

logger = logging.getLogger(__name__)

# RQ bookkeeping lifetimes: short, so a vanished worker's jobs are reclaimed fast by RQ's cleanup.
WORKER_TTL_S = 30
EXECUTION_TTL_S = 30
ENDED_ELSEWHERE = "ended elsewhere before it started"
# The cancel reason of the jobs whose start could not be recorded; their clients read
# "the job was <reason>" (worker.jobs).
START_UNRECORDED = "stopped: the worker could not record its start in Redis"
_QUEUED_OR_STARTED = frozenset({JobStatus.QUEUED, JobStatus.STARTED})


class Batch:
    """Jobs taken together from one queue: their RQ executions, known once the start bookkeeping is done."""

    def __init__(self, intermediate: str = "", token_key: str = "") -> None:
        self.ready = threading.Event()
        self.intermediate = intermediate
        self.token_key = token_key
        # Each job's execution as planned, before the start is written (the start may have run
        # in Redis even though its answer never came back).
        self.planned: list[Execution] = []
        self.executions: list[Execution | None] | None = None
        # Why the start could not be recorded (None: it was, or is not known yet).
        self.unrecorded: str | None = None

    def recorded(self) -> bool:
        """Whether the batch's start was recorded (waits for the bookkeeping)."""
        self.ready.wait()
        return self.executions is not None

    def execution(self, index: int) -> Execution | None:
        """The execution of the batch's `index`-th job (waits for the bookkeeping); None if it
        was not started here (another process had ended it first)."""
        if not self.recorded():
            raise RuntimeError("the jobs' start could not be recorded in Redis")
        assert self.executions is not None
        return self.executions[index]


def add_execution(pipe: Pipeline, job: Job, execution: Execution, expires: float, *, xx: bool) -> None:
    """An execution's entries in the job's StartedJobRegistry and ExecutionRegistry, expiring at
    `expires` (Redis's clock), as RQ's add_execution / ExecutionRegistry.add write them."""
    registry = ExecutionRegistry(job_id=job.id, connection=pipe)
    pipe.zadd(job.started_job_registry.key, {execution.composite_key: int(expires)}, xx=xx)
    pipe.zadd(registry.key, {execution.id: int(expires) + 60}, xx=xx)
    if not xx:
        pipe.expire(registry.key, EXECUTION_TTL_S + 60)


# Job.heartbeat's HSET, only on a job that still exists: one whose record was lost (a failover
# before the replica had it) must not come back as a stub that never expires.
_HEARTBEAT_IF_PRESENT = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[1]) end"
)


def refresh_executions(pipe: Pipeline, executions: list[Execution], expires: float) -> None:
    """RQ's heartbeat of running executions (rq/executions.py Execution.heartbeat, Job.heartbeat),
    but never bringing back a record that is gone: not Execution.heartbeat, whose HSET would
    recreate the record of an execution a job thread ended while the beat was on its way (EXPIRE
    and XX never do), nor Job.heartbeat's HSET on a job Redis lost."""
    for execution in executions:
        job = execution.job
        pipe.expire(execution.key, EXECUTION_TTL_S)
        add_execution(pipe, job, execution, expires, xx=True)
        pipe.eval(_HEARTBEAT_IF_PRESENT, 1, job.key, utcformat(now()))


class Starter:
    """Writes the start of taken jobs: executions, status STARTED, registries, the worker BUSY."""

    def __init__(
        self,
        worker: BaseWorker,
        clock: RedisClock,
        active: ActiveJobs,
        prompts: PromptRetention | None = None,
    ) -> None:
        self.worker = worker
        self.clock = clock
        self.active = active
        self.prompts = prompts

    def start(self, jobs: list[Job], batch: Batch) -> None:
        """Record the jobs' start and stop each one another process ended first. A start that
        cannot be recorded stops every job of the batch, then raises (the take loop backs off)."""
        try:
            batch.executions = self.mark_started(jobs, batch)
        except Exception as exc:
            batch.unrecorded = f"{type(exc).__name__}: {exc}"
            logger.error("jobs %s: their start could not be recorded (%s); stopping them",
                         ", ".join(job.id for job in jobs), batch.unrecorded)  # fmt: skip
            for job in jobs:
                self.active.cancel(job.id, START_UNRECORDED)
            raise
        finally:
            batch.ready.set()
        for job, execution in zip(jobs, batch.executions, strict=True):
            if execution is None:
                self.active.cancel(job.id, ENDED_ELSEWHERE)

    def mark_started(self, jobs: list[Job], batch: Batch) -> list[Execution | None]:
        """Start the jobs still queued; returns each one's execution, or None for a job that had ended."""
        planned = [self._start_commands(job) for job in jobs]
        batch.planned = [execution for execution, _ in planned]
        guarded = [
            Guarded(job.key, {JobStatus.QUEUED}, start, done_if=execution.key)
            for job, (execution, start) in zip(jobs, planned, strict=True)
        ]
        # Off the intermediate queue whatever the status (RQ removes it in the same transaction).
        first: list[Command] = [("LREM", batch.intermediate, 1, job.id) for job in jobs]
        if batch.token_key:
            first.append(("DEL", batch.token_key))
        last = commands(self.worker.connection, self._busy_and_alive)
        # The jobs run already: their start is recorded once Redis answers (a failover). Each try
        # sends the same commands, so one whose answer was lost finds its own execution (done_if).
        found = through_outage(
            lambda: run_guarded(self.worker.connection, guarded, first=first, last=last), "start bookkeeping"
        )
        executions: list[Execution | None] = []
        for job, (execution, _), status in zip(jobs, planned, found, strict=True):
            if status is None:
                self.worker.executions[execution.id] = execution
                executions.append(execution)
            else:
                logger.info("job %s: %s (%s); not run", job.id, ENDED_ELSEWHERE, status)
                executions.append(None)
        return executions

    def _start_commands(self, job: Job) -> tuple[Execution, list[Command]]:
        """RQ's start bookkeeping for one job (rq/executions.py Execution.create), as commands."""
        name = self.worker.name
        execution = Execution(uuid4().hex, job.id, connection=job.connection, worker_name=name)
        execution._job = job

        def start(pipe: Pipeline) -> None:
            execution.save(ttl=EXECUTION_TTL_S, pipeline=pipe)
            add_execution(pipe, job, execution, self.clock.now() + EXECUTION_TTL_S, xx=False)
            pipe.sadd(execution.worker_executions_key, execution.composite_key)
            pipe.expire(execution.worker_executions_key, EXECUTION_TTL_S + 60)
            job.prepare_for_execution(name, pipeline=pipe)
            pipe.persist(job.key)
            if self.prompts is not None:
                self.prompts.on_start([job], pipe, self.clock.now())

        return execution, commands(self.worker.connection, start)

    def _busy_and_alive(self, pipe: Pipeline) -> None:
        self.worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self.worker.heartbeat(WORKER_TTL_S + 60, pipeline=pipe)


def record_unstarted(worker: records.Recorder, job: Job, batch: Batch, index: int, end: Any) -> None:
    """The end of a job whose start could not be recorded, once Redis answers: finished if it
    returned (`end`, its result) before it could be stopped, else failed, saying why. The start
    may have run in Redis after all (only its answer was lost): either way the job ends once, its
    planned execution leaves every registry, and its id leaves the intermediate list."""
    execution = batch.planned[index] if index < len(batch.planned) else None

    def write() -> None:
        if isinstance(end, BaseException):
            why = f"the worker could not record its start in Redis ({batch.unrecorded}); it was stopped"
            if not isinstance(end, JobCancelled):
                why += f" after it failed: {type(end).__name__}: {end}"
            records.record_failure(worker, job, execution, why, expected=_QUEUED_OR_STARTED)
        else:
            assert execution is not None  # planned before the start was sent
            records.record_success(worker, job, execution, end, expected=_QUEUED_OR_STARTED)
        with worker.connection.pipeline() as pipe:
            pipe.lrem(batch.intermediate, 1, job.id)
            if batch.token_key:
                pipe.delete(batch.token_key)
            pipe.execute()

    try:
        through_outage(write, f"job {job.id}: end bookkeeping")  # each step is safe to repeat
    except (RedisError, OSError) as exc:
        # RQ's maintenance fails it later (IntermediateQueue.cleanup, or StartedJobRegistry.cleanup
        # once the execution this worker never refreshes expires).
        logger.warning("job %s: its end could not be recorded either (%s); RQ's cleanup will fail it", job.id, exc)
