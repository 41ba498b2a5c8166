"""Where Redis is: one URL, or a master that Redis Sentinel names and that moves on failover.

redis-py does the following: `Sentinel.master_for`'s pool asks the sentinels for the master's
address at each new connection, turns a demoted master's READONLY into a reconnect
(redis/sentinel.py SentinelManagedConnection.read_response), and its asyncio twin does the same
(redis/asyncio/sentinel.py). This module only builds those pools from the runner's settings: the
Redis password, user name, database and TLS come from REDIS_URL (its host is then unused), the
sentinels' own password from REDIS_SENTINEL_PASSWORD; with `rediss://` the sentinels are spoken
to over TLS as well.
"""

from __future__ import annotations

from typing import Any

from redis import BlockingConnectionPool
from redis.asyncio import sentinel as async_sentinel
from redis.asyncio.connection import ConnectionPool as AsyncConnectionPool
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelConnectionPool

from common.redis_target import RedisTarget

# A sentinel that does not answer within this is skipped for the next one.
SENTINEL_TIMEOUT_S = 1.0


def node_options(url: str) -> dict[str, Any]:
    """What REDIS_URL says about each Redis node but its address: user, password, db, TLS options."""
    kwargs: dict[str, Any] = parse_url(url)
    for where in ("host", "port", "path", "connection_class"):
        kwargs.pop(where, None)
    if url.startswith("rediss://"):
        kwargs["ssl"] = True
    return kwargs


def sentinel_options(target: RedisTarget, socket_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """How to speak to the sentinels: short timeouts, their password, TLS as for the nodes."""
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": min(SENTINEL_TIMEOUT_S, (socket_kwargs or {}).get("socket_connect_timeout", 1.0)),
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "password": target.sentinel_password,
    }
    if target.tls:
        node = node_options(target.url)
        kwargs.update({k: v for k, v in node.items() if k.startswith("ssl")})
    return kwargs


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master pool with BlockingConnectionPool's bound: past `max_connections`, callers
    wait up to `timeout` for a free connection instead of failing at once (as make_redis's pool)."""


def sentinel_pool(target: RedisTarget, **pool_kwargs: Any) -> BlockingSentinelPool:
    """A blocking pool of connections to the current master; `pool_kwargs` as for BlockingConnectionPool."""
    node = {**node_options(target.url), **pool_kwargs}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options(target, pool_kwargs))
    return BlockingSentinelPool(target.master, sentinel, is_master=True, **node)  # type: ignore[no-untyped-call]


def async_pool(target: RedisTarget | str, **connection_kwargs: Any) -> AsyncConnectionPool:
    """An asyncio pool for `target` (to make connections from, on the loop that uses them)."""
    if isinstance(target, str) or not target.sentinels:
        url = target if isinstance(target, str) else target.url
        return AsyncConnectionPool.from_url(url, **connection_kwargs)
    node = {**node_options(target.url), **connection_kwargs}
    sentinel = async_sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=sentinel_options(target, connection_kwargs)
    )
    return async_sentinel.SentinelConnectionPool(target.master, sentinel, is_master=True, **node)
