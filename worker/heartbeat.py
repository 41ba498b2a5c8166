"""The worker's pulse: pings for running jobs, its fleet announcement, RQ heartbeats, warm-model order."""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

from common import fleet, keys
from common.events import Ping, encode
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

# The web counts a worker lost after WORKER_SILENCE_S without an event; pings come well inside it.
PING_S = 1.0
RQ_BEAT_S = 5.0
LOADED_POLL_S = 2.0


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
        self._lock = threading.Lock()

    def start(self) -> None:
        """Announce now and keep announcing in the background."""
        self.announce()
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread.ident is not None:  # started (not when stopped while waiting for Redis)
            self._thread.join(timeout=PING_S * 3)

    def announce(self) -> None:
        """Refresh the fleet record now (GPU figures, busy slots, state)."""
        with self._lock:
            gpu = self.gpu.read()
            if gpu is not None:
                self.record.gpu = gpu
            self.record.busy = self.worker.busy if self.worker else 0
            self.record.restarts = dict(RESTARTS)
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
            if self.worker is not None and self.schedule is None and now >= next_poll:
                next_poll = now + LOADED_POLL_S
                self.refresh_routing()

    def _ping(self) -> None:
        for handle in self.active.snapshot():
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
