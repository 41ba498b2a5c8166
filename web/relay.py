"""Following one request's job from its placement to its last event, and ending it when it must.

The parts each have a module: admission and placement (web.admission, web.placement), putting
the events in order (web.sequencer, pure), the deadlines (web.deadlines, pure), what the web
writes when it ends a job itself (web.records), and carrying a lost generation on with another
job (web.continuation). A JobRelay ties them to the request: it waits on the inbox the event hub
fills, feeds the sequencer, reads the backlog when it asks, on every tick checks the client and
the deadlines, whatever else is going on, and hands the events out, counting the text the client
gets, so that a generation lost midway goes on where the client's answer stopped.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections import deque

from redis.exceptions import RedisError

from common import keys
from common.errors import QueueUnavailable, RunnerError
from common.events import Done, Failed, Ping, Started, Tokens, ToolCalls, decode
from web import admission, deadlines, records
from web.client import ClientWatch
from web.continuation import Continuations
from web.hub import RESYNC, TICK
from web.liveness import ProcessWatch
from web.runtime import Runtime
from web.sequencer import Sequencer, backlog_entries
from web.trace import JobTrace
from web.validation import LLMRequest

__all__ = ["Answer", "ClientGone", "JobRelay", "JobTrace"]

logger = logging.getLogger(__name__)

Answer = Tokens | ToolCalls | Done | Failed


class ClientGone(Exception):
    """The HTTP client closed its connection; nobody is left to answer."""


class JobRelay:
    """One request's job: placed in its model's queue, then followed through the event hub."""

    def __init__(self, rt: Runtime, request: LLMRequest, watch: ClientWatch) -> None:
        self.rt = rt
        self.request = request
        self.watch = watch
        self.job_id = uuid.uuid4().hex
        self.trace = JobTrace(self.job_id, request.model.model_id, request.stream)
        self.recorded = False  # set once its metrics and log line are written
        self.placed = False  # set once its job is in Redis
        self._inbox: queue.SimpleQueue[bytes] | None = None
        self._events = Sequencer(self.job_id, time.monotonic())
        self._placed_at = 0.0
        self._started = False  # the job followed now was taken by a worker (Started)
        self._finished = False
        self._ready: deque[Answer] = deque()
        self._deaf = deadlines.Deafness()  # while this process hears no worker, silence is not theirs
        self._watch = ProcessWatch(self._deaf)  # whether the silent worker's process is gone
        self._carry = Continuations(rt, None)  # what the client got; the jobs that carried it on

    def submit(self) -> None:
        """Check for room and enqueue; raises CapacityError, RunnerError or QueueUnavailable at once.

        A refused job leaves nothing in Redis and costs the workers nothing.
        """
        with admission.gate(self.rt):
            self._submit()

    def _submit(self) -> None:
        try:
            self._inbox, job = admission.submit(self.rt, self.request, self.job_id)
            self._carry.original = self._carry.current = job
        except (RedisError, OSError) as exc:
            self._release()
            raise QueueUnavailable(f"the runner's queue (Redis) is unavailable: {exc}") from None
        except RunnerError as exc:
            self._release()
            self.trace.outcome, self.trace.reason = "rejected", exc.reason
            raise
        self.placed = True
        self._placed_at = time.monotonic()
        self._events = Sequencer(self.job_id, self._placed_at)

    def follow(self, job_id: str) -> None:
        """From now on follow `job_id` instead (a job placed for this request to carry it on):
        its events only, from its first; its own queue deadline. The previous job is left as is."""
        if self._inbox is not None:
            self.rt.hub.unregister(self.job_id)
            self.rt.hub.register(job_id, self._inbox)  # the same inbox: its ticks go on
        self.job_id = self.trace.job_id = job_id
        self._placed_at = time.monotonic()
        self._events = Sequencer(job_id, self._placed_at)
        self._started = self._finished = False
        self._watch = ProcessWatch(self._deaf)

    def next_event(self) -> Answer:
        """Block until the next Tokens, ToolCalls, Done or Failed; raises ClientGone if the client left.

        Timeouts come back as a Failed: waited too long for a slot, worker silent, shutting down.
        A lost generation that another job carries on is not one: the events go on with that job's.
        """
        assert self._inbox is not None
        ready = self._ready
        while True:
            while ready:
                event = self._hand_out(ready.popleft())
                if event is not None:
                    return event
            raw = self._inbox.get()  # an event, or the hub's TICK every TICK_S
            now = time.monotonic()
            if raw is not TICK:
                self._take(raw, now)
                continue
            if self._events.replay_wanted(now) and not self._finished:
                self._replay(now)  # a read that fails again falls through to the checks
                if ready:
                    continue
            failure = self._check(now)
            if failure is not None:
                ready.append(failure)  # handed out, or carried on, as the workers' failures are

    def pending(self) -> list[Answer]:
        """Events that have already arrived, without waiting (to write several in one go)."""
        if self._inbox is not None and not self._finished:
            now = time.monotonic()
            while True:
                try:
                    raw = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if raw is not TICK:
                    self._take(raw, now)
        handed = [self._hand_out(self._ready.popleft()) for _ in range(len(self._ready))]
        return [event for event in handed if event is not None]

    def _hand_out(self, event: Answer) -> Answer | None:
        """An event on its way to the client: its text counted; a lost generation carried on by
        another job, followed from now on (None: the client hears nothing of it)."""
        if isinstance(event, Tokens):
            self._carry.sent.add(event)
        elif isinstance(event, Failed):
            again = self._carry.carry_on(event, self.job_id, self.trace.worker)
            if again is not None:
                self.follow(again)
                self.trace.continuations = self._carry.done
                return None
        return event

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
            self._deaf.resynced(now)
            self._events.resync(now)
            if not self._started and self._lost():
                return
        else:
            for event in self._events.message(raw, now):
                self._accept(event, now)
        if self._events.replay_wanted(now) and not self._finished:
            self._replay(now)

    def _replay(self, now: float) -> None:
        """Read the job's backlog from the first event missing; a hole nobody can fill ends the job."""
        events = self._events
        try:
            entries = self.rt.redis.xrange(keys.job_backlog(self.job_id), min=f"{events.replay_from}-0")
        except (RedisError, OSError) as exc:
            if events.replay_failed(now):
                logger.warning("job %s: cannot replay its events yet: %s", self.job_id, exc)
            return
        replayed = events.replayed(backlog_entries(entries), now)  # type: ignore[arg-type]
        for raw in replayed.events:
            if self._finished:
                return
            self._accept(raw, now)
        if replayed.hole is not None and not self._finished:
            hole = replayed.hole
            msg = f"events {hole.first} to {hole.last} of this job were lost; retry"
            self._cancel("events lost")
            self._ready.append(self._finish_failed(msg, deadlines.EVENTS_LOST))

    def _lost(self) -> bool:
        """After the subscription came back: if Redis lost this unstarted job (a failover to a
        replica that never received it: its hash is gone), place it again under a new id and
        follow that; True then. The old id is cancelled, so a worker that took it from the old
        master stops."""
        lost = self.job_id
        try:
            again = self._carry.place_lost(lost)
        except (RedisError, OSError) as exc:
            msg = f"the job was lost in a Redis failover before a replica had it, and could not be placed again: {exc}"
            self._ready.append(self._finish_failed(msg, "lost_in_failover"))
            return True
        if again is not None:
            self.follow(again)
            logger.warning(
                "job %s: lost by Redis (a failover before a replica had it); placed again as %s", lost, again
            )
        return again is not None

    def _accept(self, raw: bytes, now: float) -> None:
        try:
            _, event = decode(raw)
        except (ValueError, TypeError) as exc:
            logger.error("job %s: undecodable event %r: %s", self.job_id, raw[:120], exc)
            return
        trace = self.trace
        if isinstance(event, Ping):
            return
        if isinstance(event, Started):
            self._started = True
            if trace.started_at is None:
                trace.started_at = now
            trace.worker, trace.gpu = event.worker, event.gpu
            return
        if isinstance(event, Tokens):
            if trace.first_token_at is None:
                trace.first_token_at = now
            trace.completion_tokens += event.count
        elif isinstance(event, ToolCalls):
            if trace.first_token_at is None:
                trace.first_token_at = now
        else:
            self._finished = True
            if isinstance(event, Done):
                event = self._carry.counted(event)
                trace.outcome, trace.reason = "ok", event.finish_reason
                trace.prompt_tokens, trace.completion_tokens = event.prompt_tokens, event.completion_tokens
                trace.eval_ms = event.eval_ms
            else:
                trace.outcome, trace.reason = "failed", event.reason
        self._ready.append(event)

    def _check(self, now: float) -> Failed | None:
        """The client first (it may have left), then the deadlines; what a passed one answers."""
        if self.watch.gone():
            self.close()
            raise ClientGone
        rt, events = self.rt, self._events
        heard, counts_from = events.last_heard, self._deaf.until(rt.hub.subscribed, now)
        gone = not events.replay_due and self._watch.gone(rt.redis, self.trace.worker, self._started, heard,
                                                          counts_from, now)  # fmt: skip
        progress = deadlines.Progress(
            self.request.model.model_id,
            self._placed_at,
            started=self._started,
            # Read again: a look Redis was slow to answer counts as time this process heard nobody.
            last_heard=max(heard, self._deaf.until(rt.hub.subscribed, now)),
            worker=self.trace.worker,
            replay_due=events.replay_due,
            gone=gone,
        )
        due = deadlines.overdue(rt.settings, progress, now, rt.draining_since)
        if due is None:
            return None
        if due.reason == deadlines.WORKER_LOST:
            self._finished = True
            records.fail_abandoned(rt.redis, rt.settings, self._queue_key(), self.job_id, due.msg)
        else:
            self._cancel(due.reason)
        return self._finish_failed(due.msg, due.reason)

    def _finish_failed(self, msg: str, reason: str) -> Failed:
        self._finished = True
        self.trace.outcome, self.trace.reason = "failed", reason
        logger.warning("job %s: %s", self.job_id, msg)
        return Failed(msg, 500, reason)

    def _cancel(self, why: str) -> None:
        """Take the job off its queue if no worker has taken it yet; else tell the workers to drop it."""
        self._finished = True
        rt = self.rt
        records.cancel(rt.redis, rt.settings, self._queue_key(), self.job_id, taken=self._started, why=why)

    def _queue_key(self) -> str:
        key: str = self.rt.queue(self.request.model.model_id).key
        return key
