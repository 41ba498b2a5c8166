"""Admission of /llm jobs: whether there is room for one now, and placing it in Redis only if so.

Room, per model: the slots of the ready workers that serve it (its `capacity`) plus MAX_QUEUE
jobs waiting for one of them. A request is refused when the model's jobs queued and running
already fill that room. Streams are never refused for room: go-livepeer cannot read a refused
stream (ai/worker/worker.go handleStreamingResponse makes any non-200 "unexpected status code",
and the gateway then drops this orchestrator from its pool), so a stream waits in the queue, up
to QUEUE_TIMEOUT_S, instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rq import Queue
from rq.registry import StartedJobRegistry
from rq.utils import now

from common import keys
from common.errors import CapacityError, RunnerError
from common.fleet import READY, WorkerRecord, capacity, why_unserved
from common.jobs import FAILURE_TTL_S, QUEUED_TTL_MARGIN_S, RESULT_TTL_S, GenerateJob

if TYPE_CHECKING:
    from web.runtime import Runtime

logger = logging.getLogger(__name__)

# Requests placing their job at once. A burst of hundreds all in flight together would finish
# together, late (each yields at its Redis round trip to all the others); a few at a time, the
# first jobs reach the workers while the rest are still being placed.
ADMISSION_SLOTS = 8

# The default MAX_QUEUE: twice the model's slots, at least this many.
MIN_DEFAULT_QUEUE = 4
# Longest a request waits to be among the ADMISSION_SLOTS placing their jobs. Placing takes a
# round trip to Redis; waiting longer means Redis is stuck, and a request must not hold its body
# (up to MAX_BODY_BYTES) for ever.
ADMISSION_WAIT_S = 5.0
NO_LIMIT = -1

# One round trip, atomic: count the model's jobs waiting (its RQ queue) and running (live
# executions in RQ's StartedJobRegistry, scored by their expiry), and only if they leave room
# write the job as RQ's Job.save + cleanup(ttl) + Queue.push_job_id would. A refused job leaves
# nothing in Redis. KEYS: queue, started registry, job hash, RQ's set of queues.
# ARGV: room (-1: no limit), job ttl, job id, then the job hash's fields and values.
PLACE_SCRIPT = """
local waiting = redis.call('LLEN', KEYS[1])
local running = redis.call('ZCOUNT', KEYS[2], redis.call('TIME')[1], '+inf')
local room = tonumber(ARGV[1])
if room >= 0 and waiting + running >= room then
  return {0, waiting, running}
end
redis.call('HSET', KEYS[3], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[3])
return {1, waiting, running}
"""


@dataclass(frozen=True)
class Room:
    """How many of a model's jobs may be queued and running together (NO_LIMIT for streams)."""

    limit: int
    slots: int
    max_queue: int


@contextmanager
def gate(rt: Runtime) -> Iterator[None]:
    """Be one of the ADMISSION_SLOTS requests placing a job, waiting at most ADMISSION_WAIT_S."""
    if not rt.admission.acquire(timeout=ADMISSION_WAIT_S):
        raise CapacityError(
            f"{ADMISSION_SLOTS} requests are being placed and none finished within {ADMISSION_WAIT_S:g} s "
            "(the runner's Redis is slow or unreachable)",
            reason="admission",
        )
    try:
        yield
    finally:
        rt.admission.release()


def max_queue(rt: Runtime, slots: int) -> int:
    """Jobs that may wait for a model's slots: MAX_QUEUE, or twice its slots (at least 4)."""
    if rt.settings.max_queue is not None:
        return rt.settings.max_queue
    return max(MIN_DEFAULT_QUEUE, 2 * slots)


def room(rt: Runtime, model_id: str, *, stream: bool) -> Room:
    """The room for one more job of the model; raises CapacityError (or RunnerError when no
    worker can ever serve it) if the runner cannot take it at all now. Reads the fleet registry."""
    if rt.draining_since is not None:
        raise CapacityError("the runner is shutting down; retry on another orchestrator", reason="shutdown")
    fleet = rt.fleet.view()
    if not any(record.serves(model_id) for record in fleet):
        fleet = rt.fleet.view(fresh=True)  # a worker may have joined since the last read
    slots = capacity(fleet, model_id)
    if slots == 0:
        if stream and any(record.will_serve(model_id) for record in fleet):
            return Room(NO_LIMIT, 0, 0)  # a worker is still provisioning it: the stream waits for it
        raise _unserved(fleet, model_id)
    queue = max_queue(rt, slots)
    return Room(NO_LIMIT if stream else slots + queue, slots, queue)


def _unserved(fleet: list[WorkerRecord], model_id: str) -> RunnerError:
    """Why nobody serves the model: "no room" while that may change, a plain error when every
    ready worker has ruled the model out (too big for its GPU, not installable)."""
    msg = why_unserved(fleet, model_id)
    if fleet and all(r.state == READY and model_id in r.models and not r.can_serve(model_id) for r in fleet):
        return RunnerError(msg, reason="unservable")
    return CapacityError(msg, reason="no_worker")


def place(rt: Runtime, queue: Queue, job_id: str, job: GenerateJob, space: Room) -> int:
    """Write the RQ job and queue it if there is room; returns how many jobs were waiting before it.

    Raises CapacityError (nothing written) when the model's queued and running jobs fill the room.
    """
    ttl = int(rt.settings.queue_timeout_s) + QUEUED_TTL_MARGIN_S
    rq_job = queue.create_job(
        keys.GENERATE_JOB,
        args=(job.to_payload(),),
        job_id=job_id,
        description=job.describe(),
        timeout=-1,
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        ttl=ttl,
    )
    rq_job.enqueued_at = now()
    fields = [item for pair in rq_job.to_dict().items() for item in pair]
    started = StartedJobRegistry(queue.name, connection=rt.redis).key
    placed, waiting, running = rt.acks.script(
        rt.place_script, [queue.key, started, rq_job.key, Queue.redis_queues_keys], [space.limit, ttl, job_id, *fields]
    )
    if not placed:
        raise CapacityError(
            f"{job.model_id!r} has {running} job(s) running and {waiting} waiting for its {space.slots} slot(s); "
            f"MAX_QUEUE is {space.max_queue}",
            reason="queue_full",
        )
    return int(waiting)
