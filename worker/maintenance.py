"""Registry upkeep off the thread that takes jobs: RQ's maintenance, canceled-registry pruning, prompts.

RQ's worker runs its maintenance (registry cleanup, the intermediate queue's stuck jobs) between
dequeues, so a slow step there (a large registry, a slow Redis) stalls job taking. Here it runs
on a thread of its own, supervised: every MAINTENANCE_INTERVAL_S RQ's own `run_maintenance_tasks`
(RQ's lock lets one worker per queue do it), then the canceled registries RQ never trims; every
SWEEP_S the prompt sweep, which one worker of the whole fleet does at a time.
"""

from __future__ import annotations

import logging
import threading

from redis import Redis
from rq.registry import CanceledJobRegistry
from rq.worker import BaseWorker

from common.guard import supervised
from common.jobs import RESULT_TTL_S
from worker.clock import RedisClock
from worker.retention import PromptRetention

logger = logging.getLogger(__name__)

SWEEP_S = 5.0


def prune_canceled(worker: BaseWorker, now: float) -> None:
    """RQ never trims canceled registries; drop entries older than the job records they name."""
    redis: Redis = worker.connection
    for queue in worker.queues:
        registry = CanceledJobRegistry(queue.name, connection=redis)
        redis.zremrangebyscore(registry.key, 0, now - RESULT_TTL_S)


class Maintenance:
    """A daemon thread doing the worker's Redis upkeep; never on the path of a job."""

    def __init__(self, worker: BaseWorker, clock: RedisClock, prompts: PromptRetention | None) -> None:
        self.worker = worker
        self.clock = clock
        self.prompts = prompts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=supervised("maintenance", self._run, stop=self._stop),
                                        name="maintenance", daemon=True)  # fmt: skip

    def start(self) -> None:
        """Start the upkeep in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop it (a step under way is not waited for long)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=1.0)

    def run_once(self) -> None:
        """One round: RQ's maintenance when due, then the prompt sweep."""
        worker = self.worker
        if worker.should_run_maintenance_tasks:
            worker.run_maintenance_tasks()
            prune_canceled(worker, self.clock.now())
        if self.prompts is not None:
            self.prompts.sweep_exclusively(worker.connection, self.clock.now())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # Redis away, or RQ's cleanup failed: next round
                logger.warning("maintenance: %s: %s", type(exc).__name__, exc)
            if self._stop.wait(SWEEP_S):
                return
