"""Taking jobs: which taken jobs may run, read from the hashes the take returned.

A taken job runs only if it is the runner's job (worker.jobguard), still queued, and younger than
the web's queue timeout by Redis's clock (older, its client was answered already: it is recorded
failed, never run). Every other id leaves the intermediate list at once.
"""

from __future__ import annotations

import logging
from datetime import UTC

from redis import Redis
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus

from worker import jobguard, records
from worker.dequeue import Taken

logger = logging.getLogger(__name__)


def restore(worker: records.Recorder, job_id: str, fields: dict[bytes, bytes] | None) -> Job | None:
    """The job from its hash as the take read it, as RQ's Job.fetch_many builds it."""
    if fields is None:
        return None
    job = worker.job_class(job_id, connection=worker.connection, serializer=worker.serializer)
    job.restore(fields)
    return job


def runnable(worker: records.Recorder, taken: Taken, max_age_s: float | None) -> list[Job]:
    """The taken jobs to run; the others leave the intermediate list (refused ones recorded failed)."""
    redis: Redis = worker.connection
    intermediate = IntermediateQueue.get_intermediate_queue_key(taken.queue_key)
    now = taken.time[0] + taken.time[1] / 1e6 if taken.time else None
    jobs: list[Job] = []
    for job_id, fields in zip(taken.job_ids, taken.hashes, strict=True):
        job = restore(worker, job_id, fields)
        if job is not None and job.get_status(refresh=False) == JobStatus.QUEUED:
            age = _age(job, now)
            if max_age_s is None or age <= max_age_s:
                jobs.append(job)
                continue
            logger.warning("job %s: refused, created %.0f s ago (its client was answered already)", job.id, age)
            records.record_failure(worker, job, None, f"refused: created {age:.0f} s ago, longer than the "
                                   f"queue timeout ({max_age_s:g} s); it was not run",
                                   expected=frozenset({JobStatus.QUEUED}))  # fmt: skip
        elif job is not None:
            logger.info("job %s: taken while %s; not run", job_id, job.get_status(refresh=False))
        redis.lrem(intermediate, 1, job_id)
    admitted = jobguard.admit(jobs, redis, worker.note_end)
    for refused in {job.id for job in jobs} - {job.id for job in admitted}:
        redis.lrem(intermediate, 1, refused)
    return admitted


def _age(job: Job, now: float | None) -> float:
    """Seconds since the job was created, on Redis's clock (`now`, from the take)."""
    if job.created_at is None or now is None:
        return 0.0
    return now - job.created_at.replace(tzinfo=UTC).timestamp()
