"""What a Sentinel failover does to the runner, reproduced on one Redis: an outage longer than
WORKER_SILENCE_S (the master's detection takes down-after-milliseconds, then the sentinels vote
and promote), and a queued job the new master never received."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest
from redis import Redis
from rq.job import Job
from rq.suspension import resume, suspend

from common import keys
from tests.client import stream
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
# Longer than WORKER_SILENCE_S (5 s), shorter than the publisher's retry window (10 s).
OUTAGE_S = 6.5


def test_streams_outlive_a_redis_outage_longer_than_the_worker_silence(
    stack: Stack, fake_ollama: FakeOllama, redis_server: RedisServer
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=10, reply_tokens=100)
    stack.start_web(OLLAMA_URL=fake_ollama.url)
    stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=24576)
    prompt = "outage alpha bravo"
    result: dict[str, Any] = {}

    def client() -> None:
        body = {"model": LLAMA, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2000, "stream": True}
        result["response"], result["lines"] = stream(f"{stack.web_url}/llm", body, timeout=60)

    thread = threading.Thread(target=client)
    thread.start()
    assert fake_ollama.wait_for(lambda f: any(r.tokens_sent >= 5 for r in f.chat_records()), 10)
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    os.kill(pid, signal.SIGSTOP)  # a Redis that answers nobody: as a master that is gone
    resumed = threading.Event()
    try:
        resumed.wait(OUTAGE_S)  # the outage's length is the point here, nothing to wait for
    finally:
        os.kill(pid, signal.SIGCONT)
    thread.join(60)
    answer = read_stream(result["lines"])
    words = [w + " " for w in prompt.split()]
    assert result["response"].status_code == 200
    assert answer.finish_reason == "stop", f"{answer.text!r}\n{stack.logs()}"
    assert answer.text == "".join(words[i % 3] for i in range(100))
    wait_until(lambda: stack.redis.ping(), 5, "Redis back")


def test_a_queued_job_that_redis_lost_is_placed_again(
    stack: Stack, fake_ollama: FakeOllama, redis_server: RedisServer, redis: Redis
) -> None:
    """A failover to a replica that never received a queued job: the job hash and its queue entry
    are gone. Once its subscription is back the web notices and places the job again."""
    fake_ollama.set_behavior("*", reply_tokens=6)
    stack.start_web(OLLAMA_URL=fake_ollama.url, QUEUE_TIMEOUT_S=20)
    stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=24576)
    suspend(redis)  # `rq suspend`: the worker takes nothing, so the job stays queued
    prompt = "lost alpha bravo"
    result: dict[str, Any] = {}

    def client() -> None:
        body = {"model": LLAMA, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2000, "stream": True}
        result["response"], result["lines"] = stream(f"{stack.web_url}/llm", body, timeout=60)

    thread = threading.Thread(target=client)
    thread.start()
    queue_key = f"rq:queue:{keys.queue_name(LLAMA)}"
    (lost,) = wait_until(lambda: redis.lrange(queue_key, 0, -1), 10, "the job queued")
    # What the new master lacks: the job's hash and its place in the queue.
    redis.delete(Job.key_for(lost.decode()))
    redis.lrem(queue_key, 1, lost)
    # The web's subscription breaks and comes back, as it does when the master changes.
    redis.client_kill_filter(_type="pubsub")
    resume(redis)
    thread.join(60)
    answer = read_stream(result["lines"])
    assert result["response"].status_code == 200, result["lines"]
    assert answer.text == "lost alpha bravo lost alpha bravo " and answer.finish_reason == "stop"
    placed_again = result["response"].headers["X-Job-Id"]
    assert placed_again != lost.decode()
    assert [r.body["messages"][-1]["content"] for r in fake_ollama.chat_records() if r.body.get("messages")] == [prompt]
    wait_until(lambda: redis.hget(Job.key_for(placed_again), "status") == b"finished", 10, "recorded finished")
    assert "lost by Redis" in stack.logs()
