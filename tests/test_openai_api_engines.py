"""The OpenAI API over an OpenAI-compatible engine (BACKEND=openai), read by OpenAI's SDK.

The fake engine behaves as llama-cpp-python's server (tests/fake_openai.py and
tests/fake_openai_options.py): what it does with tools, formats and stop reaches the SDK as
OpenAI would send it. Every answer is validated against OpenAI's published OpenAPI.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import requests
from redis import Redis

from tests.conftest import RedisServer
from tests.fake_openai import FakeOpenAI, token_text
from tests.openai_client import RecordingTransport, check_all, client
from tests.stack import Stack

pytestmark = pytest.mark.e2e

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SERVED = "smollm2-served"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}


@dataclass
class Engine:
    stack: Stack
    fake: FakeOpenAI
    sdk: openai.OpenAI
    transport: RecordingTransport


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, FakeOpenAI]]:
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    runner = Stack(str(tmp_path_factory.mktemp("openai-engine")), redis_server.url)
    with FakeOpenAI([SERVED]) as fake:
        try:
            env = dict(MODELS=f"{MODEL}={SERVED}", BACKEND="openai", OPENAI_BASE_URL=fake.url, SLOTS=1)
            runner.start_web(**env)
            runner.start_worker(**env)
            yield runner, fake
        finally:
            runner.stop()


@pytest.fixture
def engine(stack: tuple[Stack, FakeOpenAI]) -> Iterator[Engine]:
    runner, fake = stack
    fake.set_behavior(first_token_delay=0.0, tokens_per_s=0.0, reply_tokens=8, status=None, error=None,
                      error_after=None, drop_after=None, stall_after=None, interrupt=True, usage=False,
                      ping_s=None, tool_calls=None)  # fmt: skip
    transport = RecordingTransport()
    yield Engine(runner, fake, client(f"{runner.web_url}/v1", "unused", transport), transport)
    check_all(transport.answers)
    transport.close()


def ask(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], **fields}


def test_the_options_reach_the_engine_as_sent(engine: Engine) -> None:
    answer = engine.sdk.chat.completions.create(**ask(stop=["t3"], seed=7, max_tokens=50))
    assert answer.choices[0].message.content == "t0 t1 t2 " and answer.choices[0].finish_reason == "stop"
    sent = engine.fake.chats()[-1].body
    assert (sent["stop"], sent["seed"], sent["model"]) == (["t3"], 7, SERVED)


def test_llama_cpp_pythons_tool_call_deltas_reach_the_sdk_as_openais(engine: Engine) -> None:
    engine.fake.set_behavior(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    choice = {"type": "function", "function": {"name": "get_weather"}}
    # The SDK's own accumulator (accumulate_delta) concatenates every string it is sent twice: an id or
    # a name repeated on each delta, as llama-cpp-python sends them, would come out garbled.
    with engine.sdk.chat.completions.stream(**ask(tools=[WEATHER], tool_choice=choice)) as events:
        final = events.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls" and message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]
    assert call.id == "call__0_get_weather_fake"
    assert engine.fake.chats()[-1].body["tool_choice"] == choice
    whole = engine.sdk.chat.completions.create(**ask(tools=[WEATHER], tool_choice=choice))
    calls = whole.choices[0].message.tool_calls
    assert calls is not None and [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        (call.id, "get_weather", '{"city": "Paris"}')
    ]


def test_a_format_the_engine_refuses_is_a_bad_request(engine: Engine) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        engine.sdk.chat.completions.create(**ask(response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}}))  # fmt: skip
    assert "Input should be 'text' or 'json_object'" in caught.value.message
    answer = engine.sdk.chat.completions.create(**ask(response_format={"type": "json_object"}))
    assert answer.choices[0].message.content == '{"answer": "t0 t1 t2 t3 t4 t5 t6 t7"}'


def _interrupt_after(engine: Engine, tokens: int) -> threading.Thread:
    """Another request reaches the engine once `tokens` were sent: llama-cpp-python cuts the stream."""

    before = len(engine.fake.chats())

    def other() -> None:
        assert engine.fake.wait_for(lambda f: len(f.chats()) > before and f.chats()[-1].sent_tokens >= tokens, 30)
        requests.get(f"{engine.fake.url}/models", timeout=10)

    thread = threading.Thread(target=other)
    thread.start()
    return thread


def test_an_interrupted_stream_ends_with_an_error_the_sdk_raises(engine: Engine) -> None:
    engine.fake.set_behavior(tokens_per_s=20, reply_tokens=200)
    thread = _interrupt_after(engine, 3)
    got = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in engine.sdk.chat.completions.create(**ask(max_tokens=200, stream=True)):
            got.append(chunk.choices[0].delta.content or "")
    thread.join(10)
    assert "interrupted" in caught.value.message
    assert "".join(got).startswith(token_text(0) + token_text(1) + token_text(2))


def test_an_interrupted_whole_answer_is_a_server_error_never_a_partial_answer(engine: Engine) -> None:
    engine.fake.set_behavior(tokens_per_s=20, reply_tokens=200)
    thread = _interrupt_after(engine, 3)
    with pytest.raises(openai.InternalServerError) as caught:
        engine.sdk.chat.completions.create(**ask(max_tokens=200))
    thread.join(10)
    assert "interrupted" in caught.value.message
