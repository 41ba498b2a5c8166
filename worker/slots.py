"""An RQ worker that runs up to `slots` jobs at once, in threads of one process (no fork per job).

One worker serves one GPU's engine, which decodes several sequences at once; the worker takes jobs
from Redis only while one of its slots is free, so the rest stay queued for other GPUs. Jobs are RQ
jobs throughout (intermediate queue, registries, executions, heartbeats, results, `rq suspend`).
The parts, one job each: taking (worker.dequeue, worker.intake), start bookkeeping (worker.starts),
end bookkeeping, once whatever the end (worker.records), the command/cancel channel (worker.channel),
slots and draining (worker.draining), registry upkeep off the take loop (worker.maintenance).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.command import parse_payload
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from common import keys
from common.acks import Acks
from worker import jobguard, records
from worker.active import ActiveJobs
from worker.channel import CommandChannel
from worker.clock import RedisClock
from worker.dequeue import Dequeuer
from worker.draining import Slots, drain
from worker.intake import runnable
from worker.jobs import CLIENT_GONE, SHUTDOWN
from worker.maintenance import Maintenance
from worker.retention import PromptRetention
from worker.runs import Runner
from worker.starts import EXECUTION_TTL_S, WORKER_TTL_S, Batch, Starter, refresh_executions

logger = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 60
DEQUEUE_TIMEOUT_S = 1
# The socket timeout of the worker's Redis client: its longest blocking command waits DEQUEUE_TIMEOUT_S.
COMMAND_TIMEOUT_S = DEQUEUE_TIMEOUT_S + 5
MAX_BACKOFF_S = 1.0  # between tries to take jobs while Redis is away: a new master is used within seconds
STOPPED_BY_OPERATOR = "stopped by an operator"


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
            exception_handlers=[records.log_failure],
            job_class=jobguard.RunnerJob,
        )
        self.slots = Slots(slots)
        self.active = active
        self.grace_s = grace_s
        # A job created longer ago than this has been answered already (the web's queue timeout).
        self.max_age_s = max_age_s
        # Called with the jobs the moment they are taken, before any bookkeeping: starts their I/O.
        self.on_taken = on_taken
        self.prompts = prompts
        self.clock = RedisClock()
        # Jobs taken since start: the model schedule tells a stale engine answer by it.
        self.taken_total = 0
        self._dequeuer = Dequeuer(connection, name, acks)
        self._starter = Starter(self, self.clock, active, prompts)
        self._runner = Runner(self, self.slots, active)
        self._registered = False
        self._queues_by_name = {q.name: q for q in self.queues}
        self._ordered_queues: list[Queue] = []
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="slot")
        self.channel = CommandChannel(
            connection, {self.pubsub_channel_name: self.handle_payload, keys.cancel_channel(): self._on_cancel}
        )
        self.maintenance = Maintenance(self, self.clock, prompts)

    @property
    def connection_timeout(self) -> int:
        """RQ raises its client's socket timeout to this (its own, 25 s, would let a silent Redis
        hold a job's start bookkeeping 50 s, with the client's retry): ours stays COMMAND_TIMEOUT_S."""
        return COMMAND_TIMEOUT_S

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return self.slots.running

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (it takes no more jobs)."""
        return self.slots.stop.is_set()

    def set_queue_order(self, queue_names: list[str], *, slots: int | None = None) -> None:
        """Take jobs from exactly these of its queues, in this order (none: take nothing for now).

        `slots` lowers how many jobs run at once (the model schedule sets it per model).
        """
        self._ordered_queues = [self._queues_by_name[n] for n in queue_names if n in self._queues_by_name]
        self.slots.limit(slots)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Executions expire soon after their heartbeats stop, so RQ reclaims a dead worker's jobs."""
        return EXECUTION_TTL_S

    def register(self) -> None:
        """Register with RQ (again only if Redis lost the record)."""
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
        self.clock.measure(self.connection)
        expires = self.clock.now() + EXECUTION_TTL_S
        with self.connection.pipeline() as pipe:
            self.heartbeat(WORKER_TTL_S + 60, pipeline=pipe)
            refresh_executions(pipe, list(self.executions.values()), expires)
            pipe.execute()

    def note_end(self, job: Job, pipe: Pipeline) -> None:
        """Every end this worker writes notes the job for prompt retention (worker.records)."""
        if self.prompts is not None:
            self.prompts.on_end(job, pipe, self.clock.now())

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """First signal: stop taking jobs and drain; a second one cancels running jobs at once."""
        if self.stopping:
            logger.warning("worker %s: second stop signal, cancelling %d running jobs", self.name, self.busy)
            self.active.cancel_all(SHUTDOWN)
            return
        logger.info("worker %s: stop requested (signal %d); finishing running jobs", self.name, signum)
        self._shutdown_requested_date = now()
        self._stop_requested = True
        self.slots.request_stop()

    def request_stop_execution(self, execution_id: str) -> None:
        """RQ's stop-execution command: cancel that job (e.g. `rq` tooling or the dashboard)."""
        execution = self.executions.get(execution_id)
        if execution is not None:
            self._runner.stopped_ids.add(execution.job_id)
            self.active.cancel(execution.job_id, STOPPED_BY_OPERATOR)

    def handle_payload(self, message: dict[str, Any]) -> None:
        """RQ's worker commands; `stop-job` names a job, and this worker runs several at once."""
        payload = parse_payload(message)
        if payload.get("command") == "stop-job":
            job_id = str(payload.get("job_id"))
            # Taken here counts, even while its start is being recorded (RQ already shows it started).
            ours = self.active.holds(job_id) or any(e.job_id == job_id for e in list(self.executions.values()))
            if ours:
                self._runner.stopped_ids.add(job_id)
                self.active.cancel(job_id, STOPPED_BY_OPERATOR)
            else:
                logger.warning("worker %s: not running job %s, stop command ignored", self.name, job_id)
            return
        super().handle_payload(message)  # type: ignore[no-untyped-call]

    def subscribe(self) -> None:
        """Listen for RQ commands to this worker and for the web's job cancels (worker.channel)."""
        self.channel.start()

    def unsubscribe(self) -> None:
        """Stop listening."""
        self.channel.stop()

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
        self.maintenance.start()
        self.set_state(WorkerStatus.STARTED)
        self.set_state(WorkerStatus.IDLE)  # waiting for jobs, as RQ's worker shows it
        logger.info(
            "worker %s: %d slot(s), listening on %s", self.name, self.slots.slots, ", ".join(self.queue_names())
        )
        backoff = 0.5
        try:
            while not self.stopping:
                free = self.slots.wait_for_room(1.0)
                if free <= 0:
                    continue
                try:
                    self._fill(free)
                    backoff = 0.5
                except (RedisError, OSError) as exc:
                    logger.error("worker %s: Redis unavailable (%s); retrying in %.1f s", self.name, exc, backoff)
                    self.slots.stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            drain(self.slots, self.active, self.grace_s, self.name)
            self._pool.shutdown(wait=False)
            self.maintenance.stop()
            try:
                self.teardown()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                logger.warning("worker %s: could not deregister: %s", self.name, exc)

    def _fill(self, free: int) -> None:
        """Start up to `free` queued jobs: one take (which reads the jobs too) and one bookkeeping round trip."""
        queues = self._ordered_queues
        if not queues:
            self.slots.stop.wait(DEQUEUE_TIMEOUT_S)
            return
        taken = self._dequeuer.take([q.key for q in queues], free, DEQUEUE_TIMEOUT_S)
        if taken.time is not None:
            self.clock.observe(*taken.time)
        self._runner.note_suspension(taken.suspended)
        if taken.suspended:
            self.slots.stop.wait(DEQUEUE_TIMEOUT_S)
            return
        if not taken.job_ids:
            return
        jobs = runnable(self, taken, self.max_age_s)
        if not jobs:
            return
        self.taken_total += len(jobs)
        batch = Batch(IntermediateQueue.get_intermediate_queue_key(taken.queue_key), taken.token_key)
        self.slots.take(len(jobs))
        # The jobs run (their engine calls go out now) before RQ's start bookkeeping, off the path to
        # the first token; a job whose start is not recorded is stopped then (worker.starts).
        if self.on_taken is not None:
            try:
                self.on_taken(jobs)
            except Exception:
                logger.exception("jobs %s: could not be started early; each starts in its thread", jobs)
        try:
            self._starter.start(jobs, batch)
        finally:
            for index, job in enumerate(jobs):
                self._pool.submit(self._runner.run, job, batch, index)

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
