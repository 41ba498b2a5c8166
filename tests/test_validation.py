"""Request validation: what go-livepeer sends passes; every malformed body is a 400 a person can act on."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from common.errors import BadRequest
from common.models import parse_models
from common.settings import Settings
from web.validation import parse_llm_request

SETTINGS = Settings(models=parse_models("meta-llama/Meta-Llama-3.1-8B-Instruct, Qwen/Qwen2.5-7B-Instruct"))
DEFAULT = SETTINGS.default_model
GO_LIVEPEER_BODY = {
    "model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
    "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    "max_tokens": 256,
    "temperature": 0.7,
    "top_p": 1.0,
    "top_k": -1,
    "stream": True,
}


def parse(body: Any, settings: Settings = SETTINGS) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_llm_request(raw, settings, settings.default_model)


def test_go_livepeer_body_is_accepted_as_sent() -> None:
    req = parse(GO_LIVEPEER_BODY)
    assert req.model.tag == "llama3.1:8b"
    assert req.messages == GO_LIVEPEER_BODY["messages"]
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.stream) == (256, 0.7, 1.0, -1, True)


def test_defaults_apply_and_empty_model_means_the_default() -> None:
    req = parse({"messages": [{"role": "user", "content": "x"}], "model": ""})
    assert req.model == DEFAULT
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.stream) == (256, 0.7, 1.0, -1, False)


def test_other_fields_are_ignored_and_other_models_resolve() -> None:
    req = parse({"messages": [{"role": "user", "content": "x", "name": "bob"}], "model": "Qwen/Qwen2.5-7B-Instruct",
                 "presence_penalty": 1, "seed": 3})  # fmt: skip
    assert req.model.tag == "qwen2.5:7b"
    assert req.messages == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"messages": NaN}', "not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
        ([1, 2], "JSON object"),
        ({}, "'messages' is required"),
        ({"messages": "hi"}, "must be a list"),
        ({"messages": []}, "must not be empty"),
        ({"messages": ["hi"]}, "messages[0] must be an object"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role must be one of"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content must be a string"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "content must be a string"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "not valid Unicode"),
        ({"messages": [{"role": "user", "content": "x"}], "model": 3}, "'model' must be a string"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}, "unknown model 'gpt-4'"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "10"}, "'max_tokens' must be an integer"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, "'max_tokens' must be an integer"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "'max_tokens' must be an integer"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "'max_tokens' must be at least 1"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}, "'max_tokens' must be at least 1"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 2.5}, "'temperature' must be between"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "'temperature' must be a number"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": -0.1}, "'top_p' must be between"),
        ({"messages": [{"role": "user", "content": "x"}], "top_k": 10**12}, "'top_k' must be between"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "'stream' must be true or false"),
    ],
)
def test_malformed_bodies_are_rejected_with_a_reason(body: Any, says: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(body)
    assert says in caught.value.msg
    assert caught.value.status == 400


def test_unknown_model_lists_what_is_served() -> None:
    with pytest.raises(BadRequest, match=re.escape("this runner serves: meta-llama/Meta-Llama-3.1-8B-Instruct, Qwen")):
        parse({"messages": [{"role": "user", "content": "x"}], "model": "nope"})


def test_limits_on_messages_and_length_are_configurable() -> None:
    tight = SETTINGS.replace(max_messages=2, max_prompt_chars=10, max_tokens_limit=5)
    with pytest.raises(BadRequest, match="too many messages: 3"):
        parse({"messages": [{"role": "user", "content": "a"}] * 3}, tight)
    with pytest.raises(BadRequest, match="too long"):
        parse({"messages": [{"role": "user", "content": "x" * 11}]}, tight)
    assert parse({"messages": [{"role": "user", "content": "x"}], "max_tokens": 6}, tight).max_tokens == 5


@pytest.mark.parametrize("asked", [8192, 8193, 100_000, 10**9, 2**63 - 1, 10**30, 1e6])
def test_any_max_tokens_of_at_least_one_is_accepted_and_bounded_by_max_tokens(asked: int) -> None:
    req = parse({"messages": [{"role": "user", "content": "x"}], "max_tokens": asked})
    assert req.max_tokens == min(int(asked), SETTINGS.max_tokens_limit) == min(int(asked), 8192)


def test_nulls_mean_defaults_and_integral_floats_are_integers() -> None:
    req = parse({"messages": [{"role": "user", "content": "x"}], "model": None, "max_tokens": 12.0, "top_k": None,
                 "stream": None})  # fmt: skip
    assert (req.model, req.max_tokens, req.top_k, req.stream) == (DEFAULT, 12, -1, False)
