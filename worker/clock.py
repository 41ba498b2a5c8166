"""Redis's clock, as the worker keeps it: ages and registry scores use Redis TIME, not the host's clock.

Hosts' clocks differ. The web counts running jobs against Redis TIME (the StartedJobRegistry's
scores are expiry times) and stamps jobs with it, so a worker whose own clock is off would
write scores that look expired, or judge fresh jobs stale. The worker measures the offset of
Redis TIME from its own clock at every take (the take script returns TIME) and at every
heartbeat, and reads the time through it.
"""

from __future__ import annotations

import threading
import time

from redis import Redis


class RedisClock:
    """The time on Redis's clock: this host's clock plus the offset last measured."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: int, microseconds: int) -> None:
        """Note a Redis TIME reply just received."""
        offset = seconds + microseconds / 1e6 - time.time()
        with self._lock:
            self._offset = offset

    def measure(self, redis: Redis) -> None:
        """Ask Redis for its TIME now."""
        seconds, microseconds = redis.time()
        self.observe(int(seconds), int(microseconds))

    def now(self) -> float:
        """Seconds since the epoch, on Redis's clock."""
        with self._lock:
            return time.time() + self._offset
