"""Chaos on real processes: the event subscription cut mid-stream, Redis restarted empty, helper
loops that die, and hostile connections. Each test checks what the client saw, what Redis keeps,
and what the fake Ollama saw."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from redis import Redis

from tests.client import call
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.rawclient import RawRequest
from tests.redisproxy import RedisProxy
from tests.stack import Stack, wait_until
from tests.test_faults import assert_nothing_lingers, body, only_job, record_for, start

pytestmark = pytest.mark.e2e

WORDS = [f"w{i} " for i in range(200)]


def test_a_cut_subscription_loses_duplicates_and_reorders_no_token(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens=WORDS, tokens_per_s=60, slots=3)
    start(stack, fake_ollama, slots=3)
    streams = [RawRequest(f"{stack.web_url}/llm", body(f"cut {i}", stream=True)) for i in range(2)]
    whole = RawRequest(f"{stack.web_url}/llm", body("cut whole"))
    for stream in streams:
        stream.read_until(b"data: ")
    # What a full pub/sub output buffer, a network blip or a failover does to the web's subscription.
    for _ in range(3):
        time.sleep(0.7)
        assert redis.client_kill_filter(_type="pubsub") >= 1
    for i, stream in enumerate(streams):
        stream.read_all(timeout=20)
        result = read_stream(stream.body_lines())
        assert result.text == "".join(WORDS), f"stream {i} got {len(result.text.split())} words"
        assert result.finish_reason == "stop" and result.saw_done_marker
        assert result.usage["completion_tokens"] == len(WORDS)
    whole.read_all(timeout=20)
    assert whole.status() == 200
    answer = json.loads(b"\n".join(whole.body_lines()))
    assert answer["choices"][0]["message"]["content"] == "".join(WORDS)
    assert answer["usage"]["completion_tokens"] == len(WORDS)
    for prompt in ("cut 0", "cut 1", "cut whole"):
        record = record_for(fake_ollama, prompt)
        assert record is not None and record.outcome == "done" and record.tokens_sent == len(WORDS)
    for key in redis.scan_iter("rq:job:*"):
        if key.count(b":") == 2:
            assert redis.hget(key, "status") == b"finished"
            assert_nothing_lingers(redis, key.decode().rsplit(":", 1)[1])


def test_redis_restarted_empty_serves_again_within_seconds(
    stack: Stack, fake_ollama: FakeOllama, redis_server: RedisServer
) -> None:
    fake_ollama.set_behavior("*", reply_tokens=3)
    start(stack, fake_ollama, web_env={"QUEUE_TIMEOUT_S": 30})
    assert call("POST", f"{stack.web_url}/llm", json=body()).status_code == 200
    redis_server.kill()
    outage = time.monotonic()
    during: list[tuple[float, int]] = []

    def ask_during_the_outage() -> None:
        asked = time.monotonic()
        response = call("POST", f"{stack.web_url}/llm", json=body("during"), timeout=40)
        during.append((time.monotonic() - asked, response.status_code))

    asker = threading.Thread(target=ask_during_the_outage)
    try:
        asker.start()
        time.sleep(2.0)
    finally:
        redis_server.start()  # the same port, nothing in it: no fleet, no RQ workers, no queues
    back = time.monotonic()
    asker.join(40)
    # Answered at once (500) or served: never held past the outage plus a few seconds.
    assert during and during[0][0] < (back - outage) + 5 and during[0][1] in (200, 500), during
    # The first request after the restart is answered at once: served, or refused with a reason.
    response = call("POST", f"{stack.web_url}/llm", json=body("first after"), timeout=40)
    assert time.monotonic() - back < 5, f"the first request after the restart took {time.monotonic() - back:.1f} s"
    assert response.status_code == 200 or (response.status_code == 500 and response.json()["detail"]["msg"])
    wait_until(lambda: call("POST", f"{stack.web_url}/llm", json=body("served"), timeout=5).status_code == 200,
               5, "served again after the restart")  # fmt: skip
    assert time.monotonic() - back < 8
    fresh = Redis.from_url(redis_server.url)
    try:
        jobs = [key.decode().rsplit(":", 1)[1] for key in fresh.scan_iter("rq:job:*") if key.count(b":") == 2]
        statuses = [fresh.hget(f"rq:job:{job_id}", "status") for job_id in jobs]
        assert b"finished" in statuses and set(statuses) <= {b"finished", b"failed", b"canceled"}, statuses
        for job_id in jobs:
            assert_nothing_lingers(fresh, job_id)
        assert fresh.smembers("rq:workers"), "the worker registered itself with RQ again"
    finally:
        fresh.close()
    assert record_for(fake_ollama, "served") is not None


def idle_connections(url: str, count: int) -> list[socket.socket]:
    """`count` TCP connections to the web that never send a byte."""
    parts = urlsplit(url)
    return [socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80)) for _ in range(count)]


def test_a_thousand_idle_connections_do_not_break_requests(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", reply_tokens=3, tokens_per_s=20)
    start(stack, fake_ollama)
    idle = idle_connections(stack.web_url, 1100)  # the web's next sockets are past FD_SETSIZE (1024)
    try:
        response = call("POST", f"{stack.web_url}/llm", json=body("past the fd limit"), timeout=15)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "past the fd "
        stream = RawRequest(f"{stack.web_url}/llm", body("streamed past", stream=True))
        stream.read_all(timeout=15)
        result = read_stream(stream.body_lines())
        assert result.finish_reason == "stop" and result.text == "streamed past streamed "
    finally:
        for sock in idle:
            sock.close()
    record = record_for(fake_ollama, "past the fd limit")
    assert record is not None and record.outcome == "done"


def test_idle_connections_are_capped_and_timed_out(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", reply_tokens=2)
    start(stack, fake_ollama, web_env={"MAX_CONNECTIONS": 20, "HEADER_TIMEOUT_S": 1})
    idle = idle_connections(stack.web_url, 20)
    try:
        wait_until(lambda: over_the_cap(stack.web_url), 5, "a connection over the cap answered")
        # The idle ones are closed by the web once they sent no request head for HEADER_TIMEOUT_S.
        for sock in idle:
            sock.settimeout(5)
            assert sock.recv(1) == b""
        response = call("POST", f"{stack.web_url}/llm", json=body(), timeout=5)
        assert response.status_code == 200
    finally:
        for sock in idle:
            sock.close()


def over_the_cap(url: str) -> bool:
    """Whether a new connection is answered at once with a capacity refusal."""
    with idle_connections(url, 1)[0] as sock:
        sock.settimeout(2)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 500") and "insufficient capacity" in json.loads(payload)["detail"]["msg"]


def test_a_client_that_stops_reading_is_dropped_and_its_job_cancelled(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    # 2 kB tokens at 400/s fill the socket buffers in seconds; the whole answer (bounded by the
    # 4096-token context) would take 10 s.
    fake_ollama.set_behavior("*", tokens=["x" * 2000] * 8000, tokens_per_s=400)
    start(stack, fake_ollama, web_env={"SEND_TIMEOUT_S": 1})
    parts = urlsplit(stack.web_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    payload = json.dumps(body("never read", stream=True, max_tokens=8000)).encode()
    sock.sendall(b"POST /llm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))  # fmt: skip
    try:
        assert fake_ollama.wait_for(lambda f: record_for(f, "never read") is not None)
        job_id = only_job(redis, "started")
        assert fake_ollama.wait_for(lambda f: record_for(f, "never read").outcome == "cancelled", 20)  # type: ignore[union-attr]
        record = record_for(fake_ollama, "never read")
        assert record is not None and record.tokens_sent < 4000
        wait_until(lambda: redis.hget(f"rq:job:{job_id}", "status") == b"canceled", 5, "the job recorded as canceled")
        assert_nothing_lingers(redis, job_id)
    finally:
        sock.close()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisProxy]:
    """A proxy in front of the session's Redis, for the runner's processes to connect through."""
    in_front = RedisProxy(redis_server.port)
    yield in_front
    in_front.close()


# The web's event subscription, and the worker's connection publishing events, as the proxy sees them.
HUB = (b"SUBSCRIBE", b"llmrunner:events:")
PUBLISHER = (b"llmrunner:events:",)  # and not SUBSCRIBE: its PUBLISHes or scripts name the channel


def served(stack: Stack, prompt: str) -> bool:
    """Whether a request is answered 200 with the fake's reply (two words of the prompt)."""
    response = call("POST", f"{stack.web_url}/llm", json=body(prompt), timeout=15)
    return response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == prompt + " "


def test_a_garbled_reply_does_not_stop_the_workers_events(
    stack: Stack, fake_ollama: FakeOllama, proxy: RedisProxy
) -> None:
    fake_ollama.set_behavior("*", reply_tokens=1)
    start(stack, fake_ollama, web_env={"REDIS_URL": proxy.url}, REDIS_URL=proxy.url)
    assert served(stack, "before")
    # Not RESP at all: hiredis raises its ProtocolError on it.
    assert proxy.inject(PUBLISHER, b"?garbled\r\n", unless=b"SUBSCRIBE") >= 1
    asked = time.monotonic()
    for i in range(3):
        assert served(stack, f"after{i}")
    assert time.monotonic() - asked < 5
    assert record_for(fake_ollama, "after2") is not None


def test_a_dead_event_hub_is_restarted_counted_and_reported(
    stack: Stack, fake_ollama: FakeOllama, proxy: RedisProxy
) -> None:
    fake_ollama.set_behavior("*", reply_tokens=1)
    start(stack, fake_ollama, web_env={"REDIS_URL": proxy.url}, REDIS_URL=proxy.url)
    web = stack.processes[0]
    assert served(stack, "before")
    # A well-formed pub/sub message the hub cannot read: its payload is an integer.
    assert proxy.inject(HUB, b"*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n:1\r\n") == 1
    asked = time.monotonic()
    wait_until(lambda: served(stack, "restarted"), 5, "served by a restarted hub")
    assert time.monotonic() - asked < 5
    assert "event-hub died; restarting it" in web.output()
    metrics = call("GET", f"{stack.web_url}/metrics").text
    assert 'llm_web_helper_restarts_total{helper="event-hub"} 1.0' in metrics
    # While the hub cannot subscribe, the web says it is not ready and refuses jobs at once.
    proxy.refuse(HUB)
    wait_until(lambda: call("GET", f"{stack.web_url}/health", timeout=5).json()["status"] == "LOADING", 5,
               "/health LOADING without the subscription")  # fmt: skip
    asked = time.monotonic()
    response = call("POST", f"{stack.web_url}/llm", json=body("refused"), timeout=15)
    assert time.monotonic() - asked < 5
    assert response.status_code == 500 and "unavailable" in response.json()["detail"]["msg"]
    assert record_for(fake_ollama, "refused") is None
    proxy.allow()
    wait_until(lambda: call("GET", f"{stack.web_url}/health", timeout=5).json()["status"] == "OK", 5,
               "/health OK again")  # fmt: skip
    assert served(stack, "again")
