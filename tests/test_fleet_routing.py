"""Routing and readiness on small fleets built per test: LOADING until served, parallel slots, warm GPUs first."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from redis import Redis

from common.fleet import read_fleet
from tests.client import call, stream
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.stack import Stack, wait_until
from tests.test_fleet import GPUS, LLAMA, QWEN7, ask, start_fleet

pytestmark = pytest.mark.e2e


def test_loading_until_a_worker_serves_the_models(redis: Redis, tmp_path: Any, redis_server: RedisServer) -> None:
    stack = Stack(str(tmp_path), redis_server.url)
    with FakeOllama(load_time_s=2.0).start() as fake:
        try:
            stack.start_web()
            assert call("GET", f"{stack.web_url}/health").json() == {"status": "LOADING"}
            worker = stack.start_worker(OLLAMA_URL=fake.url, VRAM_MB=8192, wait_ready=False)
            wait_until(lambda: read_fleet(redis), 10, "the worker announced")
            assert call("GET", f"{stack.web_url}/health").json() == {"status": "LOADING"}  # preloading: 2 s
            response = ask(stack.web_url, LLAMA)
            assert response.status_code == 500 and "not ready yet" in response.json()["detail"]["msg"]
            stack.wait_worker_ready(worker)
            assert call("GET", f"{stack.web_url}/health").json() == {"status": "OK"}
        finally:
            stack.stop()


def test_four_parallel_requests_run_at_once_on_a_gpu_with_four_slots(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=10, slots=4)
    stack.start_web()
    stack.start_worker(OLLAMA_URL=fake_ollama.url, OLLAMA_NUM_PARALLEL=4, FAKE_NVML_GPUS=GPUS[1:])
    body = {"model": LLAMA, "stream": True}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda i: stream(f"{stack.web_url}/llm", {**body, "messages": [{"role": "user", "content": f"p{i}"}]}),
            range(4),
        ))  # fmt: skip
    assert all(read_stream(lines).finish_reason == "stop" for _, lines in results)
    records = fake_ollama.chat_records()[-4:]
    assert max(r.started_at or 0 for r in records) < min(r.finished_at or 0 for r in records)


def test_two_gpus_split_two_models_between_them_and_each_keeps_its_own(stack: Stack, redis: Redis) -> None:
    with FakeOllama(max_loaded_models=1).start() as first, FakeOllama(max_loaded_models=1).start() as second:
        for fake in (first, second):
            fake.set_behavior("*", reply_tokens=3)
        start_fleet(stack, first, second, f"{LLAMA},{QWEN7}", gpus=[GPUS[1], GPUS[1] | {"uuid": "GPU-b"}])
        # Both GPUs start with Llama; the first Qwen job makes exactly one of them switch.
        assert ask(stack.web_url, QWEN7, "q").status_code == 200

        def listening() -> list[list[str]]:
            return sorted(r.listening for r in read_fleet(redis))

        wait_until(lambda: listening() == sorted([[LLAMA], [QWEN7]]), 10, "each worker listening on its own model")
        for i in range(4):
            assert ask(stack.web_url, LLAMA, f"l{i}").status_code == 200
            assert ask(stack.web_url, QWEN7, f"q{i}").status_code == 200
        assert sum(r.switches for r in read_fleet(redis)) == 1
        served = [{r.model for r in fake.chat_records() if r.body.get("messages")} for fake in (first, second)]
        assert sorted(map(sorted, served)) == [["llama3.1:8b"], ["qwen2.5:7b"]]
