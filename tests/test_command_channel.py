"""The worker's command channel survives anything: after each fault, a client leaving still stops the engine.

Faults on real processes (web, worker, Redis, the fake Ollama): a malformed RQ command, a cancel
that is not UTF-8 (its handler raises), and a Redis that accepts the reconnection and stays
silent (a TimeoutError while reconnecting). Each is followed by a client leaving mid-stream: the
engine must stop within CANCEL_DEADLINE_S. The channel's health shows in /fleet and /metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis

from common import keys
from common.fleet import read_fleet
from tests.client import call
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.rawclient import RawRequest
from tests.redisproxy import RedisProxy
from tests.stack import Process, Stack, wait_until
from tests.test_faults import body, record_for, start

pytestmark = pytest.mark.e2e

CANCEL_DEADLINE_S = 2.0


def channel_up(redis: Redis) -> bool | None:
    """The worker's command channel as its fleet record says (None: no record)."""
    records = read_fleet(redis)
    return records[0].command_channel_up if records else None


def leave_mid_stream(stack: Stack, fake: FakeOllama, prompt: str) -> None:
    """A client streams, then leaves: the engine must stop generating within CANCEL_DEADLINE_S."""
    request = RawRequest(f"{stack.web_url}/llm", body(prompt, stream=True))
    request.read_until(b"data: ")
    request.close()
    assert fake.wait_for(lambda f: record_for(f, prompt).outcome == "cancelled", CANCEL_DEADLINE_S), (  # type: ignore[union-attr]
        "the engine went on generating after its client left"
    )


def malformed_command(redis: Redis, proxy: RedisProxy, worker: Process) -> None:
    redis.publish(f"rq:pubsub:{read_fleet(redis)[0].name}", "not json")


def undecodable_cancel(redis: Redis, proxy: RedisProxy, worker: Process) -> None:
    redis.publish(keys.cancel_channel(), b"\xff\xfe not utf-8")


def silent_redis_on_reconnect(redis: Redis, proxy: RedisProxy, worker: Process) -> None:
    """Cut the subscription; its reconnection reaches a Redis that accepts and never answers."""
    proxy.silence(True)
    proxy.refuse((b"SUBSCRIBE",))
    proxy.allow()
    wait_until(lambda: channel_up(redis) is False, 10, "/fleet showing the channel down")
    wait_until(lambda: "TimeoutError" in worker.output(), 20, "the reconnection timing out")
    proxy.silence(False)


@pytest.mark.parametrize(
    "fault", [malformed_command, undecodable_cancel, silent_redis_on_reconnect], ids=lambda f: f.__name__
)
def test_the_command_channel_outlives_the_fault_and_cancels_still_stop_the_engine(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, redis_server: RedisServer,
    fault: Callable[[Redis, RedisProxy, Process], None],
) -> None:  # fmt: skip
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    proxy = RedisProxy(redis_server.port)
    try:
        worker = start(stack, fake_ollama, REDIS_URL=proxy.url)
        wait_until(lambda: channel_up(redis), 10, "the command channel up")
        leave_mid_stream(stack, fake_ollama, "before the fault")
        fault(redis, proxy, worker)
        wait_until(lambda: channel_up(redis), 15, "the command channel up again")
        leave_mid_stream(stack, fake_ollama, "after the fault")
        metrics = call("GET", f"{stack.web_url}/metrics").text
        assert f'llm_worker_command_channel_up{{worker="{read_fleet(redis)[0].name}"}} 1.0' in metrics
        assert call("GET", f"{stack.web_url}/fleet").json()["workers"][0]["command_channel_up"] is True
    finally:
        proxy.close()


def test_a_handler_that_raises_costs_only_its_message(redis: Redis) -> None:
    """In-process: a handler's exception is logged and the next message is still heard."""
    from worker.channel import CommandChannel

    heard: list[bytes] = []
    second = threading.Event()

    def handler(message: dict[str, Any]) -> None:
        if message["data"] == b"bad":
            raise ValueError("cannot take this one")
        heard.append(message["data"])
        second.set()

    channel = CommandChannel(redis, {"test:commands": handler})
    channel.start()
    try:
        wait_until(lambda: channel.healthy, 5, "subscribed")
        redis.publish("test:commands", "bad")
        redis.publish("test:commands", "good")
        assert second.wait(5) and heard == [b"good"]
        assert channel.healthy
    finally:
        channel.stop()


def test_a_connection_that_stops_answering_is_replaced(redis: Redis, redis_server: RedisServer) -> None:
    """In-process: the subscription's connection goes silent (nothing forwarded); the probe finds
    it out and the channel subscribes anew on a working connection."""
    from worker.channel import CommandChannel

    proxy = RedisProxy(redis_server.port)
    heard = threading.Event()
    client = Redis.from_url(proxy.url, socket_timeout=5)
    channel = CommandChannel(client, {"test:commands": lambda message: heard.set()})
    channel.start()
    try:
        wait_until(lambda: channel.healthy, 5, "subscribed")
        proxy.stall(b"PING")  # the next probe, and all after it on that connection, go nowhere
        began = time.monotonic()
        wait_until(lambda: not channel.healthy, 10, "the silent connection noticed")
        wait_until(lambda: channel.healthy, 10, "subscribed again")
        assert time.monotonic() - began < 10
        redis.publish("test:commands", "hello")
        assert heard.wait(5)
    finally:
        channel.stop()
        client.close()
        proxy.close()
