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
from rq.intermediate_queue import IntermediateQueue
from rq.suspension import WORKERS_SUSPENDED

# KEYS: the suspension flag, then each queue key in order. ARGV: how many ids to take at most.
# Returns {} when nothing waits, {0} when suspended, else {queue key, id, id, ...}.
_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local count = tonumber(ARGV[1])
for i = 2, #KEYS do
  local ids = {}
  local target = KEYS[i] .. ':intermediate'
  for _ = 1, count do
    local id = redis.call('LMOVE', KEYS[i], target, 'LEFT', 'RIGHT')
    if not id then break end
    ids[#ids + 1] = id
  end
  if #ids > 0 then
    table.insert(ids, 1, KEYS[i])
    return ids
  end
end
return {}
"""

# With several queues there is no blocking move over all of them: block on the first (the warm
# one) for a short while, and look at every queue again between waits.
MULTI_QUEUE_WAIT_S = 0.05


@dataclass(frozen=True)
class Taken:
    """What one attempt to take jobs found: the queue and ids moved, or that workers are suspended."""

    queue_key: str = ""
    job_ids: tuple[str, ...] = ()
    suspended: bool = False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Dequeuer:
    """Moves up to `count` job ids from the first non-empty queue into its intermediate list."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)

    def take(self, queue_keys: list[str], count: int, wait_s: float) -> Taken:
        """Take what waits now; if nothing, wait up to `wait_s` for the first queue and take from it."""
        taken = self._take_now(queue_keys, count)
        if taken.job_ids or taken.suspended:
            return taken
        first = queue_keys[0]
        timeout = wait_s if len(queue_keys) == 1 else min(wait_s, MULTI_QUEUE_WAIT_S)
        intermediate = IntermediateQueue.get_intermediate_queue_key(first)
        # Redis takes fractional timeouts; redis-py annotates an int.
        moved = self.redis.blmove(first, intermediate, timeout, "LEFT", "RIGHT")  # type: ignore[arg-type]
        if moved is None:
            return Taken()
        ids = [_text(moved)]
        if count > 1:
            more = self._take_now([first], count - 1)
            ids += more.job_ids
        return Taken(first, tuple(ids))

    def _take_now(self, queue_keys: list[str], count: int) -> Taken:
        reply = self._take(keys=[WORKERS_SUSPENDED, *queue_keys], args=[count])
        if not reply:
            return Taken()
        if reply == [0]:
            return Taken(suspended=True)
        return Taken(_text(reply[0]), tuple(_text(job_id) for job_id in reply[1:]))
