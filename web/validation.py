"""Validation of go-livepeer's `POST /llm` body into a typed request, or a 400 a person can act on."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from common.errors import BadRequest
from common.jobs import GenerateJob
from common.models import ModelSpec
from common.settings import Settings

ROLES = ("system", "user", "assistant")
MAX_TOP_K = 1_000_000


LLM_API, OPENAI_API = "llm", "openai"


@dataclass(frozen=True)
class LLMRequest:
    """A validated chat request of either API (/llm or /v1/chat/completions), its model resolved."""

    model: ModelSpec
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stream: bool
    # The OpenAI API's own options (none on /llm: go-livepeer never forwards them).
    stop: list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    include_usage: bool = False
    api: str = LLM_API

    @property
    def waits_for_room(self) -> bool:
        """Whether the job waits in the queue when its model's room is full, rather than being
        refused at once: only go-livepeer's streams, which it cannot read a refusal of."""
        return self.stream and self.api == LLM_API

    def job(self, reply_to: str) -> GenerateJob:
        """The job a worker runs for this request, its events going to `reply_to`."""
        return GenerateJob(
            reply_to=reply_to, model_id=self.model.model_id, tag=self.model.tag, messages=self.messages,
            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            stream=self.stream, stop=self.stop, seed=self.seed, response_format=self.response_format,
            tools=self.tools, tool_choice=self.tool_choice,
        )  # fmt: skip


def parse_llm_request(body: bytes, settings: Settings, default_model: ModelSpec) -> LLMRequest:
    """Parse and check a request body; raises BadRequest naming the first problem found."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object with a 'messages' list")
    return LLMRequest(
        model=_model(data.get("model"), settings, default_model),
        messages=_messages(data.get("messages"), settings),
        # Any max_tokens >= 1 is served, as by Livepeer's reference runner (go-livepeer has already
        # charged the user for it): the generation stops at MAX_TOKENS or when the model's
        # context is full, with finish_reason "length".
        max_tokens=min(integer_field(data, "max_tokens", 256, low=1), settings.max_tokens_limit),
        temperature=number_field(data, "temperature", 0.7, low=0.0, high=2.0),
        top_p=number_field(data, "top_p", 1.0, low=0.0, high=1.0),
        top_k=integer_field(data, "top_k", -1, low=-MAX_TOP_K, high=MAX_TOP_K),
        stream=boolean_field(data, "stream", False),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def load_json(body: bytes) -> Any:
    """The body as JSON (NaN and Infinity refused); BadRequest naming what is wrong with it."""
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
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {show_value(role)}")
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string; got {show_value(content)}")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"messages[{i}].content is not valid Unicode (lone surrogate)") from None
        total += len(content)
        if total > settings.max_prompt_chars:
            raise BadRequest(f"messages are too long: more than {settings.max_prompt_chars} characters in all")
        messages.append({"role": role, "content": content})
    return messages


def integer_field(data: dict[str, Any], name: str, default: int, *, low: int, high: int | None = None) -> int:
    """`data[name]` as a whole number in range (a float with no fraction counts), or `default`."""
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{name}' must be an integer; got {show_value(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise BadRequest(f"'{name}' must be an integer; got {value!r}")
        value = int(value)
    if high is None and value < low:
        raise BadRequest(f"'{name}' must be at least {low}; got {value}")
    if high is not None and not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}; got {value}")
    return value


def number_field(data: dict[str, Any], name: str, default: float, *, low: float, high: float) -> float:
    """`data[name]` as a finite number in range, or `default`."""
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{name}' must be a number; got {show_value(value)}")
    if not (math.isfinite(value) and low <= value <= high):
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g}; got {value!r}")
    return float(value)


def boolean_field(data: dict[str, Any], name: str, default: bool) -> bool:
    """`data[name]` as true or false, or `default`."""
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false; got {show_value(value)}")
    return value


def show_value(value: Any) -> str:
    """A short, safe rendering of a bad value for an error message."""
    if value is None:
        return "nothing"
    text = json.dumps(value)[:60] if isinstance(value, (str, int, float, bool)) else type(value).__name__
    return text
