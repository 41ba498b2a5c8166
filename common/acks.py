"""Writes that must survive a failover wait until a replica has them (Redis WAIT).

Redis replicates asynchronously: a write the master acknowledged can be lost if the master dies
before a replica received it, and Sentinel then promotes that replica. Two writes matter enough
to wait for: a job's placement (else the client waits for a job nobody has) and its take by a
worker (else the new master still has it queued and a second worker runs it). Each is sent with
`WAIT <replicas> <ms>` in the same round trip, on the same connection (WAIT covers that
connection's writes, and with them everything the master wrote before).

WAIT gives up after REDIS_WAIT_MS. A replica that is down or resyncing would then cost every job
that long, so after a timeout the runner stops waiting for PAUSE_S and says so; writes in that
time are as safe as Redis makes them without WAIT.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError

logger = logging.getLogger(__name__)

PAUSE_S = 10.0


class Acks:
    """How many replicas must acknowledge, for how long at most; 0 replicas: never wait."""

    def __init__(self, replicas: int, timeout_ms: int) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._paused_until = 0.0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether writes wait for replicas now."""
        return self.replicas > 0 and time.monotonic() >= self._paused_until

    def run(self, redis: Redis, write: Callable[[Pipeline], object]) -> list[Any]:
        """Run the commands `write` queues on a pipeline, then WAIT if active; their replies
        (errors as exceptions in the list), the WAIT's left out."""
        waiting = self.active
        with redis.pipeline(transaction=False) as pipe:
            write(pipe)
            if waiting:
                pipe.wait(self.replicas, self.timeout_ms)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        if waiting:
            self._acknowledged(replies.pop())
        return replies

    def script(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """Run a registered script (EVALSHA, loading it if Redis lacks it), acknowledged as `run` does."""
        if not self.active:
            return script(keys=keys, args=args)  # as without replicas: one EVALSHA
        redis = script.registered_client
        assert isinstance(redis, Redis)

        def write(pipe: Pipeline) -> None:
            pipe.evalsha(script.sha, len(keys), *keys, *args)

        (reply,) = self.run(redis, write)
        if isinstance(reply, NoScriptError):  # a new master (or a restarted Redis) has no scripts cached
            redis.script_load(script.script)
            (reply,) = self.run(redis, write)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _acknowledged(self, acked: object) -> None:
        """Note a WAIT's answer: too few replicas pauses waiting for PAUSE_S."""
        if isinstance(acked, int) and acked >= self.replicas:
            return
        with self._lock:
            if time.monotonic() < self._paused_until:
                return
            self._paused_until = time.monotonic() + PAUSE_S
        logger.warning(
            "Redis: %s of %d replica(s) acknowledged within %d ms (REDIS_WAIT_MS); not waiting for replicas "
            "for %g s (a failover now may lose the last jobs placed or taken)",
            acked, self.replicas, self.timeout_ms, PAUSE_S,
        )  # fmt: skip
