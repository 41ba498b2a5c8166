"""The worker's pulse: pings for running jobs, its fleet announcement, RQ heartbeats, warm-model order.

Two threads. The pulse (pings, the fleet record, RQ's heartbeats) speaks only to Redis and
never waits on anything else: the web counts a worker lost after WORKER_SILENCE_S without a
ping. The observer does what can be slow (NVML reads, Ollama's /api/ps, the listening order)
and leaves its findings for the pulse to publish.
"""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

from common import fleet, keys
from common.events import PING_S, Ping, encode
from common.fleet import WorkerRecord
from common.guard import RESTARTS, supervised
from worker.active import ActiveJobs
from worker.backend import Backend
from worker.gpu import GpuMonitor
from worker.publisher import Publisher
from worker.routing import listen_order
from worker.schedule import ModelSchedule
from worker.slots import SlotWorker

logger = logging.getLogger(__name__)

# The web counts a worker lost after WORKER_SILENCE_S without an event; pings (every PING_S, from
# common.events: the web reads it too) come well inside it.
RQ_BEAT_S = 5.0
LOADED_POLL_S = 2.0
NOBODY_READS = "nobody reads its events (the web process that placed it is gone)"


class Heartbeat:
    """A daemon thread that keeps this worker visible and its running jobs alive to the web."""

    def __init__(
        self,
        redis: Redis,
        record: WorkerRecord,
        gpu: GpuMonitor,
        active: ActiveJobs,
        backend: Backend,
        publisher: Publisher,
    ) -> None:
        self.redis = redis
        self.publisher = publisher
        self.record = record
        self.gpu = gpu
        self.active = active
        self.backend = backend
        self.worker: SlotWorker | None = None
        # Set when the GPU holds one model at a time: the schedule then decides what it listens on.
        self.schedule: ModelSchedule | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=supervised("heartbeat", self._run, stop=self._stop), name="heartbeat",
                                        daemon=True)  # fmt: skip
        self._observer = threading.Thread(target=supervised("observer", self._observe, stop=self._stop),
                                          name="observer", daemon=True)  # fmt: skip
        self._lock = threading.Lock()

    def start(self) -> None:
        """Announce now and keep announcing in the background."""
        self.announce()
        self._thread.start()
        self._observer.start()

    def stop(self) -> None:
        """Stop the threads (the observer may be inside a slow call: it is not waited for long)."""
        self._stop.set()
        for thread in (self._thread, self._observer):
            if thread.ident is not None:  # started (not when stopped while waiting for Redis)
                thread.join(timeout=PING_S * 3)

    def announce(self) -> None:
        """Refresh the fleet record now (last GPU figures read, busy slots, state); Redis only."""
        with self._lock:
            self.record.busy = self.worker.busy if self.worker else 0
            self.record.command_channel_up = self.worker.channel.healthy if self.worker else False
            self.record.restarts = dict(RESTARTS)
            fleet.announce(self.redis, self.record)

    def read_gpu(self) -> None:
        """Read the GPU's figures (NVML: may be slow) for the next announcement."""
        gpu = self.gpu.read()
        if gpu is not None:
            with self._lock:
                self.record.gpu = gpu

    def _run(self) -> None:
        next_announce = next_beat = 0.0
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

    def _observe(self) -> None:
        while not self._stop.wait(LOADED_POLL_S):
            try:
                self.read_gpu()
                if self.worker is not None and self.schedule is None:
                    self.refresh_routing()
            except Exception:
                logger.exception("observer: reading the GPU or Ollama's state failed")

    def _ping(self) -> None:
        now = time.monotonic()
        for handle in self.active.snapshot():
            if self.publisher.readers.abandoned(handle.reply_to, now):
                if handle.cancel_reason is None:
                    logger.warning("job %s: nobody reads its events any more; stopping it", handle.job_id)
                    handle.cancel(NOBODY_READS)
                continue
            self.publisher.publish_threadsafe(handle.reply_to, encode(handle.job_id, Ping()))

    def refresh_routing(self) -> None:
        """Note which models the engine holds (where it may be asked), then listen to warm queues first."""
        if self.backend.polls:
            self.backend.refresh_loaded(self.record.models)
        worker = self.worker
        if worker is None:
            return
        try:
            others = [r for r in fleet.read_fleet(self.redis) if r.name != self.record.name]
            with self.redis.pipeline(transaction=False) as pipe:
                for queue in worker.queues:
                    pipe.llen(queue.key)
                lengths = pipe.execute()
        except (RedisError, OSError) as exc:
            logger.warning("heartbeat: cannot read the fleet: %s", exc)
            return
        by_queue = dict(zip([q.name for q in worker.queues], lengths, strict=True))
        waiting = {m: by_queue.get(keys.queue_name(m), 0) for m in self.record.models}
        order = listen_order(self.record, others, waiting)
        if order != self.record.listening:
            logger.info("listening on: %s", ", ".join(order) or "nothing (every model is warm elsewhere)")
        self.record.listening = order
        worker.set_queue_order([keys.queue_name(m) for m in order])
