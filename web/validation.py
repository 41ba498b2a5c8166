"""Validation of go-livepeer's `POST /llm` body into a typed request, or a 400 a person can act on."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from common.errors import BadRequest
from common.models import ModelSpec
from common.settings import Settings

ROLES = ("system", "user", "assistant")
MAX_TOP_K = 1_000_000


@dataclass(frozen=True)
class LLMRequest:
    """A validated /llm request, with its model resolved to a configured one."""

    model: ModelSpec
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stream: bool


def parse_llm_request(body: bytes, settings: Settings, default_model: ModelSpec) -> LLMRequest:
    """Parse and check a request body; raises BadRequest naming the first problem found."""
    data = _load_json(body)
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object with a 'messages' list")
    return LLMRequest(
        model=_model(data.get("model"), settings, default_model),
        messages=_messages(data.get("messages"), settings),
        # Any max_tokens >= 1 is served, as by Livepeer's reference runner (go-livepeer has already
        # charged the user for it): the generation stops at MAX_TOKENS or when the model's
        # context is full, with finish_reason "length".
        max_tokens=min(_integer(data, "max_tokens", 256, low=1), settings.max_tokens_limit),
        temperature=_number(data, "temperature", 0.7, low=0.0, high=2.0),
        top_p=_number(data, "top_p", 1.0, low=0.0, high=1.0),
        top_k=_integer(data, "top_k", -1, low=-MAX_TOP_K, high=MAX_TOP_K),
        stream=_boolean(data, "stream", False),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _load_json(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest("request body is empty; send a JSON object with a 'messages' list")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _model(value: Any, settings: Settings, default_model: ModelSpec) -> ModelSpec:
    if value is None or value == "":
        return default_model
    if not isinstance(value, str):
        raise BadRequest("'model' must be a string (a model id such as the aiModels.json model_id)")
    spec = settings.model(value)
    if spec is None:
        served = ", ".join(m.model_id for m in settings.models)
        raise BadRequest(f"unknown model {value[:200]!r}; this runner serves: {served}")
    return spec


def _messages(value: Any, settings: Settings) -> list[dict[str, str]]:
    if value is None:
        raise BadRequest("'messages' is required: a list of {role, content} objects")
    if not isinstance(value, list):
        raise BadRequest("'messages' must be a list of {role, content} objects")
    if not value:
        raise BadRequest("'messages' must not be empty")
    if len(value) > settings.max_messages:
        raise BadRequest(f"too many messages: {len(value)} (at most {settings.max_messages})")
    messages, total = [], 0
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {_show(role)}")
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string; got {_show(content)}")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"messages[{i}].content is not valid Unicode (lone surrogate)") from None
        total += len(content)
        if total > settings.max_prompt_chars:
            raise BadRequest(f"messages are too long: more than {settings.max_prompt_chars} characters in all")
        messages.append({"role": role, "content": content})
    return messages


def _integer(data: dict[str, Any], name: str, default: int, *, low: int, high: int | None = None) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{name}' must be an integer; got {_show(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise BadRequest(f"'{name}' must be an integer; got {value!r}")
        value = int(value)
    if high is None and value < low:
        raise BadRequest(f"'{name}' must be at least {low}; got {value}")
    if high is not None and not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}; got {value}")
    return value


def _number(data: dict[str, Any], name: str, default: float, *, low: float, high: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{name}' must be a number; got {_show(value)}")
    if not (math.isfinite(value) and low <= value <= high):
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g}; got {value!r}")
    return float(value)


def _boolean(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false; got {_show(value)}")
    return value


def _show(value: Any) -> str:
    """A short, safe rendering of a bad value for an error message."""
    if value is None:
        return "nothing"
    text = json.dumps(value)[:60] if isinstance(value, (str, int, float, bool)) else type(value).__name__
    return text
