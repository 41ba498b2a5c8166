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
import queue as queues
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from rq import Queue

from common.errors import CapacityError, RunnerError
from common.fleet import READY, WorkerRecord, capacity, why_unserved
from common.jobs import GenerateJob
from common.outage import through_outage
from web.placement import NO_LIMIT
from web.runtime import ADMISSION_SLOTS, Runtime
from web.validation import LLMRequest

__all__ = ["ADMISSION_SLOTS", "NO_LIMIT", "Room", "gate", "max_queue", "place", "room", "submit"]

logger = logging.getLogger(__name__)

# The default MAX_QUEUE: twice the model's slots, at least this many.
MIN_DEFAULT_QUEUE = 4
# Longest a request waits to be among the ADMISSION_SLOTS placing their jobs. Placing takes a
# round trip to Redis; waiting longer means Redis is stuck, and a request must not hold its body
# (up to MAX_BODY_BYTES) for ever.
ADMISSION_WAIT_S = 5.0


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


def submit(rt: Runtime, request: LLMRequest, job_id: str) -> tuple[queues.SimpleQueue[bytes], GenerateJob]:
    """Place the request's job as `job_id` if there is room, the inbox of its events registered
    first (a fast worker's first event finds it); the inbox and the job. Raises CapacityError or
    RunnerError (refused: nothing placed), QueueUnavailable, RedisError or OSError; the inbox is
    unregistered then."""
    model_id = request.model.model_id
    # Through Sentinel, Redis is back on a new master within seconds: wait for it (bounded)
    # rather than answer 500, which costs the orchestrator its place in the gateway's pool.
    wait_s = rt.failover_wait_s
    rt.hub.ensure_running(max(2.0, wait_s))
    what = f"job {job_id}: placing it"
    space = through_outage(partial(room, rt, model_id, stream=request.waits_for_room), what, within_s=wait_s)
    inbox = rt.hub.register(job_id)
    try:
        job = request.job(rt.hub.channel)
        through_outage(partial(place, rt, rt.queue(model_id), job_id, job, space), what, within_s=wait_s)
    except BaseException:
        rt.hub.unregister(job_id)
        raise
    return inbox, job


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


def place(
    rt: Runtime,
    queue: Queue,
    job_id: str,
    job: GenerateJob,
    space: Room,
    *,
    first: bool = False,
    meta: dict[str, str] | None = None,
) -> int:
    """Write the RQ job (`meta` in its RQ record) and queue it if there is room (`first`: ahead of
    the jobs waiting); returns how many jobs were waiting before it.

    Raises CapacityError (nothing written) when the model's queued and running jobs fill the room.
    Safe to run twice (web.placement): a job already placed stays placed, once.
    """
    found = rt.placer.place(queue, job_id, job, space.limit, rt.settings.queue_timeout_s, first=first, meta=meta)
    if not found.placed:
        raise CapacityError(
            f"{job.model_id!r} has {found.running} job(s) running and {found.waiting} waiting for its "
            f"{space.slots} slot(s); MAX_QUEUE is {space.max_queue}",
            reason="queue_full",
        )
    return found.waiting
