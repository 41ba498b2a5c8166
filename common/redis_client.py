"""The one Redis client (connection pool) per process, with timeouts that never let a call hang."""

from __future__ import annotations

from redis import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0
# A burst of requests waits this long for a pooled connection instead of failing at once.
POOL_WAIT_S = 2.0


def make_redis(url: str, *, max_connections: int, command_timeout_s: float = COMMAND_TIMEOUT_S) -> Redis:
    """A client for `url` that fails fast while Redis is down and reconnects once it is back.

    `max_connections` bounds the pool (redis-py's own default of 100 is too few for hundreds
    of concurrent streams); callers past it wait up to POOL_WAIT_S for a free connection.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=command_timeout_s,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
    )
    return Redis(connection_pool=pool)
