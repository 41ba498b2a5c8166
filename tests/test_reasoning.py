"""What a go-livepeer client gets from reasoning models and single-sequence models, through the whole runner."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import pytest
from redis import Redis

from tests.client import call, stream
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.stack import Stack

pytestmark = pytest.mark.e2e

GPT_OSS, QWEN3, VL = "openai/gpt-oss-20b", "Qwen/Qwen3-8B", "Qwen/Qwen3-VL-8B-Instruct"
MODELS = f"{GPT_OSS}=gpt-oss:20b,{QWEN3}=qwen3:8b,{VL}=qwen3-vl:8b"


@pytest.fixture(scope="module")
def runner(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeOllama]]:
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    fake = FakeOllama(slots=4).start()
    stack = Stack(str(tmp_path_factory.mktemp("reasoning")), redis_server.url)
    env = {"MODELS": MODELS, "OLLAMA_URL": fake.url, "OLLAMA_NUM_PARALLEL": 4, "VRAM_MB": 81920,
           "OLLAMA_MAX_LOADED_MODELS": 3}  # fmt: skip
    try:
        stack.start_web(**env)
        stack.start_worker(**env)
        yield stack.web_url, fake
    finally:
        stack.stop()
        fake.stop()


def ask(url: str, model: str, **fields: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "alpha bravo"}], "max_tokens": 64, **fields}
    return call("POST", f"{url}/llm", json=body)


def test_gpt_oss_gets_its_lowest_reasoning_level_and_only_the_answer_reaches_the_client(
    runner: tuple[str, FakeOllama],
) -> None:
    url, fake = runner
    fake.set_behavior("*", reply_tokens=5, thinking_tokens=3)
    answer = ask(url, GPT_OSS).json()
    assert answer["choices"][0]["message"]["content"] == "alpha bravo alpha bravo alpha "
    assert answer["usage"]["completion_tokens"] == 3 + 5  # reasoning is generated, so it is counted
    assert fake.chat_records()[-1].body["think"] == "low"
    _, lines = stream(f"{url}/llm", {"model": GPT_OSS, "stream": True, "max_tokens": 64,
                                            "messages": [{"role": "user", "content": "alpha bravo"}]})  # fmt: skip
    assert read_stream(lines).text == "alpha bravo alpha bravo alpha "


def test_an_answer_emptied_by_reasoning_is_an_empty_200_cut_for_length_as_openai_answers(
    runner: tuple[str, FakeOllama],
) -> None:
    # gpt-oss thinks whatever it is told; 2 tokens do not reach the answer. OpenAI's reasoning
    # models answer that with a 200, empty content, finish_reason "length" and the reasoning in
    # the usage; any non-200 would suspend the orchestrator at the gateway.
    url, fake = runner
    fake.set_behavior("*", reply_tokens=5, thinking_tokens=3)
    response = ask(url, GPT_OSS, max_tokens=2)
    assert response.status_code == 200
    answer = response.json()
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 2  # the reasoning Ollama generated and counted
    streamed, lines = stream(f"{url}/llm", {"model": GPT_OSS, "stream": True, "max_tokens": 2,
                                            "messages": [{"role": "user", "content": "alpha bravo"}]})  # fmt: skip
    got = read_stream(lines)
    assert streamed.status_code == 200 and got.text == "" and got.finish_reason == "length"
    assert got.usage["completion_tokens"] == 2


def test_qwen3_is_asked_not_to_think(runner: tuple[str, FakeOllama]) -> None:
    url, fake = runner
    fake.set_behavior("*", reply_tokens=5, thinking_tokens=3)
    answer = ask(url, QWEN3).json()
    assert answer["usage"]["completion_tokens"] == 5 and fake.chat_records()[-1].body["think"] is False


def test_a_single_sequence_model_gets_one_slot_and_that_capacity(runner: tuple[str, FakeOllama]) -> None:
    url, fake = runner
    models = call("GET", f"{url}/fleet").json()["models"]
    assert (models[VL]["capacity"], models[QWEN3]["capacity"]) == (1, 4)
    fake.set_behavior("*", tokens_per_s=50, reply_tokens=10, thinking_tokens=0)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda i: ask(url, VL, messages=[{"role": "user", "content": f"p{i}"}]), range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200]
    spans = sorted((r.started_at or 0, r.finished_at or 0) for r in fake.chat_records()[-3:])
    assert all(later[0] >= earlier[1] - 0.01 for earlier, later in pairwise(spans))  # one at a time
