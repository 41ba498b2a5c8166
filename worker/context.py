"""What RQ job functions in a worker process need: its settings, Redis and running jobs."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from common.settings import Settings
from worker.active import ActiveJobs
from worker.ollama_stream import StreamLoop
from worker.publisher import Publisher


@dataclass
class WorkerContext:
    """The worker process's shared state, installed once by the entry point."""

    settings: Settings
    redis: Redis
    worker_name: str
    gpu_label: str
    active: ActiveJobs
    publisher: Publisher
    streams: StreamLoop


_current: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    """Make `context` the one job functions of this process use."""
    global _current
    _current = context


def current() -> WorkerContext:
    """The installed context; RuntimeError outside a worker process."""
    if _current is None:
        raise RuntimeError("no worker context installed: jobs run only inside `python -m worker`")
    return _current
