"""Validation of `POST /v1/chat/completions` into the same typed request /llm makes, or an OpenAI 4xx.

What each field does, per engine, is in docs/openai.md. Fields this runner does not take are
ignored, as OpenAI-compatible servers do, except those that would change the answer's shape
(`n` other than 1, non-text content parts, tools or formats a model's engine does not take),
which are refused with a 400 naming them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from common.errors import BadRequest, RunnerError
from common.fleet import WorkerRecord, model_features
from common.models import ModelSpec
from common.settings import Settings
from web import openai_messages
from web.openai_messages import InvalidParam
from web.validation import OPENAI_API, LLMRequest, boolean_field, integer_field, load_json, number_field, show_value

MAX_STOP = 16  # OpenAI takes 4; engines take more, and each is checked on every token
SEED_RANGE = (-(2**63), 2**63 - 1)
FORMATS = ("text", "json_object", "json_schema")


class ModelNotFound(RunnerError):
    """The request names no model this runner serves (404, OpenAI's `model_not_found`)."""

    status = 404
    reason = "model_not_found"


def model_not_found(model_id: str, settings: Settings) -> ModelNotFound:
    """The 404 for a model id nobody here serves, listing those that are."""
    served = ", ".join(m.model_id for m in settings.models)
    return ModelNotFound(f"The model `{model_id[:200]}` does not exist on this runner; it serves: {served}")


@contextmanager
def _field(name: str) -> Iterator[None]:
    """Name the field in the 400 that validating it raises."""
    try:
        yield
    except InvalidParam:
        raise
    except BadRequest as exc:
        raise InvalidParam(exc.msg, name) from None


def parse_chat_request(body: bytes, settings: Settings, scope: ModelSpec) -> LLMRequest:
    """Parse and check a request body; raises InvalidParam (400) or ModelNotFound (404)."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object with 'model' and 'messages'")
    model = _model(data.get("model"), settings, scope)
    if data.get("n") not in (None, 1):
        raise InvalidParam(f"'n' must be 1 (one choice per request); got {show_value(data.get('n'))}", "n")
    tools = openai_messages.tools(data.get("tools"))
    with _field("stream"):
        stream = boolean_field(data, "stream", False)
    with _field("temperature"):
        temperature = number_field(data, "temperature", 1.0, low=0.0, high=2.0)
    with _field("top_p"):
        top_p = number_field(data, "top_p", 1.0, low=0.0, high=1.0)
    return LLMRequest(
        model=model,
        messages=openai_messages.messages(data.get("messages"), settings),
        max_tokens=_max_tokens(data, settings),
        temperature=temperature,
        top_p=top_p,
        top_k=-1,  # not OpenAI's: the engine's sampler runs without it
        stream=stream,
        stop=_stop(data.get("stop")),
        seed=_seed(data),
        response_format=_response_format(data.get("response_format")),
        tools=tools,
        tool_choice=openai_messages.tool_choice(data.get("tool_choice"), tools),
        include_usage=stream and _include_usage(data.get("stream_options")),
        api=OPENAI_API,
    )


def _model(value: Any, settings: Settings, scope: ModelSpec) -> ModelSpec:
    if value is None or value == "":
        return scope  # the URL's model, or the runner's first
    if not isinstance(value, str):
        raise InvalidParam("'model' must be a string: one of the ids GET /v1/models lists", "model")
    spec = settings.model(value)
    if spec is None:
        raise model_not_found(value, settings)
    return spec


def _max_tokens(data: dict[str, Any], settings: Settings) -> int:
    """The smaller of max_tokens and max_completion_tokens (either may be given), at most MAX_TOKENS;
    neither: MAX_TOKENS, and the engine stops at its context, as for /llm."""
    limits = []
    for name in ("max_tokens", "max_completion_tokens"):
        if data.get(name) is not None:
            with _field(name):
                limits.append(integer_field(data, name, 0, low=1))
    return min([*limits, settings.max_tokens_limit])


def _stop(value: Any) -> list[str] | None:
    stops = [value] if isinstance(value, str) else value
    if stops is None or stops == []:
        return None
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
        raise InvalidParam(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
    return list(stops)


def _seed(data: dict[str, Any]) -> int | None:
    if data.get("seed") is None:
        return None
    with _field("seed"):
        return integer_field(data, "seed", 0, low=SEED_RANGE[0], high=SEED_RANGE[1])


def _response_format(value: Any) -> dict[str, Any] | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if value is None or kind == "text":
        return None
    if kind not in FORMATS:
        raise InvalidParam(f"'response_format.type' must be one of {', '.join(FORMATS)}; got {show_value(kind)}",
                           "response_format")  # fmt: skip
    assert isinstance(value, dict)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidParam("'response_format.json_schema' must be {name, schema: <a JSON schema object>}",
                               "response_format")  # fmt: skip
    return dict(value)


def _include_usage(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict):
        raise InvalidParam("'stream_options' must be an object such as {\"include_usage\": true}", "stream_options")
    with _field("stream_options"):
        return boolean_field(value, "include_usage", False)


def features_asked(req: LLMRequest) -> list[str]:
    """The engine features (common.fleet.FEATURES) the request needs from its model."""
    asked = []
    if req.tools is not None and req.tool_choice != "none":
        asked.append("tools")
        if req.tool_choice not in (None, "auto"):
            asked.append("tool_choice")
    if req.response_format is not None:
        asked.append("response_format")
    return asked


def check_features(req: LLMRequest, records: list[WorkerRecord]) -> None:
    """Refuse (400) a feature the model's workers do not all take; never drop it silently.

    Nothing is checked while no worker serves the model: admission then refuses the request anyway.
    """
    asked = features_asked(req)
    have = model_features(records, req.model.model_id) if asked else None
    missing = [f for f in asked if have is not None and f not in have]
    if missing:
        asked_for = " or ".join(repr(f) for f in missing)
        raise InvalidParam(f"model {req.model.model_id!r} does not take {asked_for} on this runner (its engine "
                           "lacks it; GET /v1/models lists what each model takes)", missing[0])  # fmt: skip
