"""The one Redis client (connection pool) per process, with timeouts that never let a call hang."""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0


def make_redis(url: str, *, command_timeout_s: float = COMMAND_TIMEOUT_S) -> Redis:
    """A client for `url` that fails fast while Redis is down and reconnects once it is back."""
    return Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=command_timeout_s,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
    )
