"""One final state per job: the web and the workers record a job's end only through `transition`.

RQ writes a job's status with plain HSETs, so two processes ending the same job (the web giving
up on a silent worker, the worker finishing it after all) would both win, one after the other.
Here each writer WATCHes the job's hash, checks the status it expects, and commits its whole
bookkeeping in one MULTI/EXEC: whoever commits first wins, the other sees the new status and
records nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq.job import JobStatus

FINAL = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED})
MISSING = "missing"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return MISSING
    return value.decode() if isinstance(value, bytes) else value


def transition(
    redis: Redis, job_key: str, expected: Collection[str], write: Callable[[Pipeline], object], *, tries: int = 20
) -> str | None:
    """Run `write` (buffered commands) atomically if the job's status is one of `expected`.

    Returns None once written, or the status that stopped it (MISSING for a job that is gone).
    `write` may be called more than once: a concurrent change to the hash (a heartbeat) retries.
    """
    with redis.pipeline() as pipe:
        for _ in range(tries):
            try:
                pipe.watch(job_key)
                status = _text(pipe.hget(job_key, "status"))
                if status not in expected:
                    pipe.unwatch()
                    return status
                pipe.multi()
                write(pipe)
                pipe.execute()
                return None
            except WatchError:
                continue
    raise WatchError(f"{job_key}: status kept changing while it was being recorded")


def statuses(redis: Redis, job_keys: list[str]) -> list[str]:
    """The current status of each job (MISSING for jobs that are gone), in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for key in job_keys:
            pipe.hget(key, "status")
        return [_text(value) for value in pipe.execute()]
