"""The worker's event publisher: batching per web process, Redis password, and lost events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.exceptions import ConnectionError

from common.errors import QueueUnavailable
from tests.conftest import RedisServer
from tests.stack import free_port, wait_until
from worker.ollama_stream import StreamLoop
from worker.publisher import Publisher


@pytest.fixture
def streams() -> Iterator[StreamLoop]:
    loop = StreamLoop()
    yield loop
    loop.stop()


def listen(redis: Redis, *channels: str) -> tuple[list[tuple[str, bytes]], threading.Event]:
    received: list[tuple[str, bytes]] = []
    pubsub = redis.pubsub()
    pubsub.subscribe(*channels)
    ready = threading.Event()

    def run() -> None:
        try:
            for message in pubsub.listen():
                if message["type"] == "subscribe":
                    ready.set()
                elif message["type"] == "message":
                    received.append((message["channel"].decode(), message["data"]))
        except (ConnectionError, OSError, ValueError):
            pass  # the test's client was closed

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(5)
    return received, ready


def on_loop(streams: StreamLoop, func: object) -> None:
    """Run `func` on the stream loop's thread, as the relay does."""

    async def call() -> None:
        func()  # type: ignore[operator]

    asyncio.run_coroutine_threadsafe(call(), streams.loop).result()


def test_events_of_one_round_go_out_as_one_message_per_channel(
    redis: Redis, redis_server: RedisServer, streams: StreamLoop
) -> None:
    received, _ = listen(redis, "web-a", "web-b")
    publisher = Publisher(redis_server.url, streams.loop)

    def burst() -> None:
        publisher.publish("j1", "web-a", b'j1|t1|"a"')
        publisher.publish("j2", "web-a", b'j2|t1|"b"')
        publisher.publish("j3", "web-b", b"j3|p")

    on_loop(streams, burst)
    wait_until(lambda: len(received) == 2, 5, "two messages")
    assert sorted(received) == [("web-a", b'j1|t1|"a"\nj2|t1|"b"'), ("web-b", b"j3|p")]


def test_a_password_in_the_url_is_used(redis: Redis, redis_server: RedisServer, streams: StreamLoop) -> None:
    received, _ = listen(redis, "secured")
    redis.config_set("requirepass", "s3cret")
    try:
        publisher = Publisher(redis_server.url.replace("redis://", "redis://:s3cret@"), streams.loop)
        on_loop(streams, lambda: publisher.publish("j", "secured", b"j|p"))
        wait_until(lambda: received == [("secured", b"j|p")], 5, "the authenticated publish")
    finally:
        authed = Redis.from_url(redis_server.url, password="s3cret")
        authed.config_set("requirepass", "")
        authed.close()


def test_events_that_cannot_be_published_end_their_job(streams: StreamLoop) -> None:
    publisher = Publisher(f"redis://127.0.0.1:{free_port()}/0", streams.loop)
    on_loop(streams, lambda: publisher.publish("doomed", "web", b"doomed|p"))

    def raised() -> bool:
        try:
            on_loop(streams, lambda: publisher.publish("doomed", "web", b"doomed|p"))
        except QueueUnavailable:
            return True
        return False

    wait_until(raised, 5, "the job told its events were lost")
    publisher.forget("doomed")
    on_loop(streams, lambda: publisher.publish("doomed", "web", b"doomed|p"))  # forgotten: no raise
