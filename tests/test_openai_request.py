"""Validation of /v1/chat/completions bodies: what OpenAI's clients send passes; what cannot be served is a 400."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.errors import BadRequest
from common.fleet import READY, ModelFit, WorkerRecord
from common.models import parse_models
from common.settings import Settings
from web.openai_messages import InvalidParam
from web.openai_request import ModelNotFound, check_features, features_asked, parse_chat_request

SETTINGS = Settings(models=parse_models("meta-llama/Meta-Llama-3.1-8B-Instruct, google/gemma-2-9b-it"),
                    max_tokens_limit=1000)  # fmt: skip
LLAMA, GEMMA = (m.model_id for m in SETTINGS.models)
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
BAD_CALL = {"id": "c", "function": {"name": "f", "arguments": "{"}}


def parse(**body: Any) -> Any:
    body.setdefault("model", LLAMA)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return parse_chat_request(json.dumps(body).encode(), SETTINGS, SETTINGS.default_model)


def test_openais_defaults() -> None:
    req = parse()
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.stream) == (1000, 1.0, 1.0, -1, False)
    assert (req.stop, req.seed, req.response_format, req.tools, req.tool_choice) == (None, None, None, None, None)
    assert req.api == "openai" and not req.waits_for_room and not req.include_usage


def test_the_smaller_of_max_tokens_and_max_completion_tokens_bounded_by_max_tokens() -> None:
    assert parse(max_tokens=50, max_completion_tokens=20).max_tokens == 20
    assert parse(max_completion_tokens=70).max_tokens == 70
    assert parse(max_tokens=5000).max_tokens == 1000
    with pytest.raises(InvalidParam) as caught:
        parse(max_completion_tokens=0)
    assert caught.value.param == "max_completion_tokens"


def test_options_as_engines_take_them() -> None:
    req = parse(stop="END", seed=-3, stream=True, stream_options={"include_usage": True}, n=1,
                response_format={"type": "json_object"}, temperature=0, top_p=0.5)  # fmt: skip
    assert (req.stop, req.seed, req.include_usage, req.temperature, req.top_p) == (["END"], -3, True, 0.0, 0.5)
    assert req.response_format == {"type": "json_object"}
    assert parse(response_format={"type": "text"}).response_format is None
    assert parse(stream_options={"include_usage": True}).include_usage is False  # only streams have one


def test_messages_flattened_for_every_engine() -> None:
    messages = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "u"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
    ]  # fmt: skip
    assert parse(messages=messages, tools=[TOOL]).messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"n": 3}, "n", "'n' must be 1"),
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages", "only text parts"),
        ({"messages": [{"role": "user", "content": None}]}, "messages", "content must be"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "tool_call_id"),
        ({"messages": [{"role": "assistant", "tool_calls": [BAD_CALL]}]}, "messages", "JSON object"),
        ({"stop": ["a", ""]}, "stop", "'stop'"),
        ({"stop": ["s"] * 17}, "stop", "'stop'"),
        ({"seed": 1.5}, "seed", "integer"),
        ({"temperature": 2.5}, "temperature", "between"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"stream": True, "stream_options": []}, "stream_options", "object"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools", "function tools"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools", "letters"),
        ({"tool_choice": "auto"}, "tool_choice", "needs 'tools'"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice", "not among"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice", "'tool_choice' must be"),
        ({"model": 7}, "model", "string"),
    ],
)  # fmt: skip
def test_what_cannot_be_served_as_asked_is_a_400_naming_the_field(body: dict[str, Any], param: str,
                                                                   says: str) -> None:  # fmt: skip
    with pytest.raises(InvalidParam) as caught:
        parse(**body)
    assert caught.value.status == 400 and caught.value.param == param and says in caught.value.msg


def test_unknown_fields_are_ignored_and_a_body_that_is_not_json_is_a_400() -> None:
    assert parse(logprobs=True, user="x", frequency_penalty=1, parallel_tool_calls=False).max_tokens == 1000
    with pytest.raises(BadRequest):
        parse_chat_request(b"{", SETTINGS, SETTINGS.default_model)


def test_an_unknown_model_is_not_found_and_none_means_the_urls() -> None:
    with pytest.raises(ModelNotFound) as caught:
        parse(model="gpt-4o")
    assert caught.value.status == 404 and "gpt-4o" in caught.value.msg and LLAMA in caught.value.msg
    gemma = SETTINGS.model(GEMMA)
    assert gemma is not None
    body = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
    assert parse_chat_request(body, SETTINGS, gemma).model == gemma


def _worker(name: str, features: list[str]) -> WorkerRecord:
    fit = ModelFit(tag="t", installed=True, fits=True, features=features)
    return WorkerRecord(name=name, host="h", pid=1, version="v", ollama_url="", state=READY, models={LLAMA: fit})


def test_features_a_model_lacks_are_refused_and_none_checked_while_nobody_serves_it() -> None:
    tools = parse(tools=[TOOL])
    assert features_asked(tools) == ["tools"]
    assert features_asked(parse(tools=[TOOL], tool_choice="required")) == ["tools", "tool_choice"]
    assert features_asked(parse(tools=[TOOL], tool_choice="none")) == []
    check_features(tools, [_worker("a", ["tools", "response_format"])])
    check_features(tools, [])  # admission answers this one
    with pytest.raises(InvalidParam) as caught:  # a job may land on either worker: both must take it
        check_features(tools, [_worker("a", ["tools"]), _worker("b", ["response_format"])])
    assert caught.value.param == "tools" and "does not take 'tools'" in caught.value.msg
