"""The worker's command channel: RQ's commands and the web's cancels, on one supervised subscription.

One pub/sub connection carries `rq:pubsub:<worker>` (RQ's `send_command`: stop-job, shutdown)
and the web's cancel channel. RQ's own listener (`PubSub.run_in_thread` with
`BaseWorker._pubsub_exception_handler`, rq/worker/base.py) recovers only from ConnectionError:
anything else ends its thread for good, and the worker stays READY, deaf to every cancel. Here
one loop owns the subscription and survives anything:
- a message its handler cannot take (not JSON, not UTF-8, a handler that raises) is logged and
  dropped; the channel goes on;
- any failure of the connection (a reset, a TimeoutError while reconnecting to a Redis that
  accepts and stays silent, an unexpected reply) is logged, counted as a restart of
  `command-channel` (common.guard), backed off, and the subscription is made anew;
- a connection that hears nothing is found out: a PING on it every PROBE_S must come back
  within PROBE_TIMEOUT_S, or it is treated as broken.
`healthy` (subscribed, and the loop heard from its connection within STALE_S: the Redis client
may spend several socket timeouts reconnecting inside one read) is what the fleet record and
/metrics show.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.client import PubSub

from common.guard import count_restart

logger = logging.getLogger(__name__)

HELPER = "command-channel"
PROBE_S = 2.0
PROBE_TIMEOUT_S = 3.0
READ_S = 0.25
STALE_S = PROBE_S + PROBE_TIMEOUT_S
BACKOFF_S = (0.2, 5.0)
_PROBE = "command-channel-probe"

Handler = Callable[[dict[str, Any]], None]


class ChannelBroken(Exception):
    """The subscription stopped answering."""


class CommandChannel:
    """Listens on `handlers`' channels in a thread of its own; resubscribes after any failure."""

    def __init__(self, redis: Redis, handlers: dict[str, Handler]) -> None:
        self.redis = redis
        self.handlers = handlers
        self._healthy = False
        self._alive_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=HELPER, daemon=True)

    @property
    def healthy(self) -> bool:
        """Subscribed to every channel, and its connection answered lately."""
        return self._healthy and time.monotonic() - self._alive_at < STALE_S

    def start(self) -> None:
        """Start listening in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (waits briefly for the thread)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=READ_S * 8)

    def _run(self) -> None:
        backoff = BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                self._listen()
                return
            except Exception as exc:  # whatever it is, the channel must come back
                self._healthy = False
                logger.error("command channel failed (%s: %s); resubscribing in %.1f s", type(exc).__name__, exc,
                             backoff)  # fmt: skip
                count_restart(HELPER)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_S[1])

    def _listen(self) -> None:
        """One subscription's life: until stopped, or until it fails (raises)."""
        pubsub = self.redis.pubsub()
        try:
            pubsub.subscribe(*self.handlers)
            confirmed: set[str] = set()
            probe_due, probe_sent = time.monotonic() + PROBE_S, 0.0
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=READ_S)
                now = self._alive_at = time.monotonic()
                if message is not None:
                    kind = message["type"]
                    if kind == "subscribe":
                        confirmed.add(_text(message["channel"]))
                        if confirmed >= set(self.handlers) and not self._healthy:
                            logger.info("command channel: listening on %s", ", ".join(self.handlers))
                            self._healthy = True
                    elif kind == "pong":
                        probe_sent, probe_due = 0.0, now + PROBE_S
                    elif kind == "message":
                        self._dispatch(message)
                if probe_sent and now - probe_sent > PROBE_TIMEOUT_S:
                    raise ChannelBroken(f"no answer to a PING in {PROBE_TIMEOUT_S:g} s")
                if not probe_sent and now >= probe_due:
                    _probe(pubsub)
                    probe_sent = now
        finally:
            self._healthy = False
            try:
                pubsub.close()
            except Exception as exc:  # closing a broken connection may fail too
                logger.debug("command channel: closing: %s", exc)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = _text(message["channel"])
        handler = self.handlers.get(channel)
        if handler is None:
            return
        try:
            handler(message)
        except Exception as exc:
            logger.error("command channel: ignored a message on %s that could not be handled (%s: %s): %.200r",
                         channel, type(exc).__name__, exc, message.get("data"))  # fmt: skip


def _probe(pubsub: PubSub) -> None:
    pubsub.ping(_PROBE)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
