"""Writing a job into its model's queue: one atomic script, safe to run twice, on Redis's clock.

The script counts the model's jobs waiting (its RQ queue) and running (live executions in RQ's
StartedJobRegistry, scored by their expiry) and, only if they leave room, writes the job as RQ's
Job.save + cleanup(ttl) + Queue.push_job_id would. A refused job leaves nothing in Redis.

Safe to run twice: redis-py retries a command whose connection failed (common.redis_client),
even when Redis had run it and only the answer was lost. Job ids are never reused, so a job hash
that exists means this very placement ran already: the rerun changes nothing and answers as the
first run did (placed, and the jobs waiting before it).

One clock: `created_at` and `enqueued_at` are Redis's TIME, as the registry scores are, so a
worker comparing them with Redis's TIME never sees a fresh job from a web host whose clock is
behind as stale.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq import Queue
from rq.registry import StartedJobRegistry

from common import keys
from common.acks import Acks
from common.jobs import FAILURE_TTL_S, QUEUED_TTL_MARGIN_S, RESULT_TTL_S, GenerateJob

NO_LIMIT = -1
# RQ's time stamps, written from the job's own record by RQ itself (Job.to_dict): left to the script.
STAMPED = ("created_at", "enqueued_at")

# Redis's Lua has no date functions: UTC from epoch seconds by days-to-civil (H. Hinnant's
# algorithm, integer arithmetic), formatted as rq.utils.utcformat does ('%Y-%m-%dT%H:%M:%S.%fZ').
UTC_LUA = """
local function utc(seconds, micros)
  seconds, micros = tonumber(seconds), tonumber(micros)
  local days = math.floor(seconds / 86400)
  local rest = seconds - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', year, month, day,
    math.floor(rest / 3600), math.floor(rest % 3600 / 60), rest % 60, micros)
end
"""

# KEYS: queue, started registry, job hash, RQ's set of queues. ARGV: room (-1: no limit), job ttl,
# job id, 1 to queue it first (a continuation: its client is mid-answer) or 0 to queue it last,
# then the job hash's fields and values. Returns {placed, waiting before it, running}.
PLACE_SCRIPT = (
    UTC_LUA
    + """
local now = redis.call('TIME')
local running = redis.call('ZCOUNT', KEYS[2], now[1], '+inf')
if redis.call('EXISTS', KEYS[3]) == 1 then
  local ahead = redis.call('LPOS', KEYS[1], ARGV[3])
  return {1, ahead or 0, running}
end
local waiting = redis.call('LLEN', KEYS[1])
local room = tonumber(ARGV[1])
if room >= 0 and waiting + running >= room then
  return {0, waiting, running}
end
local stamp = utc(now[1], now[2])
redis.call('HSET', KEYS[3], 'created_at', stamp, 'enqueued_at', stamp, unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], KEYS[1])
if ARGV[4] == '1' then
  redis.call('LPUSH', KEYS[1], ARGV[3])
  return {1, 0, running}
end
redis.call('RPUSH', KEYS[1], ARGV[3])
return {1, waiting, running}
"""
)


@dataclass(frozen=True)
class Placed:
    """What placing a job found: whether it is in the queue, and the model's jobs besides it."""

    placed: bool
    waiting: int
    running: int


class Placer:
    """Places jobs with the placement script, registered once per process (redis-py reloads it
    after a Redis restart)."""

    def __init__(self, redis: Redis, acks: Acks) -> None:
        self._redis = redis
        self._acks = acks  # a placement waits for a replica (REDIS_WAIT_REPLICAS): a failover keeps it
        self._script = redis.register_script(PLACE_SCRIPT)

    def place(
        self,
        queue: Queue,
        job_id: str,
        job: GenerateJob,
        limit: int,
        queue_timeout_s: float,
        *,
        first: bool = False,
        meta: dict[str, str] | None = None,
    ) -> Placed:
        """Write the RQ job (`meta` in its RQ record) and queue it (`first`: ahead of the others)
        unless the model's queued and running jobs reach `limit`."""
        ttl = int(queue_timeout_s) + QUEUED_TTL_MARGIN_S
        rq_job = queue.create_job(
            keys.GENERATE_JOB,
            args=(job.to_payload(),),
            job_id=job_id,
            description=job.describe(),
            timeout=-1,
            result_ttl=RESULT_TTL_S,
            failure_ttl=FAILURE_TTL_S,
            ttl=ttl,
            meta=meta,
        )
        fields = [item for key, value in rq_job.to_dict().items() if key not in STAMPED for item in (key, value)]
        started = StartedJobRegistry(queue.name, connection=self._redis).key
        where = 1 if first else 0
        placed, waiting, running = self._acks.script(
            self._script,
            [queue.key, started, rq_job.key, Queue.redis_queues_keys],
            [limit, ttl, job_id, where, *fields],
        )
        return Placed(bool(placed), int(waiting), int(running))
