"""How long a job's prompt stays in Redis: PROMPT_RETENTION_S after the job ends, or not past its start.

RQ keeps a job's arguments (the prompt) in the job's hash for as long as it keeps the job's record
(minutes when finished, a day when failed), and rq-dashboard shows them. The record itself stays
(status, result, error); only the message texts are blanked, in place, so rq-dashboard still shows
the job, its model, roles and limits. Each started job is noted in one sorted set; every worker's
sweep blanks the jobs that ended at least PROMPT_RETENTION_S ago, however they ended (by a worker,
by the web giving up on a lost worker, by RQ's cleanup).
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from common import keys

logger = logging.getLogger(__name__)

ENDED = {JobStatus.FINISHED.value, JobStatus.FAILED.value, JobStatus.CANCELED.value, JobStatus.STOPPED.value}
SWEEP_BATCH = 500
# Rewrite the job's data only while its hash exists: HSET on an expired job would recreate it,
# without a TTL. HSET keeps the TTL of an existing hash.
_SET_IF_EXISTS = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], 'data', ARGV[1]) end"


def blank_prompt(data: bytes) -> bytes:
    """A job's `data` (JSON of func, instance, args, kwargs), message texts emptied, compressed as RQ stores it."""
    func_name, instance, args, kwargs = JSONSerializer.loads(data)
    payload = dict(args[0])
    payload["messages"] = [{"role": m.get("role", ""), "content": ""} for m in payload.get("messages", [])]
    return zlib.compress(JSONSerializer.dumps((func_name, instance, [payload, *args[1:]], kwargs)))


def _stored(data: bytes) -> bytes:
    """A job hash's `data` field decompressed, as RQ's Job.restore reads it."""
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


class PromptRetention:
    """Blanks prompts at job start (DROP_PROMPTS_AT_START) or PROMPT_RETENTION_S after the job ends."""

    def __init__(self, redis: Redis, retention_s: float, drop_at_start: bool) -> None:
        self.retention_s = retention_s
        self.drop_at_start = drop_at_start
        self._set_if_exists = redis.register_script(_SET_IF_EXISTS)

    def on_start(self, jobs: list[Job], pipe: Pipeline) -> None:
        """In the jobs' start bookkeeping, which runs only for jobs that exist (still queued): blank
        their prompts now, or note them for the sweep."""
        if self.drop_at_start:
            for job in jobs:
                pipe.hset(job.key, "data", blank_prompt(job.data))
        else:
            pipe.zadd(keys.prompt_retention(), {job.id: time.time() for job in jobs})

    def sweep(self, redis: Redis, now: float | None = None) -> int:
        """Blank the prompts of jobs that ended PROMPT_RETENTION_S ago or more; returns how many."""
        now = time.time() if now is None else now
        key = keys.prompt_retention()
        due: list[bytes] = redis.zrangebyscore(key, "-inf", now - self.retention_s, 0, SWEEP_BATCH)  # type: ignore[assignment]
        ids = [job_id.decode() for job_id in due]
        if not ids:
            return 0
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(Job.key_for(job_id), "status", "ended_at", "data")
            records: list[list[Any]] = pipe.execute()
        done, blanked = [], 0
        with redis.pipeline(transaction=False) as pipe:
            for job_id, (status, ended_at, data) in zip(ids, records, strict=True):
                if data is None:
                    done.append(job_id)  # the record itself is gone
                    continue
                if status is None or status.decode() not in ENDED:
                    continue  # still queued or running: looked at again next sweep
                if ended_at and utcparse(ended_at.decode()).timestamp() > now - self.retention_s:
                    continue
                try:
                    self._set_if_exists(keys=[Job.key_for(job_id)], args=[blank_prompt(_stored(data))], client=pipe)
                    blanked += 1
                except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                    logger.warning("job %s: its prompt could not be blanked: %s", job_id, exc)
                done.append(job_id)
            if done:
                pipe.zrem(key, *done)
            pipe.execute()
        return blanked
