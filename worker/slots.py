"""An RQ worker that runs up to `slots` jobs at once, in threads of one process (no fork per job).

One worker serves one GPU's Ollama, which decodes OLLAMA_NUM_PARALLEL sequences at once; the
worker takes jobs from Redis only while one of those slots is free, so the rest stay queued for
other GPUs. Jobs are RQ jobs throughout (intermediate queue, registries, executions, heartbeats, results,
`rq suspend`), each recorded once whatever its end (worker.records); a job cancelled by its
client is recorded as canceled, one stopped by an operator as stopped, as RQ records them.

Bookkeeping is batched, because job start is on every request's path: free slots are filled
with as many queued jobs as are waiting, taken and read in one script and marked started in one
more (common.job_state); a finished job is recorded in one.
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
from functools import partial
from types import FrameType, TracebackType
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.command import parse_payload
from rq.executions import Execution, ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.job_lifecycle import format_exc_info
from rq.queue import Queue
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat
from rq.worker import BaseWorker, WorkerStatus

from common import keys
from common.acks import Acks
from common.errors import JobCancelled, RunnerError
from common.job_state import Command, Guarded, commands, run_guarded
from common.jobs import RESULT_TTL_S
from common.outage import through_outage
from worker import jobguard, records
from worker.active import ActiveJobs
from worker.dequeue import Dequeuer
from worker.jobs import CLIENT_GONE, SHUTDOWN
from worker.retention import PromptRetention

logger = logging.getLogger(__name__)

# RQ bookkeeping lifetimes: short, so a vanished worker's jobs are reclaimed fast by RQ's cleanup.
WORKER_TTL_S = 30
EXECUTION_TTL_S = 30
MAINTENANCE_INTERVAL_S = 60
DEQUEUE_TIMEOUT_S = 1
# Longest pause between two tries to take jobs while Redis is unreachable: after a failover the
# new master must be in use within seconds.
MAX_BACKOFF_S = 1.0
# After the grace period, cancelled jobs get this long to wind down before the worker exits.
CANCEL_WAIT_S = 5.0
STOPPED_BY_OPERATOR = "stopped by an operator"
# What RQ's worker records for a job stopped with `send_stop_job_command` (rq/worker/worker_classes.py).
STOPPED_FAILURE = "Job stopped by user, work-horse terminated."
_HEARTBEAT_IF_PRESENT = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[1]) end"
)


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
        self.executions: list[Execution | None] | None = None

    def execution(self, index: int) -> Execution | None:
        """The execution of the batch's `index`-th job (waits for the bookkeeping); None if it
        was not started here (another process had ended it first)."""
        self.ready.wait()
        if self.executions is None:
            raise RuntimeError("the jobs' start could not be recorded in Redis")
        return self.executions[index]


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
        max_age_s: float | None = None,
        on_taken: Callable[[list[Job]], None] | None = None,
        prompts: PromptRetention | None = None,
        acks: Acks | None = None,
    ) -> None:
        super().__init__(
            queues,
            name=name,
            connection=connection,
            serializer=JSONSerializer,
            worker_ttl=WORKER_TTL_S,
            maintenance_interval=MAINTENANCE_INTERVAL_S,
            exception_handlers=[_log_failure],
            job_class=jobguard.RunnerJob,
        )
        self.slots = slots
        # Jobs run at once now: the slots, or fewer for a model Ollama runs one request at a time.
        self.max_running = slots
        self.active = active
        self.grace_s = grace_s
        # A job created longer ago than this has been answered already (the web's queue timeout).
        self.max_age_s = max_age_s
        self._dequeuer = Dequeuer(connection, acks)
        self._registered = False
        self._registration = threading.Lock()
        self._suspended = False
        self._state_lock = threading.Lock()
        self._stopped_ids: set[str] = set()
        # Called with the jobs the moment they are taken, before any bookkeeping: starts their I/O.
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

    def register(self) -> None:
        """Register with RQ (once; again only if Redis lost the record): never races the heartbeat."""
        with self._registration:
            if self._registered and self.connection.exists(self.key):
                return
            if self.connection.exists(self.key) and not self.connection.hexists(self.key, "death"):
                # Our own record from a previous life under the same name (same host and pid after
                # a restart): this process is its only owner, so it is stale.
                logger.warning("worker %s: replacing a stale registration under this name", self.name)
                self.connection.hset(self.key, "death", now().isoformat())
            self.register_birth()  # type: ignore[no-untyped-call]
            self._registered = True

    def beat(self) -> None:
        """Refresh RQ's records of this worker and of each running execution, in one pipeline."""
        if not self._registered:
            return  # work_until_stopped registers; a heartbeat before it must not
        if not self.connection.exists(self.key):
            # Redis lost its data (restarted without persistence): announce this worker again.
            self.register()
        with self.connection.pipeline() as pipe:
            self.heartbeat(WORKER_TTL_S + 60, pipeline=pipe)
            for execution in list(self.executions.values()):
                job = execution.job
                # Not Execution.heartbeat: its HSET would bring back the record of an execution
                # that a job thread ended while this beat was on its way. EXPIRE and XX never do.
                pipe.expire(execution.key, EXECUTION_TTL_S)
                job.started_job_registry.add_execution(execution, pipeline=pipe, ttl=EXECUTION_TTL_S, xx=True)
                ExecutionRegistry(job_id=job.id, connection=pipe).add(
                    execution=execution, ttl=EXECUTION_TTL_S, pipeline=pipe, xx=True
                )
                # Job.heartbeat's HSET, only on a job that still exists: one whose record was lost
                # (a failover before the replica had it) must not come back as a stub that never expires.
                pipe.eval(_HEARTBEAT_IF_PRESENT, 1, job.key, utcformat(now()))
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
            self._stopped_ids.add(execution.job_id)
            self.active.cancel(execution.job_id, STOPPED_BY_OPERATOR)

    def handle_payload(self, message: dict[str, Any]) -> None:
        """RQ's worker commands; `stop-job` names a job, and this worker runs several at once."""
        payload = parse_payload(message)
        if payload.get("command") == "stop-job":
            job_id = payload.get("job_id")
            if job_id is not None and any(e.job_id == job_id for e in list(self.executions.values())):
                self._stopped_ids.add(job_id)
                self.active.cancel(job_id, STOPPED_BY_OPERATOR)
            else:
                logger.warning("worker %s: not running job %s, stop command ignored", self.name, job_id)
            return
        super().handle_payload(message)  # type: ignore[no-untyped-call]

    def subscribe(self) -> None:
        """Listen for RQ commands to this worker and for the web's job cancels, on one connection."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload, keys.cancel_channel(): self._on_cancel})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=1.0, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def _on_cancel(self, message: dict[str, Any]) -> None:
        job_id = message["data"].decode()
        if self.active.cancel(job_id, CLIENT_GONE):
            logger.info("job %s: cancel requested by the web", job_id)

    def work_until_stopped(self) -> None:
        """Register with RQ, fill free slots with queued jobs until stopped, then drain and deregister."""
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        self.register()
        self.subscribe()
        self.set_state(WorkerStatus.STARTED)
        self.set_state(WorkerStatus.IDLE)  # waiting for jobs, as RQ's worker shows it
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
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            self._drain()
            try:
                self.teardown()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                logger.warning("worker %s: could not deregister: %s", self.name, exc)

    def _fill(self, free: int) -> None:
        """Start up to `free` queued jobs: one take (which reads the jobs too) and one bookkeeping round trip."""
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
            self._prune_canceled()
        queues = self._ordered_queues
        if not queues:
            self._stop.wait(DEQUEUE_TIMEOUT_S)
            return
        taken = self._dequeuer.take([q.key for q in queues], free, DEQUEUE_TIMEOUT_S)
        self._note_suspension(taken.suspended)
        if taken.suspended:
            self._stop.wait(DEQUEUE_TIMEOUT_S)
            return
        if not taken.job_ids:
            return
        fetched = [self._restore(job_id, fields) for job_id, fields in zip(taken.job_ids, taken.hashes, strict=True)]
        runnable = self._runnable(taken.queue_key, taken.job_ids, fetched)
        jobs = jobguard.admit(runnable, self.connection)
        for refused in {job.id for job in runnable} - {job.id for job in jobs}:
            self.connection.lrem(IntermediateQueue.get_intermediate_queue_key(taken.queue_key), 1, refused)
        if not jobs:
            return
        batch = _Batch()
        with self._changed:
            self._running += len(jobs)
        # The jobs run (their engine calls go out now) before RQ's start bookkeeping is written:
        # it is off the path to the first token. A job whose start cannot be recorded (the web
        # cancelled it meanwhile) is stopped then.
        if self.on_taken is not None:
            try:
                self.on_taken(jobs)
            except Exception:
                logger.exception("jobs %s: could not be started early; each starts in its thread", jobs)
        intermediate = IntermediateQueue.get_intermediate_queue_key(taken.queue_key)
        try:
            # The jobs run already: their start is recorded once Redis answers (a failover).
            batch.executions = through_outage(lambda: self._mark_started(jobs, intermediate), "start bookkeeping")
        finally:
            batch.ready.set()
            for index, job in enumerate(jobs):
                self._pool.submit(self._run, job, batch, index)

    def _restore(self, job_id: str, fields: dict[bytes, bytes] | None) -> Job | None:
        """The job from its hash as the take read it, as RQ's Job.fetch_many builds it."""
        if fields is None:
            return None
        job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
        job.restore(fields)
        return job

    def _note_suspension(self, suspended: bool) -> None:
        """Follow `rq suspend` / `rq resume` as RQ's worker does (state SUSPENDED while suspended)."""
        if suspended == self._suspended:
            return
        if suspended:
            logger.info("worker %s: suspended, run `rq resume` to resume", self.name)
        else:
            logger.info("worker %s: resumed", self.name)
        with self._state_lock:  # a job thread going idle writes the state too
            self._suspended = suspended
            self.set_state(WorkerStatus.SUSPENDED if suspended else WorkerStatus.IDLE)

    def _runnable(self, queue_key: str, job_ids: tuple[str, ...], fetched: list[Job | None]) -> list[Job]:
        """The taken jobs to run; the others leave the intermediate queue (a stale one recorded failed)."""
        intermediate = IntermediateQueue.get_intermediate_queue_key(queue_key)
        jobs: list[Job] = []
        for job_id, job in zip(job_ids, fetched, strict=True):
            if job is not None and job.get_status(refresh=False) == JobStatus.QUEUED:
                age = (now() - job.created_at).total_seconds() if job.created_at else 0.0
                if self.max_age_s is None or age <= self.max_age_s:
                    jobs.append(job)
                    continue
                logger.warning("job %s: refused, created %.0f s ago (its client was answered already)", job.id, age)
                records.record_failure(self, job, None, f"refused: created {age:.0f} s ago, longer than the "
                                       f"queue timeout ({self.max_age_s:g} s); it was not run",
                                       expected=frozenset({JobStatus.QUEUED}))  # fmt: skip
            elif job is not None:
                logger.info("job %s: taken while %s; not run", job_id, job.get_status(refresh=False))
            self.connection.lrem(intermediate, 1, job_id)
        return jobs

    def _mark_started(self, jobs: list[Job], intermediate: str) -> list[Execution | None]:
        """RQ's start bookkeeping for several jobs (executions, status, registries) in one round trip.

        Only jobs still queued start: one the web cancelled meanwhile stays canceled, and its
        generation (already on its way) is stopped.
        """
        planned = [self._start_commands(job) for job in jobs]
        guarded = [Guarded(job.key, {JobStatus.QUEUED}, start) for job, (_, start) in zip(jobs, planned, strict=True)]
        # Off the intermediate queue whatever the status (RQ removes it in the same transaction).
        first = [("LREM", intermediate, 1, job.id) for job in jobs]
        last = commands(self.connection, self._busy_and_alive)
        found = run_guarded(self.connection, guarded, first=first, last=last)
        executions: list[Execution | None] = []
        for job, (execution, _), status in zip(jobs, planned, found, strict=True):
            if status is None:
                self.executions[execution.id] = execution
                executions.append(execution)
            else:
                self.active.cancel(job.id, "ended elsewhere before it started")
                executions.append(None)
        return executions

    def _start_commands(self, job: Job) -> tuple[Execution, list[Command]]:
        """RQ's start bookkeeping for one job (its execution, status, registries), as commands."""
        made: list[Execution] = []

        def start(pipe: Pipeline) -> None:
            made.append(Execution.create(job, EXECUTION_TTL_S, pipeline=pipe, worker_name=self.name))
            job.prepare_for_execution(self.name, pipeline=pipe)
            pipe.persist(job.key)
            if self.prompts is not None:
                self.prompts.on_start([job], pipe)

        recorded = commands(self.connection, start)
        return made[0], recorded

    def _busy_and_alive(self, pipe: Pipeline) -> None:
        self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        self.heartbeat(WORKER_TTL_S + 60, pipeline=pipe)

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
                with contextlib.suppress(RedisError, OSError), self._state_lock:
                    self.set_state(WorkerStatus.SUSPENDED if self._suspended else WorkerStatus.IDLE)

    def _perform(self, job: Job, batch: _Batch, index: int) -> None:
        """Run one job in this thread, then record its success, failure or cancellation."""
        # Each end is recorded once Redis answers: a job that ends during a failover is recorded
        # on the new master (the record is guarded on its state, so a repeat changes nothing).
        what = f"job {job.id}: end bookkeeping"
        try:
            return_value = job.perform()
        except JobCancelled as exc:
            execution = batch.execution(index)
            if execution is not None:
                through_outage(partial(self._record_cancelled, job, execution, exc.msg), what)
        except Exception:
            exc_info = sys.exc_info()
            execution = batch.execution(index)
            if execution is not None:
                _log_failure(job, *exc_info)
                through_outage(partial(records.record_failure, self, job, execution, format_exc_info(exc_info)), what)
        else:
            execution = batch.execution(index)
            if execution is not None:
                through_outage(partial(records.record_success, self, job, execution, return_value), what)
        finally:
            self._stopped_ids.discard(job.id)

    def _record_cancelled(self, job: Job, execution: Execution, why: str) -> None:
        """A cancelled job: canceled if its client left, stopped if an operator stopped it, failed on shutdown."""
        logger.info("job %s: cancelled (%s)", job.id, why)
        if job.id in self._stopped_ids:
            records.record_failure(self, job, execution, STOPPED_FAILURE, stopped=True)
        elif why == SHUTDOWN:
            records.record_failure(self, job, execution, f"JobCancelled: {why}")
        else:
            records.record_canceled(self, job, execution)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        """RQ's maintenance calls this for a job stuck in an intermediate queue: record it failed once."""
        records.record_failure(
            self, job, execution, exc_string, expected=frozenset({JobStatus.QUEUED, JobStatus.STARTED})
        )

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
