"""The worker's pulse: pings for running jobs, its fleet announcement, RQ heartbeats, warm-model order."""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

from common import fleet, keys
from common.errors import BackendError
from common.events import Ping, encode
from common.fleet import WorkerRecord
from worker.active import ActiveJobs
from worker.gpu import GpuMonitor
from worker.ollama_admin import OllamaAdmin, normalize_tag
from worker.slots import SlotWorker

logger = logging.getLogger(__name__)

# The web counts a worker lost after WORKER_SILENCE_S without an event; pings come well inside it.
PING_S = 1.0
RQ_BEAT_S = 5.0
LOADED_POLL_S = 5.0


class Heartbeat:
    """A daemon thread that keeps this worker visible and its running jobs alive to the web."""

    def __init__(
        self, redis: Redis, record: WorkerRecord, gpu: GpuMonitor, active: ActiveJobs, admin: OllamaAdmin
    ) -> None:
        self.redis = redis
        self.record = record
        self.gpu = gpu
        self.active = active
        self.admin = admin
        self.worker: SlotWorker | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._lock = threading.Lock()
        self._offloaded_warned: set[str] = set()

    def start(self) -> None:
        """Announce now and keep announcing in the background."""
        self.announce()
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(timeout=PING_S * 3)

    def announce(self) -> None:
        """Refresh the fleet record now (GPU figures, busy slots, state)."""
        with self._lock:
            gpu = self.gpu.read()
            if gpu is not None:
                self.record.gpu = gpu
            self.record.busy = self.worker.busy if self.worker else 0
            fleet.announce(self.redis, self.record)

    def _run(self) -> None:
        next_announce = next_beat = next_poll = 0.0
        while not self._stop.wait(PING_S):
            now = time.monotonic()
            try:
                self._ping()
                if now >= next_announce:
                    self.announce()
                    next_announce = now + fleet.HEARTBEAT_S
                if self.worker is not None and now >= next_beat:
                    self.worker.beat()
                    next_beat = now + RQ_BEAT_S
            except (RedisError, OSError) as exc:
                logger.warning("heartbeat: Redis unavailable: %s", exc)
            if self.worker is not None and now >= next_poll:
                next_poll = now + LOADED_POLL_S
                self.poll_loaded()

    def _ping(self) -> None:
        handles = self.active.snapshot()
        if not handles:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for handle in handles:
                pipe.publish(handle.reply_to, encode(handle.job_id, Ping()))
            pipe.execute()

    def poll_loaded(self) -> None:
        """Note which models Ollama holds, and listen to their queues first (no reload for them)."""
        try:
            loaded = self.admin.ps()
        except BackendError as exc:
            logger.warning("heartbeat: cannot read Ollama's loaded models: %s", exc.msg)
            return
        warm: list[str] = []
        cold: list[str] = []
        for model_id, fit in self.record.models.items():
            tag = normalize_tag(fit.tag)
            fit.loaded = tag in loaded
            (warm if fit.loaded else cold).append(keys.queue_name(model_id))
            if fit.loaded and loaded[tag].size_vram < loaded[tag].size and tag not in self._offloaded_warned:
                self._offloaded_warned.add(tag)
                logger.warning(
                    "%s is only partly on the GPU (%.2f of %.2f GiB in VRAM): it runs several times slower",
                    fit.tag,
                    loaded[tag].size_vram / 2**30,
                    loaded[tag].size / 2**30,
                )
        if self.worker is not None:
            self.worker.set_queue_order(warm + cold)
