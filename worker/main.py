"""`python -m worker`: one RQ worker bound to one GPU and that GPU's engine (Ollama or OpenAI-compatible)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType

from common import fleet, heap, keys
from common.acks import Acks
from common.errors import ConfigError
from common.fleet import READY, STOPPING, WorkerRecord
from common.logs import configure_logging
from common.redis_client import make_redis
from common.settings import Settings
from common.version import __version__
from worker import context, jobs
from worker.active import ActiveJobs
from worker.engines import make_backend
from worker.gpu import GpuMonitor
from worker.heartbeat import Heartbeat
from worker.http import StreamLoop
from worker.ollama_backend import OllamaBackend
from worker.provision import all_stay_loaded, vram_budget, warm
from worker.publisher import Publisher
from worker.retention import PromptRetention
from worker.schedule import ModelSchedule
from worker.slots import COMMAND_TIMEOUT_S, SlotWorker

logger = logging.getLogger("worker")


def main() -> int:
    """Run the worker until SIGTERM/SIGINT; exit status 2 for a configuration error."""
    try:
        settings = Settings.from_env(os.environ)
        if settings.backend == "openai" and settings.openai_base_url is None:
            raise ConfigError("OPENAI_BASE_URL: required with BACKEND=openai (e.g. http://127.0.0.1:8080/v1)")
    except ConfigError as exc:
        print(f"configuration error: {exc.msg}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if settings.backend == "ollama" and settings.openai_base_url:
        logger.warning("OPENAI_BASE_URL is set but BACKEND is ollama: it is ignored (set BACKEND=openai to use it)")
    run(settings)
    return 0


def run(settings: Settings) -> None:
    """Get this worker's engine ready, announce it to the fleet, then serve jobs until stopped."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("stop requested (signal %d) while starting", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Connections: one per slot (job bookkeeping), plus the loop, publisher, heartbeat, commands.
    redis = make_redis(settings.redis_target, max_connections=settings.slots + 8, command_timeout_s=COMMAND_TIMEOUT_S)
    gpu = GpuMonitor(settings.gpu_index)
    info = gpu.read()
    budget = vram_budget(settings, info.memory_total if info else None)
    host = socket.gethostname()
    label = f"gpu{settings.gpu_index}" if info or settings.vram_mb else "cpu"
    name = f"{host}.{label}.{os.getpid()}"
    if info:
        logger.info("GPU %d: %s, %.1f GiB (%s)", info.index, info.name, info.memory_total / 2**30, info.uuid)
    elif settings.vram_mb:
        logger.info("no GPU through NVML (%s); VRAM_MB=%d is taken as this GPU's memory", gpu.error, settings.vram_mb)
    else:
        logger.warning("no GPU through NVML (%s) and no VRAM_MB: running as a CPU worker, no VRAM bound", gpu.error)

    streams = StreamLoop()
    backend = make_backend(settings, streams)
    record = WorkerRecord(
        name=name,
        host=host,
        pid=os.getpid(),
        version=__version__,
        ollama_url=settings.ollama_url if backend.kind == "ollama" else "",
        slots=settings.slots,
        gpu=info,
        vram_budget=budget,
        backend=backend.kind,
        engine_url=backend.url,
        engine_note=backend.note(),
    )
    active = ActiveJobs()
    publisher = Publisher(settings.redis_target, streams.loop)
    context.install(
        context.WorkerContext(settings, redis, name, label, active, publisher, streams, backend, models=record.models)
    )
    heartbeat = Heartbeat(redis, record, gpu, active, backend, publisher)
    _until_redis(heartbeat, stop)
    try:
        if not backend.wait_ready(stop):
            return
        backend.assess(budget, stop, record.models)
        if stop.is_set():
            return
        heartbeat.announce()
        served = [m.model_id for m in settings.models if record.can_serve(m.model_id)]
        if not served:
            logger.error("this worker can serve none of the configured models; it stays idle (see above why)")
            record.state = READY
            heartbeat.announce()
            stop.wait()
            return
        worker = SlotWorker(
            [keys.queue_name(m) for m in served],
            connection=redis,
            name=name,
            slots=settings.slots,
            active=active,
            grace_s=settings.shutdown_grace_s,
            max_age_s=settings.queue_timeout_s,
            on_taken=jobs.begin_all,
            prompts=PromptRetention(redis, settings.prompt_retention_s, settings.drop_prompts_at_start),
            acks=Acks(settings.wait_replicas, settings.redis_wait_ms),
        )
        if not isinstance(backend, OllamaBackend):
            # An OpenAI-compatible engine holds its own models: listen on every served queue.
            heartbeat.worker = worker
            heartbeat.refresh_routing()
        # Several models that all stay loaded: listen on every queue. Otherwise (one model, or one
        # at a time) the schedule owns the GPU's model: it reloads it if Ollama drops it, and switches.
        elif len(served) > 1 and all_stay_loaded(settings, record.models, budget):
            admin = backend.admin
            warm(admin, settings, record.models, served)
            heartbeat.worker = worker
            heartbeat.refresh_routing()
        else:
            # One model at a time on this GPU: the worker loads and switches models itself.
            schedule = ModelSchedule(redis, record, backend.admin, settings, stop)
            if len(served) > 1:
                logger.info("this GPU holds one model at a time; switching between: %s", ", ".join(served))
            schedule.load(served[0])
            heartbeat.schedule = schedule
            heartbeat.worker = worker
            schedule.start(worker)
        record.state = READY
        heartbeat.announce()
        if stop.is_set():
            return
        heap.settle()
        worker.work_until_stopped()
    finally:
        stop.set()  # ends the model schedule
        record.state = STOPPING
        heartbeat.stop()
        publisher.flush()  # the last jobs' final events
        streams.stop()
        try:
            fleet.withdraw(redis, name)
        except Exception as exc:
            logger.warning("could not withdraw from the fleet registry: %s", exc)
        logger.info("worker %s stopped", name)


def _until_redis(heartbeat: Heartbeat, stop: threading.Event) -> None:
    """Start the heartbeat once Redis answers (waits, logging once, while it does not)."""
    delay, warned = 0.5, False
    while not stop.is_set():
        try:
            heartbeat.start()
            return
        except Exception as exc:
            if not warned:
                logger.warning("waiting for Redis: %s", exc)
                warned = True
        stop.wait(delay)
        delay = min(delay * 2, 5.0)
