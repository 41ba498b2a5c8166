"""Publishing every job's events from a worker process, batching what piles up.

Whoever publishes while no publish is under way sends at once, on its own thread: no hand-off
to wake up, so the first token leaves without delay. Events that arrive during that round trip
wait, and the same thread then sends them all together: one PUBLISH per web process (its
channel) holding several events separated by newlines (the encoding has none inside). A burst
of tokens from hundreds of streams so costs a handful of Redis commands, not one each.
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
    """Combines concurrent publishes: one thread at a time sends, for everyone, what is pending."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self._sending = False
        self._lost: dict[str, str] = {}  # job id → why its events were lost

    def publish(self, job_id: str, channel: str, message: bytes) -> None:
        """Send one event of `job_id` on `channel` (now, or with the batch under way).

        Raises QueueUnavailable if events of this job could not be published earlier.
        """
        lost = self._lost.get(job_id)
        if lost is not None:
            raise QueueUnavailable(f"events of this job could not be published: {lost}")
        with self._lock:
            queued = self._pending.get(channel)
            if queued is None:
                self._pending[channel] = [message]
            else:
                queued.append(message)
            if self._sending:
                return  # the thread sending now sends this too, right after
            self._sending = True
        self._send_pending()

    def forget(self, job_id: str) -> None:
        """Drop what is known about a finished job."""
        self._lost.pop(job_id, None)

    def _send_pending(self) -> None:
        """Send batches until nothing is pending; then let the next publisher send."""
        while True:
            with self._lock:
                batch, self._pending = self._pending, {}
                if not batch:
                    self._sending = False
                    return
            try:
                if len(batch) == 1:
                    ((channel, messages),) = batch.items()
                    self._redis.publish(channel, SEPARATOR.join(messages))
                else:
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
