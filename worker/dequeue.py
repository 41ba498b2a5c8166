"""Taking jobs off RQ queues as RQ does: into the queue's intermediate list, never just popped.

RQ's worker moves a job id from `rq:queue:<name>` to `rq:queue:<name>:intermediate` (LMOVE) and
removes it from there only in the same transaction that puts the job in the StartedJobRegistry
(rq/worker/base.py, prepare_job_execution). A worker killed in between leaves the id in the
intermediate list, where RQ's maintenance finds it and records the job failed
(rq/intermediate_queue.py, IntermediateQueue.cleanup). Here several ids are moved at once, from
the first non-empty queue in listening order, and the suspension flag of `rq suspend` is read
in the same script, so neither costs a round trip on a job's way to Ollama.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.suspension import WORKERS_SUSPENDED

from common.acks import Acks

# KEYS: the suspension flag, then each queue key in order. ARGV: how many ids to take at most,
# an id already moved from the first queue ('' if none; it is taken whatever the flag says),
# and the prefix of job hashes' keys (RQ's `rq:job:`).
# Returns {} when nothing waits, {0} when suspended, else {queue key, id, fields, id, fields, ...}
# with each job's hash as HGETALL gives it (empty for a job that is gone): the worker reads its
# jobs in the same round trip as it takes them.
_TAKE = """
local count = tonumber(ARGV[1])
local moved = ARGV[2]
if moved == '' and redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local first = 2
local last = #KEYS
if moved ~= '' then last = 2 end
for i = first, last do
  local ids = {}
  if i == 2 and moved ~= '' then ids[1] = moved end
  local target = KEYS[i] .. ':intermediate'
  while #ids < count do
    local id = redis.call('LMOVE', KEYS[i], target, 'LEFT', 'RIGHT')
    if not id then break end
    ids[#ids + 1] = id
  end
  if #ids > 0 then
    local reply = {KEYS[i]}
    for _, id in ipairs(ids) do
      reply[#reply + 1] = id
      reply[#reply + 1] = redis.call('HGETALL', ARGV[3] .. id)
    end
    return reply
  end
end
return {}
"""

# With several queues there is no blocking move over all of them: block on the first (the warm
# one) for a short while, and look at every queue again between waits.
MULTI_QUEUE_WAIT_S = 0.05


@dataclass(frozen=True)
class Taken:
    """What one attempt to take jobs found: the queue, the ids moved and each job's hash as it
    was then (None for a job that is gone), or that workers are suspended."""

    queue_key: str = ""
    job_ids: tuple[str, ...] = ()
    hashes: tuple[dict[bytes, bytes] | None, ...] = ()
    suspended: bool = False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Dequeuer:
    """Moves up to `count` job ids from the first non-empty queue into its intermediate list."""

    def __init__(self, redis: Redis, acks: Acks | None = None) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)
        # A take waits for a replica (REDIS_WAIT_REPLICAS) before its jobs run: a failover then
        # cannot bring them back queued on the new master for a second worker to run.
        self._acks = acks or Acks(0, 0)

    def take(self, queue_keys: list[str], count: int, wait_s: float) -> Taken:
        """Take what waits now; if nothing, wait up to `wait_s` for the first queue and take from it."""
        taken = self._take_now(queue_keys, count)
        if taken.job_ids or taken.suspended:
            return taken
        first = queue_keys[0]
        timeout = wait_s if len(queue_keys) == 1 else min(wait_s, MULTI_QUEUE_WAIT_S)
        intermediate = IntermediateQueue.get_intermediate_queue_key(first)

        def block(pipe: Pipeline) -> None:
            # Redis takes fractional timeouts; redis-py annotates an int.
            pipe.blmove(first, intermediate, timeout, "LEFT", "RIGHT")  # type: ignore[arg-type]

        (moved,) = self._acks.run(self.redis, block)
        if isinstance(moved, Exception):
            raise moved
        if moved is None:
            return Taken()
        return self._take_now([first], count, moved=_text(moved))

    def _take_now(self, queue_keys: list[str], count: int, moved: str = "") -> Taken:
        reply = self._acks.script(
            self._take, [WORKERS_SUSPENDED, *queue_keys], [count, moved, Job.redis_job_namespace_prefix]
        )
        if not reply:
            return Taken()
        if reply == [0]:
            return Taken(suspended=True)
        pairs = reply[1:]
        ids = tuple(_text(job_id) for job_id in pairs[0::2])
        hashes = tuple(dict(zip(flat[0::2], flat[1::2], strict=True)) or None for flat in pairs[1::2])
        return Taken(_text(reply[0]), ids, hashes)
