"""The one Redis client (connection pool) per process, with timeouts that never let a call hang."""

from __future__ import annotations

from typing import Any

from redis import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.redis_conn import sentinel_pool
from common.redis_target import RedisTarget

try:  # redis-py 8: made once here, not per connection (it reads the package metadata: ~15 ms)
    from redis.driver_info import DriverInfo

    _DRIVER: dict[str, object] = {"driver_info": DriverInfo()}
except ImportError:  # older redis-py computes it once, at import
    _DRIVER = {}

CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0
# A burst of requests waits this long for a pooled connection instead of failing at once.
POOL_WAIT_S = 2.0


def make_redis(
    target: str | RedisTarget, *, max_connections: int, command_timeout_s: float = COMMAND_TIMEOUT_S
) -> Redis:
    """A client for `target` (a URL, or a Sentinel-managed master) that fails fast while Redis is
    down and reconnects once it is back (to the new master after a failover).

    `max_connections` bounds the pool (redis-py's own default of 100 is too few for hundreds
    of concurrent streams); callers past it wait up to POOL_WAIT_S for a free connection.
    """
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": POOL_WAIT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": command_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 15,
        # One retry on ConnectionError/TimeoutError, kept on purpose: it rides out a dropped
        # connection without a failed request, and it may run a command twice (the reply was
        # lost, not the command). Every write the runner sends is safe to run twice: the take
        # carries a token, the start names the execution it creates, ends are guarded by status
        # (common.job_state), backlog appends are keyed by sequence number; the rest (SET,
        # EXPIRE, ZADD, HSET of the same values) are idempotent.
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        **_DRIVER,
    }
    if isinstance(target, RedisTarget) and target.sentinels:
        return Redis(connection_pool=sentinel_pool(target, **options))
    url = target.url if isinstance(target, RedisTarget) else target
    return Redis(connection_pool=BlockingConnectionPool.from_url(url, **options))
