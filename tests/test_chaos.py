"""Chaos on real processes: the event subscription cut mid-stream, Redis restarted empty, helper
loops that die, and hostile connections. Each test checks what the client saw, what Redis keeps,
and what the fake Ollama saw."""

from __future__ import annotations

import json
import time

import pytest
from redis import Redis

from tests.client import call
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.rawclient import RawRequest
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
    try:
        time.sleep(1.0)
    finally:
        redis_server.start()  # the same port, nothing in it: no fleet, no RQ workers, no queues
    back = time.monotonic()
    # The first request after the restart is answered at once: served, or refused with a reason.
    response = call("POST", f"{stack.web_url}/llm", json=body("first after"), timeout=40)
    assert time.monotonic() - back < 5, f"the first request after the restart took {time.monotonic() - back:.1f} s"
    assert response.status_code == 200 or (response.status_code == 500 and response.json()["detail"]["msg"])
    wait_until(lambda: call("POST", f"{stack.web_url}/llm", json=body("served"), timeout=5).status_code == 200,
               5, "served again after the restart")  # fmt: skip
    assert time.monotonic() - back < 8
    fresh = Redis.from_url(redis_server.url)
    try:
        job_id = only_job(fresh, "finished")
        assert_nothing_lingers(fresh, job_id)
        assert fresh.smembers("rq:workers"), "the worker registered itself with RQ again"
    finally:
        fresh.close()
    assert record_for(fake_ollama, "served") is not None
