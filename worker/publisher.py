"""One thread per worker process publishes every job's events, batching what piles up.

A job thread hands its event over and goes back to Ollama at once. While one PUBLISH round
trip is under way, the next events wait; they then leave together, one PUBLISH per web process
(its channel) holding several events separated by newlines (the encoding has none inside), so
a burst of tokens from hundreds of streams costs a handful of Redis commands, not one each.
"""

from __future__ import annotations

import logging
import threading

from redis import Redis
from redis.exceptions import RedisError

from common.errors import QueueUnavailable

logger = logging.getLogger(__name__)

SEPARATOR = b"\n"


class Publisher:
    """Queues events per channel and publishes them from one background thread."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: dict[str, list[bytes]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._lost: dict[str, str] = {}  # job id → why its events were lost
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def publish(self, job_id: str, channel: str, message: bytes) -> None:
        """Queue one event of `job_id` for `channel`; QueueUnavailable if earlier ones were lost."""
        lost = self._lost.get(job_id)
        if lost is not None:
            raise QueueUnavailable(f"events of this job could not be published: {lost}")
        with self._cond:
            queued = self._pending.get(channel)
            if queued is None:
                self._pending[channel] = [message]
            else:
                queued.append(message)
            self._cond.notify()

    def forget(self, job_id: str) -> None:
        """Drop what is known about a finished job."""
        self._lost.pop(job_id, None)

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until everything queued so far was published (tests and shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def stop(self) -> None:
        """Publish what is queued, then stop the thread."""
        self.flush()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                if self._stopping and not self._pending:
                    return
                batch, self._pending = self._pending, {}
            try:
                with self._redis.pipeline(transaction=False) as pipe:
                    for channel, messages in batch.items():
                        pipe.publish(channel, SEPARATOR.join(messages))
                    pipe.execute()
            except (RedisError, OSError) as exc:
                # Those jobs' clients miss events: each job learns it at its next publish and ends.
                logger.error("publishing job events failed: %s", exc)
                for messages in batch.values():
                    for message in messages:
                        self._lost[message.partition(b"|")[0].decode()] = str(exc)
            with self._cond:
                self._cond.notify_all()
