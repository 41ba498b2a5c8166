"""The worker's thin batch layer over redis-py's asyncio connection: replies, refusals, reconnects."""

from __future__ import annotations

import asyncio

import pytest
from redis import Redis
from redis.exceptions import ConnectionError, ResponseError

from tests.conftest import RedisServer
from tests.stack import free_port
from worker.redis_link import RedisLink


def test_a_batch_gets_every_reply_in_order_and_refusals_as_values(redis: Redis, redis_server: RedisServer) -> None:
    async def run() -> list[object]:
        link = RedisLink(redis_server.url)
        try:
            return await link.call([("SET", "a", "1"), ("INCR", "a"), ("XADD", "s", "5-0", "m", "x"),
                                    ("XADD", "s", "5-0", "m", "y"), ("GET", "a")])  # fmt: skip
        finally:
            await link.close()

    replies = asyncio.run(run())
    assert replies[:3] == [b"OK", 2, b"5-0"] and replies[4] == b"2"
    assert isinstance(replies[3], ResponseError) and "equal or smaller" in str(replies[3])


def test_a_link_reconnects_after_redis_comes_back(redis: Redis, redis_server: RedisServer) -> None:
    async def run() -> None:
        link = RedisLink(redis_server.url)
        assert await link.call([("PING",)]) == [b"PONG"]
        redis_server.kill()
        try:
            with pytest.raises((ConnectionError, OSError)):
                await link.call([("PING",)])
        finally:
            redis_server.start()
        assert await link.call([("PING",)]) == [b"PONG"]
        await link.close()

    asyncio.run(run())


def test_an_unreachable_redis_fails_the_call() -> None:
    async def run() -> None:
        with pytest.raises((ConnectionError, OSError)):
            await RedisLink(f"redis://127.0.0.1:{free_port()}/0").call([("PING",)])

    asyncio.run(run())
