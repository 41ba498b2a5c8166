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


def test_jobs_prefer_the_gpu_whose_ollama_has_the_model_loaded(stack: Stack, redis: Redis) -> None:
    with FakeOllama().start() as first, FakeOllama().start() as second:
        for fake in (first, second):
            fake.set_behavior("*", reply_tokens=3)
        start_fleet(stack, first, second, f"{LLAMA},{QWEN7}", gpus=[GPUS[1], GPUS[1] | {"uuid": "GPU-b"}])
        # The second GPU's Ollama swaps to Qwen: each model is now warm on exactly one GPU.
        for payload in ({"model": "llama3.1:8b", "messages": [], "keep_alive": 0},
                        {"model": "qwen2.5:7b", "messages": []}):  # fmt: skip
            assert call("POST", f"{second.url}/api/chat", json=payload).status_code == 200

        def listening() -> list[list[str]]:
            return [r.listening for r in read_fleet(redis)]

        wait_until(lambda: listening() == [[LLAMA], [QWEN7]], 10, "each worker listening on its warm model only")
        for i in range(4):
            assert ask(stack.web_url, LLAMA, f"l{i}").status_code == 200
            assert ask(stack.web_url, QWEN7, f"q{i}").status_code == 200
        assert {r.model for r in first.chat_records()} == {"llama3.1:8b"}
        assert {r.model for r in second.chat_records() if r.body.get("messages")} == {"qwen2.5:7b"}
        # When the warm GPU is busy and Llama jobs wait, the other GPU takes them.
        first.set_behavior("*", tokens_per_s=10, reply_tokens=60)
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda p: ask(stack.web_url, LLAMA, p), ["busy one", "spill over"]))
        assert [a.status_code for a in answers] == [200, 200]
        assert any(r.model == "llama3.1:8b" and r.body["messages"] for r in second.chat_records())
