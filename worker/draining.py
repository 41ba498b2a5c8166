"""How many jobs run now and how many may, and how a stopping worker drains them.

The take loop waits here for a free slot; each job thread gives its slot back here; a stop
request (SIGTERM/SIGINT, RQ's shutdown command) stops the taking and the drain gives running
jobs SHUTDOWN_GRACE_S before cancelling them (their clients get an error end).
"""

from __future__ import annotations

import logging
import threading

from worker.active import ActiveJobs
from worker.jobs import SHUTDOWN

logger = logging.getLogger(__name__)

# After the grace period, cancelled jobs get this long to wind down before the worker exits.
CANCEL_WAIT_S = 5.0


class Slots:
    """The worker's slots: `slots` at most, `max_running` now (the model schedule may lower it)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.max_running = slots
        self.running = 0
        self.stop = threading.Event()
        self._changed = threading.Condition()

    def limit(self, slots: int | None) -> None:
        """Run at most `slots` jobs at once (None: every slot)."""
        self.max_running = min(self.slots, slots) if slots else self.slots

    def wait_for_room(self, timeout: float) -> int:
        """Free slots once there is one, a stop was requested, or `timeout` passed (0 then)."""
        with self._changed:
            self._changed.wait_for(lambda: self.running < self.max_running or self.stop.is_set(), timeout)
            if self.stop.is_set():
                return 0
            return max(0, self.max_running - self.running)

    def take(self, count: int) -> None:
        """`count` jobs start."""
        with self._changed:
            self.running += count

    def release(self) -> bool:
        """One job ended; True if none runs any more."""
        with self._changed:
            self.running -= 1
            self._changed.notify_all()
            return self.running == 0

    def request_stop(self) -> None:
        """Take no more jobs."""
        self.stop.set()
        with self._changed:
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs; False if some still do after `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: self.running == 0, timeout)


def drain(slots: Slots, active: ActiveJobs, grace_s: float, name: str) -> None:
    """Give running jobs `grace_s` to finish, then cancel them and wait CANCEL_WAIT_S more."""
    if slots.running:
        logger.info("worker %s: waiting up to %.0f s for %d running job(s)", name, grace_s, slots.running)
    if not slots.wait_idle(grace_s):
        logger.warning("worker %s: cancelling %d job(s) still running", name, slots.running)
        active.cancel_all(SHUTDOWN)
        slots.wait_idle(CANCEL_WAIT_S)
