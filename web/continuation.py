"""Carrying an answer on after its generation was lost: which losses, whether, and the job that does it.

A generation lost after it started (a worker's Failed with a reason in CONTINUABLE_REASONS, the
web finding the worker gone or the job's events unrecoverable) is placed again as a continuation
job: the original messages, then the text the client already got as a trailing assistant message,
`max_tokens` less the tokens it got, the same sampling options (common.jobs.GenerateJob). The
request then follows that job (web.relay.JobRelay.follow), so its client reads one answer. When
the client got nothing yet, the original job is simply placed again (a retry).

Never for a job whose decoding is guided (tools, response_format: a continuation would restart
the grammar, as NVIDIA Dynamo's request migration also refuses), never more than MIGRATION_LIMIT
times per request, never while the runner shuts down, and only while a ready worker (not the
lost one) can run it. `next_job` decides, pure; `Continuations` keeps what the client got and
places the job.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import replace

from redis.exceptions import RedisError
from rq.job import Job

from common.errors import CONTINUABLE_REASONS, NOT_CONTINUABLE, RunnerError
from common.events import Done, Failed, Tokens
from common.fleet import WorkerRecord
from common.jobs import GenerateJob
from web import admission, metrics, records
from web.deadlines import EVENTS_LOST, WORKER_LOST
from web.runtime import Runtime

logger = logging.getLogger(__name__)

# The failures that lose a generation through no fault of the request: the engine's (workers
# report them), the worker's and the events' (the web finds them), and a continuation that landed
# on a worker whose engine cannot continue the model (another may).
LOST = CONTINUABLE_REASONS | {WORKER_LOST, EVENTS_LOST, NOT_CONTINUABLE}
# A job placed to carry an answer on that found its engine unreachable generated nothing: it is
# placed again too (its worker's engine died with the generation it replaces).
LOST_AGAIN = LOST | {"unreachable"}


class Sent:
    """What the client got of the answer so far: the Tokens events handed out, text and token count."""

    __slots__ = ("_parts", "tokens")

    def __init__(self) -> None:
        self._parts: list[str] = []  # each event's text as a JSON string literal (decoded only when needed)
        self.tokens = 0

    def add(self, event: Tokens) -> None:
        """Count one Tokens event the client got."""
        self._parts.append(event.text_json)
        self.tokens += event.count

    @property
    def text(self) -> str:
        """The text the client got."""
        decoded: list[str] = json.loads(f"[{','.join(self._parts)}]")
        return "".join(decoded)


def lost(failed: Failed, attempt: int) -> bool:
    """Whether `failed` lost a generation the runner may carry on (`attempt`: of the job that failed)."""
    return failed.reason in (LOST_AGAIN if attempt else LOST)


def next_job(
    original: GenerateJob,
    sent: Sent,
    done: int,
    limit: int,
    fleet: list[WorkerRecord] | None,
    *,
    lost_worker: str = "",
    draining: bool = False,
) -> GenerateJob | str:
    """The job that carries the answer of `original` on after the client got `sent`, `done`
    continuations in; or why there is none (for the log)."""
    model = original.model_id
    if limit == 0:
        return "MIGRATION_LIMIT is 0"
    if done >= limit:
        return f"it was carried on {done} time(s) already (MIGRATION_LIMIT={limit})"
    if original.tools or original.response_format:
        return "its decoding is guided (tools or response_format): a continuation would restart the grammar"
    if draining:
        return "the runner is shutting down"
    left = original.max_tokens - sent.tokens
    if left <= 0:
        return "the client got all of its max_tokens"
    if fleet is None:
        return "the fleet registry could not be read"
    others = [record for record in fleet if record.name != lost_worker]
    if not sent.tokens:
        if not any(record.serves(model) for record in others):
            return f"no other ready worker serves {model}"
        return replace(original, attempt=done + 1)
    if not any(record.can_continue(model) for record in others):
        return f"no ready worker can continue an answer of {model}"
    messages = [*original.messages, {"role": "assistant", "content": sent.text}]
    return replace(original, messages=messages, max_tokens=left, continue_final=True, sent_tokens=sent.tokens,
                   attempt=done + 1)  # fmt: skip


class Continuations:
    """One request's continuations: what its client got, and the jobs placed to carry its answer on."""

    def __init__(self, rt: Runtime, original: GenerateJob | None) -> None:
        self.rt = rt
        self.original = original
        self.current = original  # the job followed now, to place it again if Redis lost it
        self.sent = Sent()
        self.done = 0  # continuations (and retries) placed
        self.base_tokens = 0  # completion tokens the client got before the job followed now

    def counted(self, done: Done) -> Done:
        """The Done of the job followed now, counting every completion token the client got (a
        continuation's own Done counts only its own)."""
        if not self.base_tokens:
            return done
        return replace(done, completion_tokens=self.base_tokens + done.completion_tokens)

    def carry_on(self, failed: Failed, job_id: str, worker: str) -> str | None:
        """Place the job that carries the answer on after the job followed now, `job_id` (on
        `worker`), failed with `failed`; its id, or None (logged why) when there is none.

        The failed job is told to stop (a worker that still runs it drops it); its record is the
        worker's own, or the one the web wrote when it gave up on it.
        """
        rt, original = self.rt, self.original
        if original is None or not lost(failed, self.done):
            return None
        fleet = rt.fleet.view_or_none()
        lost_worker = worker if failed.reason == WORKER_LOST else ""
        job = next_job(original, self.sent, self.done, rt.settings.migration_limit, fleet, lost_worker=lost_worker,
                       draining=rt.draining_since is not None)  # fmt: skip
        if isinstance(job, str):
            if rt.settings.migration_limit:
                logger.warning("job %s: generation lost (%s) and not carried on: %s", job_id, failed.reason, job)
            return None
        again = uuid.uuid4().hex
        try:
            records.broadcast_cancel(rt.redis, job_id)
            # Ahead of the jobs waiting: its client is mid-answer. No room limit: the request was admitted.
            admission.place(rt, rt.queue(job.model_id), again, job, admission.Room(admission.NO_LIMIT, 0, 0),
                            first=True, meta={"continues": job_id, "cause": failed.reason})  # fmt: skip
        except (RedisError, OSError, RunnerError) as exc:
            logger.warning("job %s: generation lost (%s); its continuation could not be placed: %s", job_id,
                           failed.reason, exc)  # fmt: skip
            return None
        self.done += 1
        self.current, self.base_tokens = job, job.sent_tokens
        metrics.CONTINUATIONS.labels(failed.reason).inc()
        what = f"continued after {job.sent_tokens} token(s)" if job.continue_final else "placed again (nothing sent)"
        logger.warning("job %s: generation lost (%s: %s); %s as job %s (%d of at most %d)", job_id, failed.reason,
                       failed.msg, what, again, self.done, rt.settings.migration_limit)  # fmt: skip
        return again

    def place_lost(self, job_id: str) -> str | None:
        """If Redis lost the job followed now, `job_id`, before any worker started it (a failover to a
        replica that never received it: its hash is gone), place it again under a new id, the
        workers told to drop the old one (one may have taken it from the old master); the new id.
        None when it was not lost, or Redis cannot tell now. Raises RedisError or OSError."""
        rt, job = self.rt, self.current
        try:
            if job is None or rt.redis.exists(Job.key_for(job_id)):
                return None
        except (RedisError, OSError):
            return None  # cannot tell now: the next resync asks again
        again = uuid.uuid4().hex
        records.broadcast_cancel(rt.redis, job_id)
        admission.place(rt, rt.queue(job.model_id), again, job, admission.Room(admission.NO_LIMIT, 0, 0),
                        first=job.attempt > 0, meta={"continues": job_id, "cause": "lost_in_failover"})  # fmt: skip
        return again
