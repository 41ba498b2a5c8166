"""Publishing every job's events, from the stream loop, batching what piles up.

Events are produced on the stream loop (one thread for every Ollama stream of the process) and
sent by one task on that loop: no thread hand-off before the first token leaves, and the loop
never blocks on Redis. While one round trip is under way, further events wait; they then leave
together in one pipeline: each numbered event appended to its job's backlog stream (XADD with
its sequence number as entry id, the stream capped and expiring), then one PUBLISH per web
process (its channel) holding several events separated by newlines. A burst of tokens from
hundreds of streams so costs a handful of round trips, not one each.

A round trip that fails (Redis restarting, a network blip) is retried with what piled up since,
for up to RETRY_S: the numbered events reach the backlog in order, and a web process that missed
the live copies replays them from it. Only past RETRY_S are a job's events declared lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time

from redis.exceptions import NoScriptError, RedisError, ResponseError

from common import keys
from common.errors import QueueUnavailable
from common.events import job_key, join_batch, sequenced
from common.guard import count_restart
from common.redis_target import RedisTarget
from worker.readers import Readers
from worker.redis_link import RedisLink

logger = logging.getLogger(__name__)

# A job's backlog keeps this many events (a reader further behind than that fails loudly) and
# lives this long after its last event (long enough for any reader to replay, short enough to go).
BACKLOG_MAXLEN = 20_000
BACKLOG_TTL_S = 120
RETRY_S = 10.0
# Jobs whose events were lost are remembered until they end (`forget`), and at most this many:
# a job that ended before its loss was noted is never forgotten otherwise.
LOST_MAX = 10_000
_RETRY_PAUSE_S = 0.2
_RESTART_PAUSE_S = 0.5


class Publisher:
    """Numbers, batches and publishes job events from a task on `loop`, supervised."""

    def __init__(self, redis: str | RedisTarget, loop: asyncio.AbstractEventLoop, *, retry_s: float = RETRY_S) -> None:
        self._loop = loop
        self._target = redis
        self._retry_s = retry_s
        self._pending: dict[str, list[bytes]] = {}  # channel → messages
        self._backlog: dict[str, list[tuple[int, bytes]]] = {}  # job id → (seq, message)
        self._seq: dict[str, int] = {}  # job id → last sequence number given
        self._lost: dict[str, str] = {}  # job id → why its events were lost
        self._sent: list[threading.Event] = []  # set once what is pending now has been sent
        self._wakeup: asyncio.Event | None = None
        self._sending = False
        self._failing_since: float | None = None
        # Who reads each web process's channel, as the PUBLISHes' receiver counts tell.
        self.readers = Readers()
        asyncio.run_coroutine_threadsafe(self._supervise(), loop)

    def publish(self, job_id: str, channel: str, message: bytes, sent: threading.Event | None = None) -> None:
        """Number and queue one event of `job_id` for `channel` (on the loop's thread only); `sent`
        is set once it is in Redis (or given up on).

        Raises QueueUnavailable if events of this job could not be published earlier.
        """
        lost = self._lost.get(job_id)
        if lost is not None:
            raise QueueUnavailable(f"events of this job could not be published: {lost}")
        seq = self._seq.get(job_id, 0) + 1
        self._seq[job_id] = seq
        message = sequenced(message, seq)
        entries = self._backlog.get(job_id)
        if entries is None:
            self._backlog[job_id] = [(seq, message)]
        else:
            entries.append((seq, message))
        self._add(channel, message)
        if sent is not None:
            self._sent.append(sent)

    def publish_threadsafe(self, channel: str, message: bytes) -> None:
        """Queue one unnumbered event (a ping) from any other thread (the heartbeat's)."""
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
        self._seq.pop(job_id, None)

    def _add(self, channel: str, message: bytes) -> None:
        queued = self._pending.get(channel)
        if queued is None:
            self._pending[channel] = [message]
        else:
            queued.append(message)
        if self._wakeup is not None:
            self._wakeup.set()

    async def _supervise(self) -> None:
        """Run the sending loop for the life of the loop; restart it, counted and logged, if it dies."""
        while True:
            link = RedisLink(self._target)
            try:
                await self._run(link)
            except Exception:  # not CancelledError: the loop is stopping with the process
                logger.exception("the event publisher failed; restarting it")
                self._sending = False
                count_restart("publisher")
                await _close(link)
                await asyncio.sleep(_RESTART_PAUSE_S)

    async def _run(self, link: RedisLink) -> None:
        self._wakeup = wakeup = asyncio.Event()
        if self._pending:
            wakeup.set()
        while True:
            await wakeup.wait()
            wakeup.clear()
            batch, self._pending = self._pending, {}
            backlog, self._backlog = self._backlog, {}
            sent, self._sent = self._sent, []
            if not batch and not backlog:
                for event in sent:
                    event.set()
                continue
            self._sending = True
            try:
                receivers = await _send(link, batch, backlog)
                self._failing_since = None
                now = self._loop.time()
                for channel, count in zip(batch, receivers, strict=True):
                    self.readers.heard(channel, int(count), now)
            except (RedisError, OSError) as exc:
                self._retry_or_drop(batch, backlog, str(exc) or type(exc).__name__)
                await asyncio.sleep(_RETRY_PAUSE_S)
            except Exception as exc:  # a bug: keep the batch for the restarted loop
                self._retry_or_drop(batch, backlog, repr(exc))
                raise
            finally:
                self._sending = False
                for event in sent:
                    event.set()

    def _retry_or_drop(self, batch: dict[str, list[bytes]], backlog: dict[str, list[tuple[int, bytes]]],
                       why: str) -> None:  # fmt: skip
        """Put a failed batch back before what piled up since, or give its jobs up past RETRY_S."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            logger.warning("publishing job events failed (%s); retrying for up to %g s", why, self._retry_s)
        if now - self._failing_since < self._retry_s:
            for channel, messages in batch.items():
                self._pending[channel] = messages + self._pending.get(channel, [])
            for job_id, entries in backlog.items():
                self._backlog[job_id] = entries + self._backlog.get(job_id, [])
            if self._wakeup is not None:
                self._wakeup.set()
            return
        # Those jobs' clients miss events: each job learns it at its next publish and ends.
        logger.error("publishing job events failed for %g s: %s; their jobs end", self._retry_s, why)
        for messages in batch.values():
            for message in messages:
                self._lost[job_key(message).decode()] = why
        while len(self._lost) > LOST_MAX:
            del self._lost[next(iter(self._lost))]


# One command per round trip, so one reply to read (redis-py's per-reply overhead dominated the
# first token's path with a reply per XADD, EXPIRE and PUBLISH). KEYS: the jobs' backlogs; ARGV:
# maxlen, ttl, then per backlog its entry count and (id, message) pairs, then (channel, payload)
# pairs. An entry already in a backlog (a retried batch whose reply was lost) is skipped.
_SEND_SCRIPT = """
local maxlen, ttl, a = ARGV[1], ARGV[2], 3
for k = 1, #KEYS do
  local count = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, count do
    local added = redis.pcall('XADD', KEYS[k], 'MAXLEN', '~', maxlen, ARGV[a], 'm', ARGV[a + 1])
    if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller', 1, true) then
      return added
    end
    a = a + 2
  end
  redis.call('EXPIRE', KEYS[k], ttl)
end
local receivers = {}
while a < #ARGV do
  receivers[#receivers + 1] = redis.call('PUBLISH', ARGV[a], ARGV[a + 1])
  a = a + 2
end
return receivers
"""
_SEND_SHA = hashlib.sha1(_SEND_SCRIPT.encode()).hexdigest()


async def _send(
    link: RedisLink, batch: dict[str, list[bytes]], backlog: dict[str, list[tuple[int, bytes]]]
) -> list[int]:
    """One round trip: backlog appends first (so a reader that sees a gap finds them), then the PUBLISHes.

    Returns each PUBLISH's receiver count, in the batch's channel order.
    """
    args: list[str | bytes | int] = [BACKLOG_MAXLEN, BACKLOG_TTL_S]
    for entries in backlog.values():
        args.append(len(entries))
        for seq, message in entries:
            args += (f"{seq}-0", message)
    for channel, messages in batch.items():
        args += (channel, join_batch(messages))
    backlogs = [keys.job_backlog(job_id) for job_id in backlog]
    (reply,) = await link.call([("EVALSHA", _SEND_SHA, len(backlogs), *backlogs, *args)])
    if isinstance(reply, NoScriptError):
        # A restarted Redis has no scripts cached: send it whole (cached again from then on).
        (reply,) = await link.call([("EVAL", _SEND_SCRIPT, len(backlogs), *backlogs, *args)])
    if isinstance(reply, ResponseError):
        raise reply
    return list(reply)


async def _close(link: RedisLink) -> None:
    try:
        await link.close()
    except (RedisError, OSError) as exc:
        logger.debug("closing the publisher's Redis connection: %s", exc)
