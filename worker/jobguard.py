"""Only the runner's job runs here: any other function found on a runner queue is failed, never called.

Whoever can write to Redis can put a job on a runner queue, and RQ would import and call whatever
function that job names (and its success/failure/stopped callbacks, which RQ's registry cleanup
also calls for jobs it finds abandoned), and send the HTTP requests its `webhooks` name (RQ 3:
Job.restore loads them; StartedJobRegistry.cleanup, the worker's success, failure and retry
handlers and Queue.run_sync send them). A worker checks each job it takes before anything of it
runs, and records a foreign one as failed, as RQ records any failure (FailedJobRegistry, a
failure Result with the reason), so rq-dashboard and `rq` show why. Its jobs are RunnerJobs,
which cannot call anything else nor send any webhook on any RQ code path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from redis import Redis
from redis.client import Pipeline
from rq.exceptions import DeserializationError
from rq.job import Job
from rq.job_lifecycle import record_job_failure
from rq.registry import BaseRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from common.jobs import FAILURE_TTL_S
from common.keys import GENERATE_JOB

logger = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseRegistry)


RUNNER_FUNCTIONS = frozenset({GENERATE_JOB})


def refusal(job: Job) -> str | None:
    """Why this job must not run here, or None if it is the runner's generation job."""
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except DeserializationError:
        return "its data is not the runner's JSON job format"
    if func_name not in RUNNER_FUNCTIONS or instance is not None:
        shown = func_name if isinstance(func_name, str) else type(func_name).__name__
        return f"it names {shown[:200]!r}; this worker runs only {', '.join(sorted(RUNNER_FUNCTIONS))}"
    callbacks = [
        name for name in (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name) if name
    ]
    if callbacks:
        return f"it names callbacks ({', '.join(c[:200] for c in callbacks)}); runner jobs have none"
    if job.webhooks:
        return f"it names webhooks ({', '.join(h.url[:200] for h in job.webhooks)}); runner jobs have none"
    if func_name == GENERATE_JOB and (len(args) != 1 or not isinstance(args[0], dict) or kwargs):
        return f"{GENERATE_JOB} takes one payload dict"
    return None


class RefusedJob(Exception):
    """A job that names something other than the runner's job function."""


_REGISTRIES: dict[tuple[type[BaseRegistry], str], BaseRegistry] = {}


def _registry(job: Job, kind: type[R]) -> R:
    """RQ's `kind` registry of the job's queue, made once per queue and connection.

    RQ builds a new registry object at each use, and each resolves its serializer through an
    isinstance check against a typing Protocol (tens of µs); a worker uses them for every job.
    """
    cached = _REGISTRIES.get((kind, job.origin))
    if cached is None or cached.connection is not job.connection:
        cached = kind(job.origin, connection=job.connection, job_class=type(job), serializer=job.serializer)
        _REGISTRIES[(kind, job.origin)] = cached
    return cached  # type: ignore[return-value]


class RunnerJob(Job):
    """RQ's Job, except that it calls only the runner's job function and never any callback or webhook."""

    @property
    def started_job_registry(self) -> StartedJobRegistry:
        """RQ's StartedJobRegistry of the job's queue (one object per queue)."""
        return _registry(self, StartedJobRegistry)

    @property
    def finished_job_registry(self) -> FinishedJobRegistry:
        """RQ's FinishedJobRegistry of the job's queue (one object per queue)."""
        return _registry(self, FinishedJobRegistry)

    @property
    def failed_job_registry(self) -> FailedJobRegistry:
        """RQ's FailedJobRegistry of the job's queue (one object per queue)."""
        return _registry(self, FailedJobRegistry)

    @property
    def func(self) -> Any:
        """The runner's job function; RefusedJob for anything else (nothing else is imported)."""
        why = refusal(self)
        if why is not None:
            raise RefusedJob(why)
        return super().func

    @property
    def success_callback(self) -> None:
        """Runner jobs have no callbacks (RQ would import and call the named function)."""
        return None

    @property
    def failure_callback(self) -> None:
        """Runner jobs have no callbacks (RQ's cleanup calls it for abandoned jobs)."""
        return None

    @property
    def stopped_callback(self) -> None:
        """Runner jobs have no callbacks."""
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        """Runner jobs send no webhooks (RQ would make this GPU host send HTTP wherever a Redis writer says)."""
        if self.webhooks:
            logger.warning("job %s: its webhooks (%d) are not sent: runner jobs have none", self.id, len(self.webhooks))


def admit(jobs: list[Job], connection: Redis, on_end: Callable[[Job, Pipeline], None] | None = None) -> list[Job]:
    """The jobs that may run; each other one is logged and recorded as failed without running
    (`on_end` adds to that record's write: prompt retention)."""
    admitted = []
    for job in jobs:
        why = refusal(job)
        if why is None:
            admitted.append(job)
            continue
        logger.error("job %s on %s refused, not run: %s", job.id, job.origin, why)
        job.failure_ttl = FAILURE_TTL_S  # the job's own value is whatever its author wrote
        try:
            with connection.pipeline() as pipe:
                record_job_failure(job, f"refused by the runner's worker, not run: {why}", pipe)
                if on_end is not None:
                    on_end(job, pipe)
                pipe.execute()
        except Exception as exc:  # the job is off its queue and not run either way
            logger.warning("job %s: could not record its refusal: %s", job.id, exc)
    return admitted
