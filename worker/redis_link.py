"""A batch of Redis commands in one round trip on one redis-py asyncio connection.

redis-py does the connection (TCP or unix socket, TLS, AUTH, RESP parsing by hiredis); this
only sends a batch packed by hiredis (the C packer redis-py's sync client uses; its asyncio one
packs in Python, per argument) and reads one reply per command under one deadline. Its
Pipeline object costs about twice as much CPU per round trip (a command stack, a timeout per
reply, response callbacks), and this runs on every event's path, the first token's included.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from hiredis import pack_command  # redis[hiredis]: the C packer redis-py's sync client uses
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from common.redis_client import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S
from common.redis_conn import async_pool
from common.redis_target import RedisTarget

Command = tuple[str | bytes | int, ...]


class RedisLink:
    """One connection, made on first use and again after any failure (through Sentinel: to the
    master it names then, so a failover costs a failed call and a reconnect)."""

    def __init__(self, target: str | RedisTarget) -> None:
        self._pool = async_pool(
            target, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S, socket_keepalive=True
        )
        self._conn: AbstractConnection | None = None

    async def call(self, commands: list[Command]) -> list[Any]:
        """Send `commands` at once; their replies in order, a refused one as its ResponseError.

        Raises RedisError or OSError (the connection is then dropped) if Redis cannot answer
        within COMMAND_TIMEOUT_S.
        """
        conn = self._conn
        if conn is None:
            conn = self._conn = self._pool.make_connection()
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                await conn.connect()  # at once when connected
                packed = b"".join([pack_command(command) for command in commands])  # type: ignore[arg-type]
                await conn.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        replies.append(exc)
                return replies
        except BaseException:
            self._conn = None
            await conn.disconnect()
            raise

    async def close(self) -> None:
        """Drop the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()
