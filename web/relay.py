"""Following one job from enqueue to its last event, and cancelling it when its client leaves."""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from functools import partial

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from common import keys
from common.errors import QueueUnavailable, RunnerError, no_room
from common.events import Done, Failed, Ping, Started, Tokens, decode, sequence_of
from common.job_state import transition
from common.jobs import GenerateJob
from common.outage import through_outage
from web import admission
from web.client import ClientWatch
from web.hub import RESYNC, TICK
from web.runtime import Runtime
from web.validation import LLMRequest

logger = logging.getLogger(__name__)

Answer = Tokens | Done | Failed


class ClientGone(Exception):
    """The HTTP client closed its connection; nobody is left to answer."""


@dataclass
class JobTrace:
    """Timings and counts of one job as the web saw them, for the log line and the metrics."""

    job_id: str
    model_id: str
    stream: bool
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    first_token_at: float | None = None
    ended_at: float | None = None
    worker: str = ""
    gpu: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    eval_ms: float = 0.0
    outcome: str = "pending"
    reason: str = ""


class JobRelay:
    """One request's job: placed in its model's queue, then followed through the event hub."""

    def __init__(self, rt: Runtime, request: LLMRequest, watch: ClientWatch) -> None:
        self.rt = rt
        self.request = request
        self.watch = watch
        self.job_id = uuid.uuid4().hex
        self.trace = JobTrace(self.job_id, request.model.model_id, request.stream)
        self._inbox: queue.SimpleQueue[bytes] | None = None
        self._finished = False
        self.recorded = False  # set once its metrics and log line are written
        self.placed = False  # set once its job is in Redis
        self._queue_deadline = 0.0
        self._last_heard = 0.0
        self._last_seq = 0  # the job's events are numbered 1, 2, ...; the last one taken
        self._replay_due = False  # a replay from the backlog failed (Redis away): retry on ticks
        self._ready: deque[Answer] = deque()
        self._job: GenerateJob | None = None  # what was placed, to place it again if Redis lost it

    def submit(self) -> None:
        """Check for room and enqueue; raises CapacityError, RunnerError or QueueUnavailable at once.

        A refused job leaves nothing in Redis and costs the workers nothing.
        """
        with admission.gate(self.rt):
            self._submit()

    def _submit(self) -> None:
        rt, model_id = self.rt, self.request.model.model_id
        # Through Sentinel, Redis is back on a new master within seconds: wait for it (bounded)
        # rather than answer 500, which costs the orchestrator its place in the gateway's pool.
        wait_s = rt.failover_wait_s
        rt.hub.ensure_running(max(2.0, wait_s))
        what = f"job {self.job_id}: placing it"
        try:
            space = through_outage(partial(admission.room, rt, model_id, stream=self.request.stream), what,
                                   within_s=wait_s)  # fmt: skip
            self._inbox = rt.hub.register(self.job_id)
            job = GenerateJob(
                reply_to=rt.hub.channel,
                model_id=model_id,
                tag=self.request.model.tag,
                messages=self.request.messages,
                max_tokens=self.request.max_tokens,
                temperature=self.request.temperature,
                top_p=self.request.top_p,
                top_k=self.request.top_k,
                stream=self.request.stream,
            )
            through_outage(partial(admission.place, rt, rt.queue(model_id), self.job_id, job, space), what,
                           within_s=wait_s)  # fmt: skip
            self._job = job
        except (RedisError, OSError) as exc:
            self._release()
            raise QueueUnavailable(f"the runner's queue (Redis) is unavailable: {exc}") from None
        except RunnerError as exc:
            self._release()
            self.trace.outcome, self.trace.reason = "rejected", exc.reason
            raise
        now = time.monotonic()
        self._queue_deadline = now + rt.settings.queue_timeout_s
        self._last_heard = now

    def next_event(self) -> Answer:
        """Block until the next Tokens, Done or Failed; raises ClientGone if the client left.

        Timeouts come back as a Failed: waited too long for a slot, worker silent, shutting down.
        """
        assert self._inbox is not None
        ready = self._ready
        while True:
            if ready:
                return ready.popleft()
            raw = self._inbox.get()  # an event, or the hub's TICK every TICK_S
            now = time.monotonic()
            if raw is not TICK:
                self._take(raw, now)
                continue
            if self._replay_due:
                self._replay(now)
                continue
            failure = self._check(now)
            if failure is not None:
                return failure

    def pending(self) -> list[Answer]:
        """Events that have already arrived, without waiting (to write several in one go)."""
        if self._inbox is None or self._finished:
            events = list(self._ready)
            self._ready.clear()
            return events
        now = time.monotonic()
        while True:
            try:
                raw = self._inbox.get_nowait()
            except queue.Empty:
                break
            if raw is not TICK:
                self._take(raw, now)
        events = list(self._ready)
        self._ready.clear()
        return events

    def close(self) -> None:
        """Release the inbox; a job still running is cancelled (its client is gone)."""
        if not self._finished and self._inbox is not None:
            self._cancel("client went away")
            self.trace.outcome, self.trace.reason = "cancelled", "client_gone"
        self._release()

    def _release(self) -> None:
        if self._inbox is not None:
            self.rt.hub.unregister(self.job_id)
            self._inbox = None
        if self.trace.ended_at is None:
            self.trace.ended_at = time.monotonic()

    def _take(self, raw: bytes, now: float) -> None:
        """Take one message from the inbox: in order, once each, replaying what a gap skipped."""
        if self._finished:
            return
        if raw is RESYNC:
            self._last_heard = now  # the worker's silence counts again from now (see _check)
            if self.trace.started_at is None and self._lost():
                return
            self._replay(now)
            return
        seq = sequence_of(raw)
        if seq is not None:
            if seq <= self._last_seq:
                return  # already taken (live copy of a replayed event)
            if seq > self._last_seq + 1:
                self._replay(now, upto=seq)  # the backlog holds the missed ones, this one included
                return
            self._last_seq = seq
        self._last_heard = now
        event = self._accept(raw, now)
        if event is not None:
            self._ready.append(event)

    def _replay(self, now: float, upto: int = 0) -> None:
        """Take every event of the backlog after the last one taken; a hole before `upto` ends the job."""
        try:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = self.rt.redis.xrange(  # type: ignore[assignment]
                keys.job_backlog(self.job_id), min=f"{self._last_seq + 1}-0"
            )
        except (RedisError, OSError) as exc:
            if not self._replay_due:
                logger.warning("job %s: cannot replay its events yet: %s", self.job_id, exc)
            self._replay_due = True
            return
        self._replay_due = False
        missing = upto
        for entry_id, fields in entries:
            if self._finished:
                return
            seq = int(entry_id.partition(b"-")[0])
            if seq != self._last_seq + 1:
                missing = seq
                break
            self._last_seq = seq
            self._last_heard = now
            event = self._accept(fields[b"m"], now)
            if event is not None:
                self._ready.append(event)
        if self._finished or missing <= self._last_seq:
            return
        msg = f"events {self._last_seq + 1} to {missing - 1} of this job were lost; retry"
        self._cancel("events lost")
        self._ready.append(self._finish_failed(msg, "events_lost"))

    def _lost(self) -> bool:
        """After the subscription came back: if Redis lost this unstarted job (a failover to a
        replica that never received it: its hash is gone), place it again under a new id and
        return True. The old id is cancelled, so a worker that took it from the old master stops."""
        rt, job = self.rt, self._job
        try:
            if job is None or rt.redis.exists(Job.key_for(self.job_id)):
                return False
        except (RedisError, OSError):
            return False  # cannot tell now: the next resync asks again
        lost, self.job_id = self.job_id, uuid.uuid4().hex
        self.trace.job_id = self.job_id
        rt.hub.unregister(lost)
        self._inbox = rt.hub.register(self.job_id)
        try:
            rt.redis.publish(keys.cancel_channel(), lost)
            admission.place(rt, rt.queue(job.model_id), self.job_id, job, admission.Room(admission.NO_LIMIT, 0, 0))
        except (RedisError, OSError) as exc:
            msg = f"the job was lost in a Redis failover before a replica had it, and could not be placed again: {exc}"
            self._ready.append(self._finish_failed(msg, "lost_in_failover"))
            return True
        logger.warning("job %s: lost by Redis (a failover before a replica had it); placed again as %s",
                       lost, self.job_id)  # fmt: skip
        return True

    def _accept(self, raw: bytes, now: float) -> Answer | None:
        try:
            _, event = decode(raw)
        except (ValueError, TypeError) as exc:
            logger.error("job %s: undecodable event %r: %s", self.job_id, raw[:120], exc)
            return None
        if isinstance(event, Ping):
            return None
        if isinstance(event, Started):
            self.trace.started_at = now
            self.trace.worker, self.trace.gpu = event.worker, event.gpu
            return None
        if isinstance(event, Tokens):
            if self.trace.first_token_at is None:
                self.trace.first_token_at = now
            self.trace.completion_tokens += event.count
            return event
        self._finished = True
        if isinstance(event, Done):
            self.trace.outcome, self.trace.reason = "ok", event.finish_reason
            self.trace.prompt_tokens, self.trace.completion_tokens = event.prompt_tokens, event.completion_tokens
            self.trace.eval_ms = event.eval_ms
        else:
            self.trace.outcome, self.trace.reason = "failed", event.reason
        return event

    def _check(self, now: float) -> Failed | None:
        if self.watch.gone():
            self.close()
            raise ClientGone
        rt = self.rt
        if rt.draining_since is not None and now - rt.draining_since >= rt.settings.shutdown_grace_s:
            return self._give_up(no_room("the runner is shutting down; retry on another orchestrator"), "shutdown")
        if self.trace.started_at is None:
            if now >= self._queue_deadline:
                return self._give_up(
                    no_room(
                        f"no slot for {self.request.model.model_id!r} became free within "
                        f"{rt.settings.queue_timeout_s:g} s (QUEUE_TIMEOUT_S)"
                    ),
                    "queue_timeout",
                )
        elif not rt.hub.subscribed:
            # This process hears no worker now (Redis restarting, a Sentinel failover): silence is
            # not the worker's fault. Its events wait in the backlog; the clock starts again at RESYNC.
            self._last_heard = now
        elif now - self._last_heard >= rt.settings.worker_silence_s:
            msg = f"worker {self.trace.worker} stopped responding (silent for {now - self._last_heard:.1f} s)"
            self._fail_abandoned(msg)
            return self._finish_failed(msg, "worker_lost")
        return None

    def _give_up(self, msg: str, reason: str) -> Failed:
        self._cancel(reason)
        return self._finish_failed(msg, reason)

    def _finish_failed(self, msg: str, reason: str) -> Failed:
        self._finished = True
        self.trace.outcome, self.trace.reason = "failed", reason
        logger.warning("job %s: %s", self.job_id, msg)
        return Failed(msg, 500, reason)

    def _cancel(self, why: str) -> None:
        """Take the job off its queue if no worker has taken it yet; else tell the workers to drop it.

        Only a job a worker may hold is broadcast on the cancel channel, which every worker reads.
        """
        self._finished = True
        redis = self.rt.redis
        try:
            if not (self.trace.started_at is None and self._unqueue()):
                redis.publish(keys.cancel_channel(), self.job_id)
            logger.info("job %s: cancelled (%s)", self.job_id, why)
        except (RedisError, OSError, NoSuchJobError) as exc:
            logger.warning("job %s: cancel (%s) incomplete: %s", self.job_id, why, exc)

    def _unqueue(self) -> bool:
        """Take the job off its queue and record it canceled, atomically, if it is still
        queued; False when a worker has taken it (or it is gone)."""
        redis = self.rt.redis
        job = Job.fetch(self.job_id, connection=redis, serializer=JSONSerializer)
        queue_key = self.rt.queue(self.request.model.model_id).key

        def write(pipe: Pipeline) -> None:
            pipe.lrem(queue_key, 1, self.job_id)
            job.cancel(pipeline=pipe)  # RQ's own record: canceled, in the CanceledJobRegistry

        # Only while still queued, atomically: a worker that took the id meanwhile (it sits in RQ's
        # intermediate queue) sees the job canceled when it records the start, and stops it.
        return transition(redis, job.key, {JobStatus.QUEUED}, write) is None

    def _fail_abandoned(self, msg: str) -> None:
        """Record a job whose worker vanished as failed, as RQ's own cleanup would, but now."""
        redis = self.rt.redis
        try:
            redis.publish(keys.cancel_channel(), self.job_id)
            job = Job.fetch(self.job_id, connection=redis, serializer=JSONSerializer)
            registry = StartedJobRegistry(job.origin, connection=redis)
            entries = [
                f"{job_id}:{execution_id}"
                for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False)
                if job_id == self.job_id
            ]

            def write(pipe: Pipeline) -> None:
                record_job_failure(job, msg, pipe)
                if entries:
                    pipe.zrem(registry.key, *entries)

            # Only while not ended: a worker that recorded its end first (it was not lost) wins. It
            # may still read queued: the worker sends to Ollama before it records the start.
            ended = transition(redis, job.key, {JobStatus.STARTED, JobStatus.QUEUED}, write)
            if ended is not None:
                logger.info("job %s: already %s; not recorded failed", self.job_id, ended)
        except (RedisError, OSError, NoSuchJobError) as exc:
            logger.warning("job %s: could not mark it failed: %s", self.job_id, exc)
