"""RQ's start bookkeeping for a batch of jobs, in one round trip, safe to run twice.

Only jobs still queued start: one the web cancelled meanwhile stays canceled, and its generation
(already on its way) is stopped. The commands are RQ's (rq/executions.py Execution.create,
rq/job.py Job.prepare_for_execution), except that the registries' expiry scores are written on
Redis's clock (worker.clock), which the web counts them with. The RQ execution each start
creates is its `done_if` key (common.job_state): a start whose reply was lost and that the
client sent again finds its own execution, and counts as started, not as "ended elsewhere".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from uuid import uuid4

from redis.client import Pipeline
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.utils import now, utcformat
from rq.worker import BaseWorker, WorkerStatus

from common.job_state import Command, Guarded, commands, run_guarded
from worker.clock import RedisClock

logger = logging.getLogger(__name__)

# RQ bookkeeping lifetimes: short, so a vanished worker's jobs are reclaimed fast by RQ's cleanup.
WORKER_TTL_S = 30
EXECUTION_TTL_S = 30
ENDED_ELSEWHERE = "ended elsewhere before it started"


class Batch:
    """Jobs started together: their RQ executions, known once the start bookkeeping is done."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.executions: list[Execution | None] | None = None

    def execution(self, index: int) -> Execution | None:
        """The execution of the batch's `index`-th job (waits for the bookkeeping); None if it
        was not started here (another process had ended it first)."""
        self.ready.wait()
        if self.executions is None:
            raise RuntimeError("the jobs' start could not be recorded in Redis")
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
        on_start: Callable[[list[Job], Pipeline], None] | None = None,
    ) -> None:
        self.worker = worker
        self.clock = clock
        self.on_start = on_start

    def mark_started(self, jobs: list[Job], intermediate: str, token_key: str) -> list[Execution | None]:
        """Start the jobs still queued; returns each one's execution, or None for a job that had ended."""
        planned = [self._start_commands(job) for job in jobs]
        guarded = [
            Guarded(job.key, {JobStatus.QUEUED}, start, done_if=execution.key)
            for job, (execution, start) in zip(jobs, planned, strict=True)
        ]
        # Off the intermediate queue whatever the status (RQ removes it in the same transaction).
        first: list[Command] = [("LREM", intermediate, 1, job.id) for job in jobs]
        if token_key:
            first.append(("DEL", token_key))
        last = commands(self.worker.connection, self._busy_and_alive)
        found = run_guarded(self.worker.connection, guarded, first=first, last=last)
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
            if self.on_start is not None:
                self.on_start([job], pipe)

        return execution, commands(self.worker.connection, start)

    def _busy_and_alive(self, pipe: Pipeline) -> None:
        self.worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self.worker.heartbeat(WORKER_TTL_S + 60, pipeline=pipe)
