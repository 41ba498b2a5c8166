"""Taking job ids off RQ queues as RQ does: into the queue's intermediate list, never just popped.

RQ's worker moves a job id from `rq:queue:<name>` to `rq:queue:<name>:intermediate` (LMOVE) and
removes it from there only in the same transaction that puts the job in the StartedJobRegistry
(rq/worker/base.py, prepare_job_execution). A worker killed in between leaves the id in the
intermediate list, where RQ's maintenance finds it and records the job failed
(rq/intermediate_queue.py, IntermediateQueue.cleanup). Here several ids are moved at once, from
the first non-empty queue in listening order, and the suspension flag of `rq suspend` is read
in the same script, so neither costs a round trip on a job's way to the engine.

Safe to run twice: the Redis client retries a command whose reply was lost, and a take that ran
but whose answer never arrived would strand its ids in the intermediate list. Each take carries
a fresh token; the script records what it moved under it, and a second run with the same token
answers the same ids instead of moving more. Waiting for work never moves anything: BLMOVE from
a queue's tail to its own tail leaves the list as it was and only wakes the worker.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis import Redis
from rq.job import Job
from rq.suspension import WORKERS_SUSPENDED

from common import keys
from common.acks import Acks

# How long a take's record outlives it (a retry comes within a second; the start deletes it).
TOKEN_TTL_S = 60

# KEYS: the suspension flag, the take's token key, then each queue key in order. ARGV: how many
# ids to take at most, and the prefix of job hashes' keys (RQ's `rq:job:`).
# Returns {TIME seconds, TIME microseconds} when nothing waits, {..., 0} when suspended, else
# {..., queue key, id, fields, id, fields, ...} with each job's hash as HGETALL gives it (empty for
# a job that is gone): the worker reads its jobs in the same round trip as it takes them.
_TAKE = """
local t = redis.call('TIME')
local count = tonumber(ARGV[1])
local function answer(queue, ids)
  local reply = {t[1], t[2], queue}
  for _, id in ipairs(ids) do
    reply[#reply + 1] = id
    reply[#reply + 1] = redis.call('HGETALL', ARGV[2] .. id)
  end
  return reply
end
local done = redis.call('LRANGE', KEYS[2], 0, -1)
if #done > 0 then
  local queue = table.remove(done, 1)
  return answer(queue, done)
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {t[1], t[2], 0} end
for i = 3, #KEYS do
  local ids = {}
  local target = KEYS[i] .. ':intermediate'
  while #ids < count do
    local id = redis.call('LMOVE', KEYS[i], target, 'LEFT', 'RIGHT')
    if not id then break end
    ids[#ids + 1] = id
  end
  if #ids > 0 then
    redis.call('RPUSH', KEYS[2], KEYS[i], unpack(ids))
    redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
    return answer(KEYS[i], ids)
  end
end
return {t[1], t[2]}
"""

# With several queues there is no blocking wait over all of them: block on the first (the warm
# one) for a short while, and look at every queue again between waits.
MULTI_QUEUE_WAIT_S = 0.05


@dataclass(frozen=True)
class Taken:
    """What one attempt to take jobs found: the queue, the ids moved and each job's hash as it
    was then (None for a job that is gone), whether workers are suspended, Redis TIME then, and
    the key recording the take (the start bookkeeping deletes it)."""

    queue_key: str = ""
    job_ids: tuple[str, ...] = ()
    hashes: tuple[dict[bytes, bytes] | None, ...] = ()
    suspended: bool = False
    time: tuple[int, int] | None = None
    token_key: str = ""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Dequeuer:
    """Moves up to `count` job ids from the first non-empty queue into its intermediate list."""

    def __init__(self, redis: Redis, worker_name: str, acks: Acks | None = None) -> None:
        self.redis = redis
        self.worker_name = worker_name
        self._take = redis.register_script(_TAKE)
        # A take waits for a replica (REDIS_WAIT_REPLICAS) before its jobs run: a failover then
        # cannot bring them back queued on the new master for a second worker to run.
        self._acks = acks or Acks(0, 0)

    def take(self, queue_keys: list[str], count: int, wait_s: float) -> Taken:
        """Take what waits now; if nothing, wait up to `wait_s` for the first queue and look again."""
        taken = self._take_now(queue_keys, count)
        if taken.job_ids or taken.suspended:
            return taken
        first = queue_keys[0]
        timeout = wait_s if len(queue_keys) == 1 else min(wait_s, MULTI_QUEUE_WAIT_S)
        # Tail to its own tail: the queue is unchanged (a retried wait changes nothing either).
        # Redis takes fractional timeouts; redis-py annotates an int.
        woken = self.redis.blmove(first, first, timeout, "RIGHT", "RIGHT")  # type: ignore[arg-type]
        if woken is None:
            return taken
        return self._take_now(queue_keys, count)

    def _take_now(self, queue_keys: list[str], count: int) -> Taken:
        token_key = keys.take_token(self.worker_name, uuid.uuid4().hex)
        reply = self._acks.script(
            self._take,
            [WORKERS_SUSPENDED, token_key, *queue_keys],
            [count, Job.redis_job_namespace_prefix, TOKEN_TTL_S],
        )
        now = (int(reply[0]), int(reply[1]))
        if len(reply) == 2:
            return Taken(time=now)
        if reply[2] == 0:
            return Taken(suspended=True, time=now)
        pairs = reply[3:]
        ids = tuple(_text(job_id) for job_id in pairs[0::2])
        hashes = tuple(dict(zip(flat[0::2], flat[1::2], strict=True)) or None for flat in pairs[1::2])
        return Taken(_text(reply[2]), ids, hashes, time=now, token_key=token_key)
