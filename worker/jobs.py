"""The RQ job function: one chat generation on this worker's engine, its events published live."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from rq import get_current_job
from rq.job import Job

from common.errors import CONTINUABLE_REASONS, BackendError, JobCancelled, QueueUnavailable
from common.events import Done, Failed, Started, ToolCalls, encode, encode_tokens
from common.jobs import GenerateJob
from worker import context
from worker.active import Handle
from worker.backend import AnswerParser
from worker.ollama_wire import Final

logger = logging.getLogger(__name__)

# A fast stream is relayed in batches; an SSE chunk still carries only a few tokens.
TOKENS_PER_EVENT = 16
SHUTDOWN = "the worker is shutting down"
# The web's own cancel: its client is gone, so nobody is told.
CLIENT_GONE = "the client went away"
# A job's Started event waits this long after its request was sent for the first tokens, to go
# out with them in one publish (an engine that answers at once); a slower one is announced alone.
STARTED_DELAY_S = 0.005
# How long the worker's start bookkeeping waits for a batch's jobs to be announced first.
ANNOUNCE_WAIT_S = 0.02


def begin_all(jobs: list[Job]) -> None:
    """Start the jobs' engine calls now, then wait (at most ANNOUNCE_WAIT_S) until each is
    announced: the bookkeeping that follows in this thread would otherwise take the CPU (the
    GIL) from the stream loop while it sends the requests and relays the first tokens."""
    ctx = context.current()
    for job in jobs:
        try:
            begin(job.id, job.args[0])
        except Exception:
            logger.exception("job %s: could not be started early; it starts in its thread", job.id)
    deadline = time.monotonic() + ANNOUNCE_WAIT_S
    for job in jobs:
        announced = ctx.announced.get(job.id)
        if announced is not None and not announced.wait(max(0.0, deadline - time.monotonic())):
            return


def begin(job_id: str, payload: dict[str, Any]) -> None:
    """Start a job's engine call on the stream loop now; `generate` then waits for it.

    The worker calls this the moment it has taken the job, so the request leaves for the engine
    without waiting for the RQ thread that runs `generate` to be scheduled.
    """
    ctx = context.current()
    spec = GenerateJob.from_payload(payload)
    future: Future[dict[str, Any]]
    try:
        handle = ctx.active.start(job_id, spec.reply_to)
    except JobCancelled as exc:
        future = Future()
        future.set_exception(exc)
    else:
        announced = ctx.announced[job_id] = threading.Event()
        future = asyncio.run_coroutine_threadsafe(_relay(job_id, spec, handle, announced), ctx.streams.loop)
    ctx.begun[job_id] = future


def generate(payload: dict[str, Any]) -> dict[str, Any]:
    """Run the job in `payload` (a GenerateJob); returns a summary RQ keeps as the job's result.

    Publishes Started, Tokens…, then Done or Failed on the job's reply channel. Raises
    BackendError (after publishing Failed) so RQ marks the job failed, or JobCancelled. The
    stream itself runs on the process's stream loop; this (RQ's job) thread waits for it.
    """
    ctx = context.current()
    job = get_current_job()
    if job is None:
        raise RuntimeError("generate() runs only as an RQ job")
    if job.id not in ctx.begun:
        begin(job.id, payload)
    try:
        return ctx.begun.pop(job.id).result()
    finally:
        ctx.announced.pop(job.id, None)
        ctx.active.finish(job.id)
        ctx.publisher.forget(job.id)


class _Relay:
    """Turns batches of the engine's lines into published Tokens events; remembers how it ended."""

    def __init__(self, job_id: str, publish: Callable[[bytes], None], parser: AnswerParser) -> None:
        self.job_id = job_id
        self.publish = publish
        self.parser = parser
        self.relayed = 0
        self.thinking = 0
        self.first_token_at: float | None = None
        self.final: Final | None = None

    def on_lines(self, lines: list[bytes]) -> bool:
        """Publish the tokens in `lines`; True once the answer is complete. Raises on an error line."""
        parsed = self.parser.feed(lines)
        texts = parsed.texts
        if texts and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        for start in range(0, len(texts), TOKENS_PER_EVENT):
            group = texts[start : start + TOKENS_PER_EVENT]
            self.publish(encode_tokens(self.job_id, json.dumps("".join(group), ensure_ascii=False), len(group)))
        self.relayed += len(texts)
        if parsed.tool_calls:
            self.publish(encode(self.job_id, ToolCalls(json.dumps(parsed.tool_calls, ensure_ascii=False))))
        self.thinking += parsed.thinking
        if parsed.error is not None:
            raise parsed.error
        self.final = parsed.final
        return self.final is not None

    def on_end(self) -> None:
        """The stream closed cleanly before a line completed it: the parser says whether that is an end."""
        self.final = self.parser.end()


async def _relay(job_id: str, spec: GenerateJob, handle: Handle, announced: threading.Event) -> dict[str, Any]:
    ctx = context.current()
    loop = asyncio.get_running_loop()
    timer: list[asyncio.TimerHandle] = []
    announcing: list[bool] = []

    def announce() -> None:
        # Once per job; `announced` is set when the event is in Redis (the start bookkeeping waits).
        if not announcing:
            announcing.append(True)
            started = encode(job_id, Started(ctx.worker_name, ctx.gpu_label))
            ctx.publisher.publish(job_id, spec.reply_to, started, sent=announced)

    def publish(message: bytes) -> None:
        announce()  # Started comes first, whatever follows
        ctx.publisher.publish(job_id, spec.reply_to, message)

    def on_sent() -> None:
        # The engine works on the prompt while the web hears that the job started: with the first
        # tokens if they come within STARTED_DELAY_S (one publish for both), else on its own then.
        timer.append(loop.call_later(STARTED_DELAY_S, announce))

    try:
        return await _follow(job_id, spec, handle, publish, on_sent)
    finally:
        announcing.append(True)  # a job that ended unannounced stays so (its timer must not fire now)
        for pending in timer:
            pending.cancel()
        announced.set()


async def _follow(
    job_id: str, spec: GenerateJob, handle: Handle, publish: Callable[[bytes], None], on_sent: Callable[[], None]
) -> dict[str, Any]:
    """Stream the job's answer from the engine, publishing its events; its summary for RQ.

    A generation lost after it started ends with a Failed event whose reason is one of
    CONTINUABLE_REASONS (never a Done: a non-streaming client would read half an answer as a
    success); the web decides whether to continue it elsewhere.
    """
    ctx = context.current()
    began = time.monotonic()
    relay = _Relay(job_id, publish, ctx.backend.parser())
    try:
        stream = ctx.backend.stream(spec, on_lines=relay.on_lines, on_end=relay.on_end)
        handle.attach(stream)
        await stream.run(on_sent=on_sent)
        # No `done` line after a clean end: Ollama stopped a repetition loop; a normal finish.
        final = await ctx.backend.usage(spec, relay.final or Final.clean_end(relay.relayed))
    except QueueUnavailable:
        raise  # the client cannot be told anything; the web ends its request on silence
    except (BackendError, JobCancelled) as exc:
        if handle.cancel_reason is not None:
            if handle.cancel_reason == SHUTDOWN:
                publish(encode(job_id, Failed(f"{SHUTDOWN}; retry on another orchestrator", 500, "shutdown")))
            elif handle.cancel_reason != CLIENT_GONE:
                publish(encode(job_id, Failed(f"the job was {handle.cancel_reason}", 500, "cancelled")))
            raise JobCancelled(handle.cancel_reason) from None
        assert isinstance(exc, BackendError)
        if exc.reason in CONTINUABLE_REASONS:
            exc = await ctx.backend.explain(spec, exc, relay.relayed)
        if exc.reason in CONTINUABLE_REASONS:
            logger.warning("job %s: generation lost after %d token(s) (%s): %s", job_id, relay.relayed, exc.reason,
                           exc.msg)  # fmt: skip
        publish(encode(job_id, Failed(exc.msg, exc.status, exc.reason)))
        raise exc from None
    if not relay.relayed and relay.thinking and final.finish_reason == "length":
        # As OpenAI's reasoning models answer: a 200 with no content, finish_reason "length", the
        # reasoning counted in the usage (a non-200 would cost the orchestrator its place).
        logger.info("job %s: the model spent all %d max_tokens reasoning; the answer is empty", job_id,
                    spec.max_tokens)  # fmt: skip
    publish(
        encode(
            job_id,
            Done(
                final.finish_reason,
                final.prompt_eval_count,
                final.eval_count,
                load_ms=final.load_ns / 1e6,
                eval_ms=final.eval_ns / 1e6,
            ),
        )
    )
    ended = time.monotonic()
    return {
        "finish_reason": final.finish_reason,
        "prompt_tokens": final.prompt_eval_count,
        "completion_tokens": final.eval_count,
        "relayed_tokens": relay.relayed,
        "continuation": spec.attempt if spec.continue_final else 0,
        "ttft_ms": round((relay.first_token_at - began) * 1000, 1) if relay.first_token_at else None,
        "duration_ms": round((ended - began) * 1000, 1),
    }
