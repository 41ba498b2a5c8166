"""Publishing every job's events, from the stream loop, batching what piles up.

Events are produced on the stream loop (one thread for every Ollama stream of the process) and
sent by one task on that loop: no thread hand-off before the first token leaves, and the loop
never blocks on Redis. While one round trip is under way, further events wait; they then leave
together, one PUBLISH per web process (its channel) holding several events separated by
newlines (the encoding has none inside). A burst of tokens from hundreds of streams so costs a
handful of Redis commands, not one each.

The task speaks to Redis on a bare asyncio connection framed by hiredis: PUBLISH is the only
command, and redis.asyncio's per-command machinery cost about 0.3 ms on the first token's path.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import hiredis
from redis.connection import parse_url

from common.errors import QueueUnavailable
from common.events import job_key, join_batch
from common.redis_client import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S

logger = logging.getLogger(__name__)


class RedisLink:
    """One asyncio connection to Redis that sends pipelined PUBLISHes and reads their replies."""

    def __init__(self, url: str) -> None:
        self._options: dict[str, Any] = parse_url(url)
        self._tls = url.startswith("rediss://")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies = hiredis.Reader()

    async def publish(self, items: list[tuple[str, bytes]]) -> None:
        """PUBLISH each (channel, message) in one round trip; raises OSError or ValueError on failure."""
        try:
            if self._writer is None:
                await self._connect()
            await self._call([(b"PUBLISH", channel.encode(), message) for channel, message in items])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the connection (the next publish reconnects)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._replies = hiredis.Reader()

    async def _connect(self) -> None:
        options = self._options
        if "path" in options:
            opening = asyncio.open_unix_connection(options["path"])
        else:
            context = None
            if self._tls:
                context = ssl.create_default_context()
                if str(options.get("ssl_cert_reqs", "")).lower() in ("none", "cert_none"):
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            opening = asyncio.open_connection(options.get("host", "localhost"), options.get("port", 6379), ssl=context)
        self._reader, self._writer = await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)
        if options.get("password"):
            auth = [b"AUTH", options["password"].encode()]
            if options.get("username"):
                auth.insert(1, options["username"].encode())
            await self._call([tuple(auth)])

    async def _call(self, commands: list[tuple[bytes, ...]]) -> None:
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join(hiredis.pack_command(command) for command in commands))  # type: ignore[arg-type]
        pending = len(commands)
        while pending:
            reply = self._replies.gets()
            if reply is False:
                data = await asyncio.wait_for(self._reader.read(65536), COMMAND_TIMEOUT_S)
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                self._replies.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise ValueError(f"Redis refused: {reply}")
            pending -= 1


class Publisher:
    """Batches events per channel and publishes them from a task on `loop`."""

    def __init__(self, redis_url: str, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._link = RedisLink(redis_url)
        self._pending: dict[str, list[bytes]] = {}
        self._lost: dict[str, str] = {}  # job id → why its events were lost
        self._wakeup: asyncio.Event | None = None
        self._sending = False
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

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (from another thread) until every event queued so far has been sent or given up."""

        async def drained() -> None:
            while self._pending or self._sending:
                await asyncio.sleep(0.005)

        try:
            asyncio.run_coroutine_threadsafe(drained(), self._loop).result(timeout)
        except TimeoutError:
            logger.warning("%d channel(s) of events still unpublished at shutdown", len(self._pending))

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
            self._sending = True
            try:
                await self._link.publish([(channel, join_batch(messages)) for channel, messages in batch.items()])
            except (OSError, ValueError) as exc:
                # Those jobs' clients miss events: each job learns it at its next publish and ends.
                logger.error("publishing job events failed: %s", exc or type(exc).__name__)
                for messages in batch.values():
                    for message in messages:
                        self._lost[job_key(message).decode()] = str(exc) or type(exc).__name__
            finally:
                self._sending = False
