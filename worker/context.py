"""What RQ job functions in a worker process need: its settings, Redis and running jobs."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from common.fleet import ModelFit
from common.settings import Settings
from worker.active import ActiveJobs
from worker.backend import Backend
from worker.http import StreamLoop
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
    backend: Backend
    # Jobs whose engine call already started (worker.jobs.begin), by id.
    begun: dict[str, Future[dict[str, Any]]] = field(default_factory=dict)
    # Set once a begun job's Started event is in Redis, or it ended (worker.jobs.begin_all waits on it).
    announced: dict[str, threading.Event] = field(default_factory=dict)
    # What provisioning learnt about each configured model (its family, context), by model id.
    models: dict[str, ModelFit] = field(default_factory=dict)


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
