"""An RQ worker that runs up to `slots` jobs at once, in threads of one process (no fork per job).

One worker serves one GPU's Ollama, which decodes OLLAMA_NUM_PARALLEL sequences at once; the
worker takes a job from Redis only while one of those slots is free, so the rest stay queued
for other GPUs. Jobs are RQ jobs throughout (registries, executions, heartbeats, results), and a
job cancelled by its client is recorded as canceled, not failed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType, TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from common import keys
from common.errors import JobCancelled, RunnerError
from common.jobs import RESULT_TTL_S
from worker.active import ActiveJobs
from worker.jobs import SHUTDOWN

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


class SlotWorker(BaseWorker):
    """RQ worker with `slots` job threads; stops gracefully on SIGTERM/SIGINT."""

    def __init__(
        self,
        queues: list[str],
        *,
        connection: Redis,
        name: str,
        slots: int,
        active: ActiveJobs,
        grace_s: float,
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
        )
        self.slots = slots
        self.active = active
        self.grace_s = grace_s
        self._free = threading.Semaphore(slots)
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="slot")
        self._stop = threading.Event()
        self._running = 0
        self._running_lock = threading.Lock()
        self._idle = threading.Condition(self._running_lock)

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return self._running

    def set_queue_order(self, queue_names: list[str]) -> None:
        """Take jobs from exactly these of its queues, in this order (none: take nothing for now)."""
        by_name = {q.name: q for q in self.queues}
        self._ordered_queues = [by_name[n] for n in queue_names if n in by_name]

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Executions expire soon after their heartbeats stop, so RQ reclaims a dead worker's jobs."""
        return EXECUTION_TTL_S

    def beat(self) -> None:
        """Refresh RQ's records of this worker and of each running execution (heartbeat thread)."""
        if not self.connection.exists(self.key):
            # Redis lost its data (restarted without persistence): announce this worker again.
            self.register_birth()  # type: ignore[no-untyped-call]
        self.heartbeat()
        for execution in list(self.executions.values()):
            job = execution.job
            if job.started_at is not None:
                self.maintain_heartbeats(job, execution)

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

    def stop(self) -> None:
        """Ask the work loop to stop (from another thread)."""
        self._stop.set()

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
        """Register with RQ, take jobs while slots are free, then drain and deregister."""
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        self.register_birth()  # type: ignore[no-untyped-call]
        self.subscribe()
        self.set_state(WorkerStatus.STARTED)
        logger.info("worker %s: %d slot(s), listening on %s", self.name, self.slots, ", ".join(self.queue_names()))
        backoff = 0.5
        try:
            while not self._stop.is_set():
                if not self._free.acquire(timeout=0.5):
                    continue
                taken = False
                try:
                    taken = self._take_one()
                    backoff = 0.5
                except (RedisError, OSError) as exc:
                    logger.error("worker %s: Redis unavailable (%s); retrying in %.1f s", self.name, exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                finally:
                    if not taken:
                        self._free.release()
        finally:
            self._drain()
            try:
                self.teardown()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                logger.warning("worker %s: could not deregister: %s", self.name, exc)

    def _take_one(self) -> bool:
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
            self._prune_canceled()
        if not self._ordered_queues:
            self._stop.wait(DEQUEUE_TIMEOUT_S)
            return False
        try:
            result = self.queue_class.dequeue_any(
                self._ordered_queues,
                DEQUEUE_TIMEOUT_S,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
            )
        except DequeueTimeout:
            return False
        if result is None:
            return False
        job, queue = result
        execution = self.prepare_execution(job)
        with self._running_lock:
            self._running += 1
        self._pool.submit(self._run, job, queue, execution)
        return True

    def _run(self, job: Job, queue: Queue, execution: Execution) -> None:
        try:
            self.perform_job(job, queue, execution)
        except Exception:
            logger.exception("job %s: bookkeeping failed", job.id)
        finally:
            with self._running_lock:
                self._running -= 1
                idle = self._running == 0
                if idle:
                    self._idle.notify_all()
            self._free.release()
            if idle:
                with contextlib.suppress(RedisError, OSError):
                    self.set_state(WorkerStatus.IDLE)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Run one job in this thread: RQ's success/failure bookkeeping, plus cancellation."""
        try:
            self.prepare_job_execution(job)
            job.started_at = now()
            return_value = job.perform()
        except JobCancelled as exc:
            self._record_cancelled(job, execution, exc.msg)
            return False
        except Exception:
            self._finalize_failure(job, queue, execution, sys.exc_info())
            return False
        self._finalize_success(job, queue, execution, return_value)
        return True

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
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)
