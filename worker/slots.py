"""An RQ worker that runs up to `slots` jobs at once, in threads of one process (no fork per job).

One worker serves one GPU's Ollama, which decodes OLLAMA_NUM_PARALLEL sequences at once; the
worker takes jobs from Redis only while one of those slots is free, so the rest stay queued for
other GPUs. Jobs are RQ jobs throughout (registries, executions, heartbeats, results) and a job
cancelled by its client is recorded as canceled, not failed.

Bookkeeping is batched, because job start is on every request's path: free slots are filled
with as many queued jobs as are waiting in one pop, fetched in one round trip and marked started
in one pipeline; a finished job is recorded in one pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType, TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat
from rq.worker import BaseWorker, WorkerStatus

from common import keys
from common.errors import JobCancelled, RunnerError
from common.jobs import RESULT_TTL_S
from worker import jobguard
from worker.active import ActiveJobs
from worker.jobs import SHUTDOWN
from worker.retention import PromptRetention

logger = logging.getLogger(__name__)

# RQ bookkeeping lifetimes: short, so a vanished worker's jobs are reclaimed fast by RQ's cleanup.
WORKER_TTL_S = 30
EXECUTION_TTL_S = 30
MAINTENANCE_INTERVAL_S = 60
DEQUEUE_TIMEOUT_S = 1
# After the grace period, cancelled jobs get this long to wind down before the worker exits.
CANCEL_WAIT_S = 5.0


def _log_failure(job: Job, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> bool:
    """Log a failed job: one line for errors we expect (Ollama failures), a traceback otherwise."""
    if isinstance(exc, RunnerError):
        logger.warning("job %s failed: %s", job.id, exc.msg)
    else:
        logger.error("job %s crashed", job.id, exc_info=(exc_type, exc, tb))
    return False


class _Batch:
    """Jobs started together: their RQ executions, known once the start bookkeeping is done."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.executions: list[Execution] | None = None

    def execution(self, index: int) -> Execution:
        """The execution of the batch's `index`-th job (waits for the bookkeeping)."""
        self.ready.wait()
        if self.executions is None:
            raise RuntimeError("the jobs' start could not be recorded in Redis")
        return self.executions[index]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SlotWorker(BaseWorker):
    """RQ worker with `slots` job threads; stops gracefully on SIGTERM/SIGINT."""

    log_result_lifespan = False

    def __init__(
        self,
        queues: list[str],
        *,
        connection: Redis,
        name: str,
        slots: int,
        active: ActiveJobs,
        grace_s: float,
        on_taken: Callable[[Job], None] | None = None,
        prompts: PromptRetention | None = None,
    ) -> None:
        super().__init__(
            queues,
            name=name,
            connection=connection,
            serializer=JSONSerializer,
            worker_ttl=WORKER_TTL_S,
            maintenance_interval=MAINTENANCE_INTERVAL_S,
            disable_default_exception_handler=True,
            exception_handlers=[_log_failure],
            job_class=jobguard.RunnerJob,
        )
        self.slots = slots
        # Jobs run at once now: the slots, or fewer for a model Ollama runs one request at a time.
        self.max_running = slots
        self.active = active
        self.grace_s = grace_s
        # Called with each job the moment it is taken, before any bookkeeping: lets it start its I/O.
        self.on_taken = on_taken
        self.prompts = prompts
        self._queues_by_name = {q.name: q for q in self.queues}
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="slot")
        self._stop = threading.Event()
        self._running = 0
        self._changed = threading.Condition()

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return self._running

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (it takes no more jobs)."""
        return self._stop.is_set()

    def set_queue_order(self, queue_names: list[str], *, slots: int | None = None) -> None:
        """Take jobs from exactly these of its queues, in this order (none: take nothing for now).

        `slots` lowers how many jobs run at once (the model schedule sets it per model).
        """
        self._ordered_queues = [self._queues_by_name[n] for n in queue_names if n in self._queues_by_name]
        self.max_running = min(self.slots, slots) if slots else self.slots

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Executions expire soon after their heartbeats stop, so RQ reclaims a dead worker's jobs."""
        return EXECUTION_TTL_S

    def beat(self) -> None:
        """Refresh RQ's records of this worker and of each running execution, in one pipeline."""
        if not self.connection.exists(self.key):
            # Redis lost its data (restarted without persistence): announce this worker again.
            self.register_birth()  # type: ignore[no-untyped-call]
        with self.connection.pipeline() as pipe:
            self.heartbeat(WORKER_TTL_S + 60, pipeline=pipe)
            for execution in list(self.executions.values()):
                job = execution.job
                execution.heartbeat(job.started_job_registry, EXECUTION_TTL_S, pipeline=pipe)
                job.heartbeat(now(), EXECUTION_TTL_S, pipeline=pipe)
            pipe.execute()
        if self.prompts is not None:
            self.prompts.sweep(self.connection)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """First signal: stop taking jobs and drain; a second one cancels running jobs at once."""
        if self._stop.is_set():
            logger.warning("worker %s: second stop signal, cancelling %d running jobs", self.name, self.busy)
            self.active.cancel_all(SHUTDOWN)
            return
        logger.info("worker %s: stop requested (signal %d); finishing running jobs", self.name, signum)
        self._shutdown_requested_date = now()
        self._stop_requested = True
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def request_stop_execution(self, execution_id: str) -> None:
        """RQ's stop-execution command: cancel that job (e.g. `rq` tooling or the dashboard)."""
        execution = self.executions.get(execution_id)
        if execution is not None:
            self.active.cancel(execution.job_id, "stopped by an operator")

    def subscribe(self) -> None:
        """Listen for RQ commands to this worker and for the web's job cancels, on one connection."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload, keys.cancel_channel(): self._on_cancel})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=1.0, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def _on_cancel(self, message: dict[str, Any]) -> None:
        job_id = message["data"].decode()
        if self.active.cancel(job_id, "the client went away"):
            logger.info("job %s: cancel requested by the web", job_id)

    def work_until_stopped(self) -> None:
        """Register with RQ, fill free slots with queued jobs until stopped, then drain and deregister."""
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        self.register_birth()  # type: ignore[no-untyped-call]
        self.subscribe()
        self.set_state(WorkerStatus.STARTED)
        logger.info("worker %s: %d slot(s), listening on %s", self.name, self.slots, ", ".join(self.queue_names()))
        backoff = 0.5
        try:
            while not self._stop.is_set():
                with self._changed:
                    self._changed.wait_for(lambda: self._running < self.max_running or self._stop.is_set(), 1.0)
                    free = self.max_running - self._running
                if free <= 0 or self._stop.is_set():
                    continue
                try:
                    self._fill(free)
                    backoff = 0.5
                except (RedisError, OSError) as exc:
                    logger.error("worker %s: Redis unavailable (%s); retrying in %.1f s", self.name, exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            self._drain()
            try:
                self.teardown()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                logger.warning("worker %s: could not deregister: %s", self.name, exc)

    def _fill(self, free: int) -> None:
        """Start up to `free` queued jobs: one pop, one fetch and one bookkeeping round trip."""
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
            self._prune_canceled()
        queues = self._ordered_queues
        if not queues:
            self._stop.wait(DEQUEUE_TIMEOUT_S)
            return
        job_ids = self._pop([q.key for q in queues], free)
        if not job_ids:
            return
        fetched = self.job_class.fetch_many(job_ids, self.connection, self.serializer)
        jobs = [job for job in fetched if job is not None]
        jobs = jobguard.admit(jobs, self.connection)
        if not jobs:
            return
        # The jobs run (their Ollama calls are out already) while RQ's start bookkeeping runs here:
        # it is off the path to the first token, which Ollama takes longer than that to produce.
        if self.on_taken is not None:
            for job in jobs:
                try:
                    self.on_taken(job)
                except Exception:
                    logger.exception("job %s: could not be started early; it starts in its thread", job.id)
        batch = _Batch()
        with self._changed:
            self._running += len(jobs)
        for index, job in enumerate(jobs):
            self._pool.submit(self._run, job, batch, index)
        try:
            batch.executions = self._mark_started(jobs)
        finally:
            batch.ready.set()

    def _pop(self, queue_keys: list[str], count: int) -> list[str]:
        """Job ids from the first non-empty queue (in listening order), up to `count`; waits a little."""
        popped = self.connection.blpop(queue_keys, DEQUEUE_TIMEOUT_S)
        if popped is None:
            return []
        key, first = popped
        ids = [_text(first)]
        if count > 1:
            more: list[bytes] | None = self.connection.lpop(key, count - 1)  # type: ignore[assignment]
            ids += [_text(job_id) for job_id in more or []]
        return ids

    def _mark_started(self, jobs: list[Job]) -> list[Execution]:
        """RQ's start bookkeeping for several jobs (executions, status, registries) in one pipeline."""
        with self.connection.pipeline() as pipe:
            executions = [Execution.create(job, EXECUTION_TTL_S, pipeline=pipe, worker_name=self.name) for job in jobs]
            for job in jobs:
                job.prepare_for_execution(self.name, pipeline=pipe)
                pipe.persist(job.key)
            if self.prompts is not None:
                self.prompts.on_start(jobs, pipe)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            self.heartbeat(WORKER_TTL_S + 60, pipeline=pipe)
            pipe.execute()
        for execution in executions:
            self.executions[execution.id] = execution
        return executions

    def _run(self, job: Job, batch: _Batch, index: int) -> None:
        try:
            self._perform(job, batch, index)
        except Exception:
            logger.exception("job %s: bookkeeping failed", job.id)
        finally:
            with self._changed:
                self._running -= 1
                idle = self._running == 0
                self._changed.notify_all()
            if idle:
                with contextlib.suppress(RedisError, OSError):
                    self.set_state(WorkerStatus.IDLE)

    def _perform(self, job: Job, batch: _Batch, index: int) -> None:
        """Run one job in this thread, then record its success, failure or cancellation."""
        try:
            return_value = job.perform()
        except JobCancelled as exc:
            self._record_cancelled(job, batch.execution(index), exc.msg)
        except Exception:
            queue = self._queues_by_name[job.origin]
            self._finalize_failure(job, queue, batch.execution(index), sys.exc_info())
        else:
            self._record_success(job, batch.execution(index), return_value)

    def _record_success(self, job: Job, execution: Execution, return_value: Any) -> None:
        """RQ's success bookkeeping (status, result, registries, counters) in one pipeline."""
        job.ended_at = now()
        job._status = JobStatus.FINISHED
        assert job.started_at is not None
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        with self.connection.pipeline() as pipe:
            job.set_status(JobStatus.FINISHED, pipeline=pipe)
            pipe.hset(job.key, "ended_at", utcformat(job.ended_at))
            Result.create(
                job, Result.Type.SUCCESSFUL, result_ttl, return_value=return_value, worker_name=self.name,
                pipeline=pipe, execution_id=execution.id, execution_started_at=execution.created_at,
                execution_ended_at=job.ended_at,
            )  # fmt: skip
            job.finished_job_registry.add(job, result_ttl, pipe)
            job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            self.increment_successful_job_count(pipeline=pipe)
            self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            pipe.execute()

    def _record_cancelled(self, job: Job, execution: Execution, why: str) -> None:
        logger.info("job %s: cancelled (%s)", job.id, why)
        job.ended_at = now()
        registry = CanceledJobRegistry(job.origin, connection=self.connection, serializer=self.serializer)
        with self.connection.pipeline() as pipe:
            job.set_status(JobStatus.CANCELED, pipeline=pipe)
            registry.add(job, pipeline=pipe)
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.expire(job.key, RESULT_TTL_S)
            pipe.execute()

    def _prune_canceled(self) -> None:
        """RQ never trims canceled registries; drop entries older than the job records they name."""
        cutoff = time.time() - RESULT_TTL_S
        for queue in self.queues:
            registry = CanceledJobRegistry(queue.name, connection=self.connection)
            self.connection.zremrangebyscore(registry.key, 0, cutoff)

    def _drain(self) -> None:
        """Give running jobs SHUTDOWN_GRACE_S to finish, then cancel them (clients get an error end)."""
        if self.busy:
            logger.info("worker %s: waiting up to %.0f s for %d running job(s)", self.name, self.grace_s, self.busy)
        if not self._wait_idle(self.grace_s):
            logger.warning("worker %s: cancelling %d job(s) still running", self.name, self.busy)
            self.active.cancel_all(SHUTDOWN)
            self._wait_idle(CANCEL_WAIT_S)
        self._pool.shutdown(wait=False)

    def _wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._running == 0, timeout)
