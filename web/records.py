"""What the web writes in RQ's records about a job it ends itself, and the cancels it broadcasts.

Each end record is one guarded transition (common.job_state): written only while the job has the
status the web expects, so a worker that ended the job first wins, and a rerun of the same write
(redis-py retries a command whose answer was lost) finds its own result and changes nothing.
Each also notes the job in the prompt-retention set (scored by its end, on Redis's clock), so
the workers' sweep blanks its prompt PROMPT_RETENTION_S later, as for the jobs workers end.
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from common import keys
from common.job_state import transition
from common.settings import Settings

logger = logging.getLogger(__name__)


def broadcast_cancel(redis: Redis, job_id: str) -> None:
    """Ask every worker to drop the job (each reads the cancel channel); raises RedisError."""
    redis.publish(keys.cancel_channel(), job_id)


def cancel(redis: Redis, settings: Settings, queue_key: str, job_id: str, *, taken: bool, why: str) -> None:
    """Take the job off its queue if no worker has taken it yet; else tell the workers to drop it.

    Only a job a worker may hold is broadcast on the cancel channel. Never raises: what could not
    be written is logged (a worker that took it meanwhile sees it canceled when it starts it).
    """
    try:
        if taken or not unqueue(redis, settings, queue_key, job_id):
            broadcast_cancel(redis, job_id)
        logger.info("job %s: cancelled (%s)", job_id, why)
    except (RedisError, OSError, NoSuchJobError) as exc:
        logger.warning("job %s: cancel (%s) incomplete: %s", job_id, why, exc)


def unqueue(redis: Redis, settings: Settings, queue_key: str, job_id: str) -> bool:
    """Take the job off its queue and record it canceled, atomically, if it is still queued;
    False when a worker has taken it (or it is gone)."""
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    score = _ended_score(redis, settings)

    def write(pipe: Pipeline) -> None:
        pipe.lrem(queue_key, 1, job_id)
        job.cancel(pipeline=pipe)  # RQ's own record: canceled, in the CanceledJobRegistry
        pipe.zadd(keys.prompt_retention(), {job_id: score})

    # Only while still queued, atomically: a worker that took the id meanwhile (it sits in RQ's
    # intermediate queue) sees the job canceled when it records the start, and stops it. Found
    # canceled: this very write ran already (only this request cancels its job).
    return transition(redis, job.key, {JobStatus.QUEUED}, write) in (None, JobStatus.CANCELED)


def fail_abandoned(redis: Redis, settings: Settings, queue_key: str, job_id: str, msg: str) -> None:
    """Stop and record failed a job whose worker vanished, as RQ's own cleanup would, but now.

    Never raises: what could not be written is logged.
    """
    try:
        broadcast_cancel(redis, job_id)
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        registry = StartedJobRegistry(job.origin, connection=redis)
        entries = [
            f"{entry_id}:{execution_id}"
            for entry_id, execution_id in registry.get_job_and_execution_ids(cleanup=False)
            if entry_id == job_id
        ]
        score = _ended_score(redis, settings)

        def write(pipe: Pipeline) -> None:
            record_job_failure(job, msg, pipe)
            if entries:
                pipe.zrem(registry.key, *entries)
            pipe.lrem(queue_key, 1, job_id)  # a job still queued leaves its queue with its end
            pipe.zadd(keys.prompt_retention(), {job_id: score})

        # Only while not ended: a worker that recorded its end first (it was not lost) wins. It
        # may still read queued: the worker sends to its engine before it records the start.
        ended = transition(redis, job.key, {JobStatus.STARTED, JobStatus.QUEUED}, write)
        if ended is not None:
            logger.info("job %s: already %s; not recorded failed", job_id, ended)
    except (RedisError, OSError, NoSuchJobError) as exc:
        logger.warning("job %s: could not mark it failed: %s", job_id, exc)


def _ended_score(redis: Redis, settings: Settings) -> float:
    """The job's score in the prompt-retention set: its end on Redis's clock (the clock the sweep
    compares with), moved back by the retention when prompts go at start (it never started)."""
    seconds, micros = redis.time()
    now = seconds + micros / 1_000_000
    return now - settings.prompt_retention_s if settings.drop_prompts_at_start else now
