"""The OpenAI-compatible wire as pure functions: request body, SSE reading, error mapping, settings."""

from __future__ import annotations

import json

import pytest

from common.errors import BackendError, ConfigError
from common.jobs import GenerateJob
from common.settings import Settings
from worker.openai_wire import Interrupted, SseParser, chat_body, error_for_status, served_models

JOB = GenerateJob(reply_to="ch", model_id="org/Model", tag="served", messages=[{"role": "user", "content": "hi"}],
                  max_tokens=50, temperature=0.3, top_p=0.9, top_k=-1, stream=True)  # fmt: skip


def sse(*events: object) -> list[bytes]:
    out: list[bytes] = []
    for event in events:
        out += [b"data: " + (event.encode() if isinstance(event, str) else json.dumps(event).encode()), b""]
    return out


def chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> dict[str, object]:
    delta: dict[str, str] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_the_body_streams_and_asks_for_usage() -> None:
    body = json.loads(chat_body(JOB, "served", max_tokens=50))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"], body["temperature"], body["top_p"]) == ("served", 50, 0.3, 0.9)
    assert "top_k" not in body
    with_k = GenerateJob(**{**JOB.to_payload(), "top_k": 20})
    assert json.loads(chat_body(with_k, "served", max_tokens=5))["top_k"] == 20


def test_llama_cpp_python_stream_without_usage_counts_what_was_relayed() -> None:
    parser = SseParser()
    first = parser.feed(sse(chunk(role=True), chunk("Hel"), chunk("lo")))
    assert first.texts == ["Hel", "lo"] and first.final is None
    end = parser.feed([b": ping - 2026-01-01 00:00:00", *sse(chunk(finish="stop"), "[DONE]")])
    assert end.final is not None
    assert (end.final.finish_reason, end.final.prompt_eval_count, end.final.eval_count) == ("stop", 0, 2)


def test_the_engines_usage_wins_when_it_sends_one() -> None:
    parser = SseParser()
    usage = {"object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}  # fmt: skip
    parsed = parser.feed(sse(chunk("a"), chunk("b", finish="length"), usage, "[DONE]"))
    assert parsed.texts == ["a", "b"]
    assert parsed.final is not None
    assert (parsed.final.finish_reason, parsed.final.prompt_eval_count, parsed.final.eval_count) == ("length", 12, 3)


def test_done_without_finish_reason_is_an_interruption_and_keeps_the_tokens() -> None:
    parsed = SseParser().feed(sse(chunk(role=True), chunk("x"), "[DONE]"))
    assert parsed.texts == ["x"]
    assert isinstance(parsed.error, Interrupted)


def test_eof_without_finish_reason_is_an_interruption() -> None:
    parser = SseParser()
    parser.feed(sse(chunk("x")))
    with pytest.raises(Interrupted):
        parser.end()


def test_an_error_event_mid_stream_fails_with_the_engines_message() -> None:
    parsed = SseParser().feed(sse(chunk("x"), {"error": {"message": "CUDA out of memory", "code": 500}}))
    assert parsed.texts == ["x"]
    assert parsed.error is not None and "CUDA out of memory" in parsed.error.msg


@pytest.mark.parametrize(
    ("status", "body", "http", "words"),
    [
        (400, {"error": {"message": "This model's maximum context length is 2048 tokens"}}, 400, "maximum context"),
        (404, {"error": {"message": "The model `x` does not exist."}}, 500, "does not serve"),
        (401, {"detail": "Invalid API key"}, 500, "OPENAI_API_KEY"),
        (503, {"object": "error", "message": "overloaded"}, 500, "insufficient capacity"),
        (500, {"error": {"message": "boom"}}, 500, "boom"),
        (422, {"detail": [{"msg": "field required"}]}, 500, "field required"),
    ],
)
def test_engine_errors_map_to_go_livepeers_statuses(status: int, body: object, http: int, words: str) -> None:
    error = error_for_status(status, json.dumps(body).encode(), served="m", url="http://e/v1")
    assert isinstance(error, BackendError)
    assert error.status == http and words in error.msg


def test_served_models_keep_vllms_context_length() -> None:
    answer = {"data": [{"id": "a", "max_model_len": 4096}, {"id": "b"}, {"nope": 1}]}
    models = served_models(answer)
    assert set(models) == {"a", "b"} and models["a"].max_model_len == 4096 and models["b"].max_model_len is None


def test_settings_for_an_openai_backend() -> None:
    env = {"BACKEND": "openai", "OPENAI_BASE_URL": "https://engine:8000/v1/", "OPENAI_API_KEY": "k",
           "MODELS": "org/A,org/B=b-served", "SLOTS": "64"}  # fmt: skip
    s = Settings.from_env(env)
    assert (s.backend, s.openai_base_url, s.openai_api_key, s.slots) == ("openai", "https://engine:8000/v1", "k", 64)
    assert [(m.model_id, m.tag) for m in s.models] == [("org/A", "org/A"), ("org/B", "b-served")]
    assert Settings.from_env({"OLLAMA_NUM_PARALLEL": "4"}).slots == 4
    assert Settings.from_env({}).backend == "ollama"
    with pytest.raises(ConfigError, match="BACKEND"):
        Settings.from_env({"BACKEND": "vllm"})
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        Settings.from_env({"OPENAI_BASE_URL": "ftp://x"})
