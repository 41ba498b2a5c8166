"""Place a job as the web does and read its events as the web does: for worker-level continuation tests."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace

from redis import Redis

from common import keys
from common.events import TERMINAL, Done, Event, Failed, Started, Tokens, decode, split_batch
from common.jobs import GenerateJob
from common.models import parse_models
from common.settings import Settings
from web import admission
from web.runtime import Runtime


@dataclass
class Outcome:
    """What a job published: its text, and how it ended."""

    texts: list[str] = field(default_factory=list)
    end: Done | Failed | None = None
    started: bool = False

    @property
    def text(self) -> str:
        """The generated text, as the client would get it."""
        return "".join(self.texts)


def generate_job(model_id: str, tag: str, prompt: str, *, max_tokens: int = 64, stream: bool = True) -> GenerateJob:
    """An original job as the web builds it for a one-message request (greedy)."""
    return GenerateJob(reply_to="", model_id=model_id, tag=tag, messages=[{"role": "user", "content": prompt}],
                       max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=-1, stream=stream)  # fmt: skip


def continuation_of(job: GenerateJob, sent: str, sent_tokens: int, attempt: int = 1) -> GenerateJob:
    """The continuation job the web places for `job` after the client got `sent` (`sent_tokens` tokens)."""
    return replace(job, messages=[*job.messages, {"role": "assistant", "content": sent}],
                   max_tokens=job.max_tokens - sent_tokens, continue_final=True, sent_tokens=sent_tokens,
                   attempt=attempt)  # fmt: skip


def run_job(redis: Redis, models: str, job: GenerateJob, timeout: float = 30.0) -> Outcome:
    """Place `job` on its model's queue as the web does, subscribed to its reply channel; wait for its end."""
    channel = keys.reply_channel(f"test-{uuid.uuid4().hex[:8]}")
    job = replace(job, reply_to=channel)
    rt = Runtime(Settings(models=parse_models(models, served_as_id=True)), redis)
    outcome = Outcome()
    pubsub = redis.pubsub()
    pubsub.subscribe(channel)
    try:
        admission.place(rt, rt.queue(job.model_id), uuid.uuid4().hex, job, admission.Room(admission.NO_LIMIT, 1, 0))
        deadline = time.monotonic() + timeout
        while outcome.end is None:
            assert time.monotonic() < deadline, f"no end within {timeout} s: {outcome}"
            message = pubsub.get_message(timeout=0.5)
            if message is None or message["type"] != "message":
                continue
            for raw in split_batch(message["data"]):
                _, event = decode(raw)
                _take(outcome, event)
    finally:
        pubsub.close()
    return outcome


def _take(outcome: Outcome, event: Event) -> None:
    if isinstance(event, Started):
        outcome.started = True
    elif isinstance(event, Tokens):
        outcome.texts.append(event.text)
    elif isinstance(event, TERMINAL):
        assert isinstance(event, Done | Failed)
        outcome.end = event
