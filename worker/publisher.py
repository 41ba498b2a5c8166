"""Publishing every job's events, from the stream loop, batching what piles up.

Events are produced on the stream loop (one thread for every Ollama stream of the process) and
sent by one task on that loop: no thread hand-off before the first token leaves, and the loop
never blocks on Redis. While one PUBLISH is under way, further events wait; they then leave
together, one PUBLISH per web process (its channel) holding several events separated by
newlines (the encoding has none inside). A burst of tokens from hundreds of streams so costs a
handful of Redis commands, not one each.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from common.errors import QueueUnavailable
from common.redis_client import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S

logger = logging.getLogger(__name__)

SEPARATOR = b"\n"


class Publisher:
    """Batches events per channel and publishes them from a task on `loop`."""

    def __init__(self, redis_url: str, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._redis = AsyncRedis.from_url(
            redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S,
            max_connections=4,
        )
        self._pending: dict[str, list[bytes]] = {}
        self._lost: dict[str, str] = {}  # job id → why its events were lost
        self._wakeup: asyncio.Event | None = None
        asyncio.run_coroutine_threadsafe(self._run(), loop)

    def publish(self, job_id: str, channel: str, message: bytes) -> None:
        """Queue one event of `job_id` for `channel` (on the loop's thread only).

        Raises QueueUnavailable if events of this job could not be published earlier.
        """
        lost = self._lost.get(job_id)
        if lost is not None:
            raise QueueUnavailable(f"events of this job could not be published: {lost}")
        self._add(channel, message)

    def publish_threadsafe(self, channel: str, message: bytes) -> None:
        """Queue one event from any other thread (the heartbeat's pings)."""
        self._loop.call_soon_threadsafe(self._add, channel, message)

    def forget(self, job_id: str) -> None:
        """Drop what is known about a finished job."""
        self._lost.pop(job_id, None)

    def _add(self, channel: str, message: bytes) -> None:
        queued = self._pending.get(channel)
        if queued is None:
            self._pending[channel] = [message]
        else:
            queued.append(message)
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        self._wakeup = wakeup = asyncio.Event()
        while True:
            await wakeup.wait()
            wakeup.clear()
            batch, self._pending = self._pending, {}
            if not batch:
                continue
            try:
                if len(batch) == 1:
                    ((channel, messages),) = batch.items()
                    await self._redis.publish(channel, SEPARATOR.join(messages))
                else:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for channel, messages in batch.items():
                            pipe.publish(channel, SEPARATOR.join(messages))
                        await pipe.execute()
            except (RedisError, OSError) as exc:
                # Those jobs' clients miss events: each job learns it at its next publish and ends.
                logger.error("publishing job events failed: %s", exc)
                for messages in batch.values():
                    for message in messages:
                        self._lost[message.partition(b"|")[0].decode()] = str(exc)
