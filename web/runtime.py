"""The per-process state of the web front end, kept in `app.extensions`."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.serializers import JSONSerializer

from common import keys
from common.acks import Acks
from common.fleet import WorkerRecord, read_fleet
from common.outage import OUTAGE_S
from common.settings import Settings
from web.hub import EventHub
from web.placement import Placer

EXTENSION = "llm_runner"
FLEET_CACHE_S = 1.0
# Requests placing their job at once (web.admission.gate). A burst of hundreds all in flight
# together would finish together, late (each yields at its Redis round trip to all the others); a
# few at a time, the first jobs reach the workers while the rest are still being placed.
ADMISSION_SLOTS = 8


class FleetCache:
    """The fleet registry as last read, refreshed at most every FLEET_CACHE_S."""

    def __init__(self, redis: Redis, max_age: float = FLEET_CACHE_S) -> None:
        self._redis = redis
        self._max_age = max_age
        self._records: list[WorkerRecord] = []
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        self._reading: Future[list[WorkerRecord]] | None = None

    def view(self, *, fresh: bool = False) -> list[WorkerRecord]:
        """Live workers (re-read if `fresh`); raises RedisError if Redis cannot be read.

        One read at a time: callers that arrive while one is under way share its outcome, so a
        stuck Redis costs each of them one read's timeout, not one per caller ahead of it.
        """
        if not fresh and time.monotonic() - self._read_at < self._max_age:
            return self._records
        with self._lock:
            reading, lead = self._reading, self._reading is None
            if reading is None:
                reading = self._reading = Future()
        if lead:
            try:
                self._records = read_fleet(self._redis)
                self._read_at = time.monotonic()
                reading.set_result(self._records)
            except BaseException as exc:
                reading.set_exception(exc)
            finally:
                with self._lock:
                    self._reading = None
        return reading.result()

    def view_or_none(self, *, fresh: bool = False) -> list[WorkerRecord] | None:
        """Like view(), but None while Redis is unreachable."""
        try:
            return self.view(fresh=fresh)
        except (RedisError, OSError):
            return None


class Runtime:
    """What every request handler of this process shares: settings, Redis, the event hub."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.web_id = uuid.uuid4().hex[:12]
        self.hub = EventHub(redis, self.web_id)
        self.fleet = FleetCache(redis)
        self.draining_since: float | None = None
        self.admission = threading.BoundedSemaphore(ADMISSION_SLOTS)
        # Placements wait for a replica (REDIS_WAIT_REPLICAS), so a failover cannot lose them.
        self.acks = Acks(settings.wait_replicas, settings.redis_wait_ms)
        self.placer = Placer(redis, self.acks)
        # How long a new request waits for Redis to come back: through Sentinel, a failover's length.
        self.failover_wait_s = OUTAGE_S if settings.redis_sentinels else 0.0
        self._queues: dict[str, Queue] = {}

    def queue(self, model_id: str) -> Queue:
        """The RQ queue of a model (JSON-serialised jobs)."""
        queue = self._queues.get(model_id)
        if queue is None:
            queue = Queue(keys.queue_name(model_id), connection=self.redis, serializer=JSONSerializer)
            self._queues[model_id] = queue
        return queue

    def drain(self) -> None:
        """Begin a graceful stop: open streams get SHUTDOWN_GRACE_S to finish, then are ended."""
        if self.draining_since is None:
            self.draining_since = time.monotonic()


def runtime(app: Flask | None = None) -> Runtime:
    """The Runtime of the current (or given) app."""
    rt: Runtime = (app or current_app).extensions[EXTENSION]
    return rt
