"""The web's job flow run in the test process: a Runtime on the production Redis client, a request,
and a worker record that makes room for it, so a test can drive one JobRelay and watch Redis."""

from __future__ import annotations

import json
import socket
from typing import Any

from redis import Redis

from common import keys
from common.events import Event, encode, sequenced
from common.fleet import READY, GpuInfo, ModelFit, WorkerRecord, announce
from common.models import parse_models
from common.redis_client import make_redis
from common.settings import Settings
from web.client import ClientWatch
from web.runtime import Runtime
from web.validation import LLMRequest, parse_llm_request

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QUEUE_KEY = f"rq:queue:{keys.queue_name(LLAMA)}"


def runtime(redis_url: str, **settings: Any) -> Runtime:
    """A web process's Runtime on `redis_url`, with the client the web makes (its retry included)."""
    made = Settings(redis_url=redis_url, models=parse_models(LLAMA), **settings)
    return Runtime(made, make_redis(redis_url, max_connections=16))


def ready_worker(redis: Redis, name: str = "w", slots: int = 2, *, continuation: bool = False) -> WorkerRecord:
    """Announce a READY worker serving LLAMA (no process behind it: its jobs stay queued); with
    `continuation`, one whose engine can continue an answer of it."""
    record = ready_record(name, slots, continuation=continuation)
    announce(redis, record)
    return record


def ready_record(name: str = "w", slots: int = 2, *, continuation: bool = False) -> WorkerRecord:
    """The fleet record of a READY worker serving LLAMA."""
    gpu = GpuInfo(0, f"GPU-{name}", "RTX", 8 << 30, 8 << 30, 8, 6)
    fit = ModelFit(tag="llama3.1:8b", installed=True, fits=True, need_bytes=1, continuation=continuation)
    return WorkerRecord(name, "h", 1, "0", "u", state=READY, slots=slots, gpu=gpu, models={LLAMA: fit},
                        vram_budget=2)  # fmt: skip


def request(rt: Runtime, prompt: str, **fields: Any) -> LLMRequest:
    """A validated /llm request for LLAMA."""
    body = {"model": LLAMA, "messages": [{"role": "user", "content": prompt}], "max_tokens": 50, **fields}
    return parse_llm_request(json.dumps(body).encode(), rt.settings, rt.settings.default_model)


class Client:
    """An HTTP client's connection as the web watches it: `leave()` closes the client's end."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.watch = ClientWatch(self.ours, interval=0.0)

    def leave(self) -> None:
        """The client closes its connection."""
        self.theirs.close()

    def close(self) -> None:
        """Close both ends."""
        self.ours.close()
        self.theirs.close()


def send_event(redis: Redis, rt: Runtime, job_id: str, seq: int, event: Event) -> None:
    """Publish one numbered event of a job to the web as worker/publisher.py's _SEND_SCRIPT does:
    appended to the job's backlog, then published on the web's channel."""
    message = sequenced(encode(job_id, event), seq)
    redis.xadd(keys.job_backlog(job_id), {"m": message}, id=f"{seq}-0")
    redis.publish(rt.hub.channel, message)
