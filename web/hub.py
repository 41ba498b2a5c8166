"""One pub/sub subscription per web process, routing worker events to the requests waiting on them.

Workers publish every event of a job on the channel of the web process that placed it (several
events per message, one per line, when they pile up), so a request needs no subscription of its
own: it registers an inbox here before its job is enqueued. Whatever a lost subscription missed
is in each job's backlog: after subscribing again the hub puts RESYNC in every inbox, and each
request replays its job's backlog from the last event it has.

The dispatcher and the ticker are supervised (common.guard): if one dies it is restarted, logged
and counted; /health reports LOADING while the subscription is down.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from redis import Redis
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from common import keys
from common.errors import QueueUnavailable
from common.events import job_key, split_batch
from common.guard import start_supervised

logger = logging.getLogger(__name__)

_READ_TIMEOUT_S = 1.0
_MAX_BACKOFF_S = 1.0
# Every inbox gets a TICK this often, so a waiting request checks its client and its deadlines
# without a timer of its own on every wait (one per token was a tenth of the web's CPU).
TICK_S = 0.25
TICK = b""
# Put in every inbox after the subscription came back: replay the job's backlog.
RESYNC = b"\x00resync"
_ORPHANS_KEPT = 10_000
_ORPHAN_RECANCEL_S = 1.0


class EventHub:
    """Owns this process's subscription and a map of job id → inbox (a queue of raw messages)."""

    def __init__(self, redis: Redis, web_id: str) -> None:
        self.channel = keys.reply_channel(web_id)
        self._redis = redis
        self._inboxes: dict[bytes, queue.SimpleQueue[bytes]] = {}
        # Jobs cancelled for publishing here with nobody waiting, and when (oldest first, bounded).
        self._orphans: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._ever_subscribed = False
        self._started = False

    def ensure_running(self, timeout: float = 2.0) -> None:
        """Start the dispatcher once and wait until subscribed; QueueUnavailable if Redis is down."""
        if not self.running(timeout):
            raise QueueUnavailable("cannot reach Redis to follow jobs; the runner's queue is unavailable")

    def running(self, timeout: float = 2.0) -> bool:
        """Start the dispatcher once; whether it is subscribed (waiting up to `timeout` for it)."""
        with self._lock:
            if not self._started:
                self._started = True
                start_supervised("event-hub", self._run)
                start_supervised("event-hub-ticker", self._tick)
        return self._subscribed.wait(timeout)

    @property
    def subscribed(self) -> bool:
        """Whether workers' events reach this process now (its subscription is up)."""
        return self._subscribed.is_set()

    def register(self, job_id: str, inbox: queue.SimpleQueue[bytes] | None = None) -> queue.SimpleQueue[bytes]:
        """An inbox (a new one, or `inbox`) that receives every event about `job_id` until
        `unregister`, and a TICK every TICK_S."""
        if inbox is None:
            inbox = queue.SimpleQueue()
        self._inboxes[job_id.encode()] = inbox
        return inbox

    def unregister(self, job_id: str) -> None:
        """Stop routing messages for `job_id`."""
        self._inboxes.pop(job_id.encode(), None)

    def _tick(self) -> None:
        while True:
            time.sleep(TICK_S)
            for inbox in list(self._inboxes.values()):
                inbox.put(TICK)

    def _run(self) -> None:
        backoff = 0.1
        while True:  # for the life of the process
            connection = None
            try:
                connection = self._subscribe()
                self._listen(connection)
            except (RedisError, OSError) as exc:
                if self._subscribed.is_set():
                    logger.warning("event hub lost Redis (%s); resubscribing", exc)
                    backoff = 0.1
                self._subscribed.clear()
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            finally:
                self._subscribed.clear()
                if connection is not None:
                    connection.disconnect()

    def _subscribe(self) -> AbstractConnection:
        """A dedicated redis-py connection (TLS, AUTH, hiredis as configured) subscribed to this process's channel.

        Read directly rather than through redis-py's PubSub: this loop runs for every event of
        every stream, and PubSub's per-message socket checks and dict doubled its cost.
        """
        pool = self._redis.connection_pool
        # No health checks: on a subscribed connection they would swallow a message.
        connection: AbstractConnection = pool.connection_class(**{**pool.connection_kwargs, "health_check_interval": 0})
        connection.connect()
        connection.send_command("SUBSCRIBE", self.channel)
        return connection

    def _listen(self, connection: AbstractConnection) -> None:
        """Dispatch messages until the connection fails; a silent one is PINGed, and dropped if still silent."""
        unanswered = 0
        while True:
            try:
                # push_request: with RESP3, messages are push frames redis-py would otherwise divert.
                reply = connection.read_response(timeout=_READ_TIMEOUT_S, disconnect_on_error=False, push_request=True)
            except TimeoutError:
                unanswered += 1
                if unanswered > 2:
                    raise ConnectionError("Redis stopped answering the event subscription") from None
                connection.send_command("PING")
                continue
            unanswered = 0
            if not isinstance(reply, list) or not reply:
                continue  # the answer to a PING
            kind = reply[0]
            if kind == b"message":
                self._dispatch(reply[2])
            elif kind == b"subscribe":
                self._on_subscribed()

    def _on_subscribed(self) -> None:
        self._subscribed.set()
        logger.info("event hub subscribed to %s", self.channel)
        if self._ever_subscribed:
            # Events published while unsubscribed reached only the backlogs: every request replays.
            for inbox in list(self._inboxes.values()):
                inbox.put(RESYNC)
        self._ever_subscribed = True

    def _dispatch(self, data: bytes) -> None:
        # A worker sends what piled up for this process in one payload, one event per line.
        inboxes = self._inboxes
        for event in split_batch(data):
            job_id = job_key(event)
            inbox = inboxes.get(job_id)
            if inbox is not None:
                inbox.put(event)
            else:
                self._orphan(job_id)

    def _orphan(self, job_id: bytes) -> None:
        """Events of a job nobody here waits for (its cancel was lost, or it was requeued): cancel it,
        again every second while its events keep coming (a cancel can be lost too)."""
        now = time.monotonic()
        sent = self._orphans.pop(job_id, None)
        if sent is not None and now - sent < _ORPHAN_RECANCEL_S:
            self._orphans[job_id] = sent
            return
        if len(self._orphans) >= _ORPHANS_KEPT:
            self._orphans.pop(next(iter(self._orphans)))
        self._orphans[job_id] = now
        try:
            self._redis.publish(keys.cancel_channel(), job_id)
        except (RedisError, OSError) as exc:
            logger.warning("could not cancel orphaned job %s: %s", job_id.decode(errors="replace"), exc)
