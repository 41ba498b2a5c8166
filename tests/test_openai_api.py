"""The OpenAI API end to end, read by OpenAI's own Python SDK: gunicorn + worker + Redis + a fake Ollama.

Every answer the SDK reads is also validated against OpenAI's published OpenAPI document
(tests/openai_client.py, after each test).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from redis import Redis

from tests.client import call, stream
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.openai_client import RecordingTransport, check_all, check_stream, client
from tests.stack import Stack

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"  # llama3.1:8b: takes tools
GEMMA = "google/gemma-2-9b-it"  # gemma2:9b: no tools
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"  # kept for the full-room test
KEY = "sk-runner-test"
SLOTS = 3
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}  # fmt: skip


@dataclass
class Runner:
    stack: Stack
    fake: FakeOllama
    url: str


@pytest.fixture(scope="module")
def runner(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    fake = FakeOllama(slots=SLOTS).start()
    stack = Stack(str(tmp_path_factory.mktemp("openai-api")), redis_server.url)
    models = f"{LLAMA},{GEMMA},{MISTRAL}"
    try:
        stack.start_web(MODELS=models, AUTH_TOKEN=KEY, MAX_QUEUE=0)
        stack.start_worker(MODELS=models, OLLAMA_URL=fake.url, OLLAMA_NUM_PARALLEL=SLOTS, VRAM_MB=65536,
                           OLLAMA_MAX_LOADED_MODELS=3)  # fmt: skip
        yield Runner(stack, fake, stack.web_url)
    finally:
        stack.stop()
        fake.stop()


@pytest.fixture
def transport(runner: Runner) -> Iterator[RecordingTransport]:
    """The SDK's transport; every answer read through it is validated after the test."""
    runner.fake.clear_behaviors()
    runner.fake.set_behavior("*", tokens_per_s=500, reply_tokens=12)
    recording = RecordingTransport()
    yield recording
    check_all(recording.answers)
    recording.close()


@pytest.fixture
def sdk(runner: Runner, transport: RecordingTransport) -> openai.OpenAI:
    return client(f"{runner.url}/v1", KEY, transport)


def user(text: str = "alpha bravo charlie") -> list[Any]:
    return [{"role": "user", "content": text}]


def expected(words: str, n: int) -> str:
    w = words.split()
    return "".join(w[i % len(w)] + " " for i in range(n))


def last_chat(runner: Runner) -> dict[str, Any]:
    body: dict[str, Any] = runner.fake.chat_records()[-1].body
    return body


def test_a_whole_answer(runner: Runner, sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=5)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == LLAMA and answer.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content == expected("alpha bravo charlie", 5)
    assert choice.finish_reason == "length" and choice.index == 0
    assert answer.usage is not None and answer.usage.completion_tokens == 5 and answer.usage.prompt_tokens > 0
    sent = last_chat(runner)
    assert sent["options"]["num_predict"] == 5 and sent["options"]["temperature"] == 1.0


def test_a_stream_with_include_usage(runner: Runner, sdk: openai.OpenAI, transport: RecordingTransport) -> None:
    chunks = list(sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=7, stream=True,
                                              stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected("alpha bravo charlie", 7)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7 and chunks[-1].usage.total_tokens > 7
    assert all(c.usage is None for c in chunks[:-1])
    raw = check_stream(bytes(transport.answers[-1].body))
    assert all("usage" in c for c in raw)  # null until the last, as OpenAI sends it


def test_a_stream_without_include_usage_has_no_usage_chunk(sdk: openai.OpenAI, transport: RecordingTransport) -> None:
    chunks = list(sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=3, stream=True))
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "length"
    assert all("usage" not in c for c in check_stream(bytes(transport.answers[-1].body)))


def test_max_completion_tokens_and_max_tokens_the_smaller_wins(runner: Runner, sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=9, max_completion_tokens=4)
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    assert last_chat(runner)["options"]["num_predict"] == 4


def test_stop_ends_the_answer_before_the_stop_string(runner: Runner, sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=20, stop=["charlie"])
    assert answer.choices[0].message.content == "alpha bravo "
    assert answer.choices[0].finish_reason == "stop"
    assert last_chat(runner)["options"]["stop"] == ["charlie"]
    sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=3, stop="x")
    assert last_chat(runner)["options"]["stop"] == ["x"]


def test_seed_and_sampling_reach_the_engine(runner: Runner, sdk: openai.OpenAI) -> None:
    sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=3, seed=42, temperature=0.2, top_p=0.5)
    options = last_chat(runner)["options"]
    assert (options["seed"], options["temperature"], options["top_p"], options["top_k"]) == (42, 0.2, 0.5, 0)


def test_content_parts_and_developer_messages(runner: Runner, sdk: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "developer", "content": "Be terse."},
                           {"role": "user", "content": [{"type": "text", "text": "alpha"},
                                                        {"type": "text", "text": "bravo"}]}]  # fmt: skip
    answer = sdk.chat.completions.create(model=LLAMA, messages=messages, max_tokens=2)
    assert answer.choices[0].message.content == "alpha bravo "
    assert last_chat(runner)["messages"] == [{"role": "system", "content": "Be terse."},
                                            {"role": "user", "content": "alpha\nbravo"}]  # fmt: skip


def test_an_unknown_model_is_not_found(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="no/such-model", messages=user())
    assert caught.value.code == "model_not_found" and "no/such-model" in caught.value.message


def test_a_prompt_too_long_is_a_bad_request_with_its_code(runner: Runner, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=LLAMA, messages=user("word " * 5000), max_tokens=5)
    error = caught.value
    assert error.code == "context_length_exceeded" and error.param == "messages"
    assert error.body["type"] == "invalid_request_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
        ({"temperature": 3}, "temperature"),
        ({"stop": [1]}, "stop"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "messages"),
    ],
)
def test_requests_it_cannot_serve_as_asked_are_400(sdk: openai.OpenAI, fields: dict[str, Any], param: str) -> None:
    kwargs: dict[str, Any] = {"model": LLAMA, "messages": user(), **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(**kwargs)
    assert caught.value.param == param


def test_unknown_fields_are_ignored(sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=2, user="u1", logit_bias={},
                                         extra_body={"no_such_field": 1})  # fmt: skip
    assert answer.choices[0].message.content == "alpha bravo "


def test_a_bad_key_is_an_authentication_error(runner: Runner, transport: RecordingTransport) -> None:
    for base in (f"{runner.url}/v1", f"{runner.url}/{GEMMA}/v1"):
        wrong = client(base, "sk-wrong", transport)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.chat.completions.create(model=LLAMA, messages=user())
        assert caught.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_the_model_list_says_what_each_model_takes(runner: Runner, sdk: openai.OpenAI) -> None:
    listed = {m.id: m for m in sdk.models.list()}
    assert set(listed) == {LLAMA, GEMMA, MISTRAL}
    assert listed[LLAMA].model_extra["features"] == ["tools", "response_format"]  # type: ignore[index]
    assert listed[GEMMA].model_extra["features"] == ["response_format"]  # type: ignore[index]
    assert listed[LLAMA].model_extra["capacity"] == SLOTS  # type: ignore[index]
    assert sdk.models.retrieve(GEMMA).id == GEMMA
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("no/such-model")
    fleet = call("GET", f"{runner.url}/fleet", token=KEY).json()
    assert fleet["models"][GEMMA]["features"] == ["response_format"]


def test_a_per_model_prefix(runner: Runner, transport: RecordingTransport) -> None:
    scoped = client(f"{runner.url}/{GEMMA}/v1", KEY, transport)
    assert [m.id for m in scoped.models.list()] == [GEMMA]
    answer = scoped.chat.completions.create(model=GEMMA, messages=user(), max_tokens=2)
    assert answer.model == GEMMA and last_chat(runner)["model"] == "gemma2:9b"
    unknown = client(f"{runner.url}/no/such-model/v1", KEY, transport)
    with pytest.raises(openai.NotFoundError):
        unknown.chat.completions.create(model=GEMMA, messages=user())


def test_tool_calls_streamed_and_whole(runner: Runner, sdk: openai.OpenAI) -> None:
    runner.fake.set_behavior("llama3.1:8b", tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    chunks = list(sdk.chat.completions.create(model=LLAMA, messages=user("weather in Paris?"), tools=[WEATHER],
                                              stream=True))  # fmt: skip
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id and calls[0].id.startswith("call_")
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments or "") == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert last_chat(runner)["tools"] == [WEATHER]
    answer = sdk.chat.completions.create(model=LLAMA, messages=user("weather in Paris?"), tools=[WEATHER])
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls is not None and message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    # The conversation goes on with the tool's result, in Ollama's form on the way to it.
    call_id = message.tool_calls[0].id
    runner.fake.set_behavior("llama3.1:8b", tool_calls=None)
    follow = [*user("weather in Paris?"), message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call_id, "content": "sunny"}]  # fmt: skip
    sdk.chat.completions.create(model=LLAMA, messages=follow, tools=[WEATHER], max_tokens=2)
    sent = last_chat(runner)["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": call_id, "tool_name": "get_weather"}


def test_tool_choice_none_offers_no_tools(runner: Runner, sdk: openai.OpenAI) -> None:
    runner.fake.set_behavior("llama3.1:8b", tool_calls=[{"name": "get_weather", "arguments": {}}])
    answer = sdk.chat.completions.create(model=LLAMA, messages=user(), tools=[WEATHER], tool_choice="none",
                                         max_tokens=2)  # fmt: skip
    assert answer.choices[0].message.content == "alpha bravo " and "tools" not in last_chat(runner)


def test_tools_for_a_model_without_them_are_refused_never_dropped(runner: Runner, sdk: openai.OpenAI) -> None:
    before = len(runner.fake.chat_records())
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=GEMMA, messages=user(), tools=[WEATHER])
    assert caught.value.param == "tools" and "does not take 'tools'" in caught.value.message
    assert len(runner.fake.chat_records()) == before


def test_response_formats(runner: Runner, sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model=GEMMA, messages=user(), response_format={"type": "json_object"})
    assert json.loads(answer.choices[0].message.content or "") == {"answer": "alpha bravo charlie"}
    assert last_chat(runner)["format"] == "json"
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
    answer = sdk.chat.completions.create(model=LLAMA, messages=user(), response_format={
        "type": "json_schema", "json_schema": {"name": "forecast", "schema": schema}})  # fmt: skip
    assert json.loads(answer.choices[0].message.content or "") == {"city": "alpha bravo charlie", "days": 3}
    assert last_chat(runner)["format"] == schema


def test_a_failure_after_the_first_chunk_raises_in_the_sdk(runner: Runner, sdk: openai.OpenAI) -> None:
    # Every request to the engine fails after 3 tokens: the original job's and its MIGRATION_LIMIT
    # (2) continuations' text reach the client as one answer (the role once), then the error.
    runner.fake.set_behavior("llama3.1:8b", error_after=3, error="CUDA error: out of memory")
    got = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=20, stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert "out of memory" in caught.value.message
    assert "".join(got) == expected("alpha bravo charlie", 9)


def test_a_failure_before_any_token_is_a_server_error(runner: Runner, sdk: openai.OpenAI) -> None:
    runner.fake.set_behavior("llama3.1:8b", status=500, error="llama runner process has terminated")
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model=LLAMA, messages=user(), stream=True)
    assert "terminated" in caught.value.message and caught.value.body["type"] == "server_error"  # type: ignore[index]


def test_a_client_closing_a_stream_stops_the_engine_within_a_second(runner: Runner, sdk: openai.OpenAI) -> None:
    runner.fake.set_behavior("llama3.1:8b", tokens_per_s=50, reply_tokens=5000)
    stream_ = sdk.chat.completions.create(model=LLAMA, messages=user(), max_tokens=5000, stream=True)
    for _, _chunk in zip(range(3), stream_, strict=False):
        pass
    closed = time.monotonic()
    stream_.close()
    assert runner.fake.wait_for(lambda f: f.chat_records()[-1].outcome == "cancelled", timeout=10)
    record = runner.fake.chat_records()[-1]
    assert record.cancelled_at is not None and record.cancelled_at - closed <= 1.0
    assert record.tokens_sent < 5000


def test_a_full_model_is_a_rate_limit_error_after_its_retries(runner: Runner, transport: RecordingTransport) -> None:
    # MISTRAL's room is its SLOTS slots (MAX_QUEUE=0): hold them all with slow streams.
    runner.fake.set_behavior("mistral:7b", tokens_per_s=20, reply_tokens=5000)
    holders = [client(f"{runner.url}/v1", KEY, transport).chat.completions.create(
        model=MISTRAL, messages=user(f"hold {i}"), max_tokens=5000, stream=True) for i in range(SLOTS)]  # fmt: skip
    try:
        for held in holders:
            next(iter(held))
        retrying = client(f"{runner.url}/v1", KEY, transport, max_retries=1)
        started, before = time.monotonic(), len(transport.answers)
        with pytest.raises(openai.RateLimitError) as caught:
            retrying.chat.completions.create(model=MISTRAL, messages=user(), stream=True)
        refused = transport.answers[before:]
        assert [a.status for a in refused] == [429, 429]  # the SDK retried once, as told
        assert time.monotonic() - started >= 1.0  # waiting what Retry-After said
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["Retry-After"] == "1"
        assert "insufficient capacity" in caught.value.message
    finally:
        for held in holders:
            held.close()
    assert runner.fake.wait_for(lambda f: f.active_generations() == 0, timeout=10)  # the slots are free again


def test_llm_and_v1_share_the_fleet_side_by_side(runner: Runner, sdk: openai.OpenAI) -> None:
    results: dict[str, str] = {}

    def via_llm() -> None:
        body = {"model": LLAMA, "messages": user("delta echo"), "max_tokens": 6, "stream": True}
        results["llm"] = read_stream(stream(f"{runner.url}/llm", body, token=KEY)[1]).text

    thread = threading.Thread(target=via_llm)
    thread.start()
    answer = sdk.chat.completions.create(model=LLAMA, messages=user("foxtrot golf"), max_tokens=6)
    thread.join(30)
    assert results["llm"] == expected("delta echo", 6)
    assert answer.choices[0].message.content == expected("foxtrot golf", 6)
    metrics = call("GET", f"{runner.url}/metrics", token=KEY).text
    assert 'llm_api_requests_total{api="openai",outcome="ok"}' in metrics
    assert 'llm_api_requests_total{api="llm",outcome="ok"}' in metrics
