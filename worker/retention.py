"""How long a job's prompt stays in Redis: PROMPT_RETENTION_S after the job ends, or not past its start.

RQ keeps a job's arguments (the prompt) in the job's hash for as long as it keeps the job's record
(minutes when finished, a day when failed), and rq-dashboard shows them. The record itself stays
(status, result, error); only the message texts are blanked, in place, so rq-dashboard still shows
the job, its model, roles and limits. Jobs are noted in one sorted set scored by when their prompt
may go: at start (scored by the start, looked at again until it ends) and at every end this worker
writes, started or not (scored by the end, on Redis's clock). One sweeper in the whole fleet (a
lock in Redis) blanks what is due, oldest end first, reading each job's status before its data.
"""

from __future__ import annotations

import logging
import uuid
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
# The sweeper's lock outlives a sweep by far; released as soon as the sweep is done.
SWEEP_LOCK_S = 60
# Rewrite the job's data only while its hash exists: HSET on an expired job would recreate it,
# without a TTL. HSET keeps the TTL of an existing hash.
_SET_IF_EXISTS = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], 'data', ARGV[1]) end"
# Release a lock only if it is still ours (it may have expired and been taken by another worker).
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


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
        self._release = redis.register_script(_RELEASE)

    def on_start(self, jobs: list[Job], pipe: Pipeline, now: float) -> None:
        """In the jobs' start bookkeeping, which runs only for jobs that exist (still queued): blank
        their prompts now, or note them for the sweep."""
        if self.drop_at_start:
            for job in jobs:
                pipe.hset(job.key, "data", blank_prompt(job.data))
        else:
            pipe.zadd(keys.prompt_retention(), {job.id: now for job in jobs})

    def on_end(self, job: Job, pipe: Pipeline, now: float) -> None:
        """In a job's end bookkeeping (however it ended, started or not): due PROMPT_RETENTION_S
        after `now`, or at the next sweep with DROP_PROMPTS_AT_START."""
        pipe.zadd(keys.prompt_retention(), {job.id: now - self.retention_s if self.drop_at_start else now})

    def sweep_exclusively(self, redis: Redis, now: float) -> int | None:
        """Sweep if no other worker is sweeping (returns how many were blanked, None if another is)."""
        token = uuid.uuid4().hex
        if not redis.set(keys.prompt_sweep_lock(), token, nx=True, ex=SWEEP_LOCK_S):
            return None
        try:
            return self.sweep(redis, now)
        finally:
            self._release(keys=[keys.prompt_sweep_lock()], args=[token])

    def sweep(self, redis: Redis, now: float) -> int:
        """Blank the prompts of jobs that ended PROMPT_RETENTION_S ago or more; returns how many."""
        key, cutoff = keys.prompt_retention(), now - self.retention_s
        due: list[bytes] = redis.zrangebyscore(key, "-inf", cutoff, 0, SWEEP_BATCH)  # type: ignore[assignment]
        ids = [job_id.decode() for job_id in due]
        if not ids:
            return 0
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(Job.key_for(job_id), "status", "ended_at")
            states: list[list[Any]] = pipe.execute()
        gone, later, blank = [], {}, []
        for job_id, (status, ended_at) in zip(ids, states, strict=True):
            if status is None:
                gone.append(job_id)  # the record itself is gone
            elif status.decode() not in ENDED:
                later[job_id] = now  # still queued or running: looked at again after its end
            elif ended_at and (end := utcparse(ended_at.decode()).timestamp()) > cutoff:
                later[job_id] = end  # ended later than its entry said (recorded by another process)
            else:
                blank.append(job_id)
        return self._blank(redis, key, blank, gone, later)

    def _blank(self, redis: Redis, key: str, blank: list[str], gone: list[str], later: dict[str, float]) -> int:
        """Blank the due jobs' prompts, forget the gone ones, re-score the others."""
        with redis.pipeline(transaction=False) as pipe:
            for job_id in blank:
                pipe.hget(Job.key_for(job_id), "data")
            datas: list[bytes | None] = pipe.execute() if blank else []
        blanked = 0
        with redis.pipeline(transaction=False) as pipe:
            for job_id, data in zip(blank, datas, strict=True):
                if data is not None:
                    try:
                        self._set_if_exists(keys=[Job.key_for(job_id)], args=[blank_prompt(_stored(data))],
                                            client=pipe)  # fmt: skip
                        blanked += 1
                    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                        logger.warning("job %s: its prompt could not be blanked: %s", job_id, exc)
            if blank or gone:
                pipe.zrem(key, *blank, *gone)
            if later:
                pipe.zadd(key, later)
            pipe.execute()
        return blanked
