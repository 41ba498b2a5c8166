"""encoding/json as go-livepeer's generated types see the runner's answers (ai/worker/runner.gen.go).

Go decodes into typed structs: a value of the wrong JSON type for its field is an error, and
go-livepeer then drops the whole chunk or answer. Keys match fields case-insensitively, unknown
keys are ignored, null leaves a field's zero value.
"""

from __future__ import annotations

import json
from typing import Any

INT64 = (-(2**63), 2**63 - 1)


class _Mismatch(Exception):
    """A JSON value of the wrong type for its Go field: json.Unmarshal returns an error."""


def _go_int(value: Any) -> int:
    # encoding/json decodes a number into an int field with strconv.ParseInt on its literal:
    # 1.0, 1e3 (Python floats), strings and booleans are errors; null leaves the zero value.
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not INT64[0] <= value <= INT64[1]:
        raise _Mismatch(value)
    return value


def _go_str(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Mismatch(value)
    return value


def _go_object(value: Any, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Decode a JSON object into a struct with these fields (name → decoder); null gives None.

    encoding/json matches keys to fields case-insensitively and ignores unknown keys.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Mismatch(value)
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = next((f for f in fields if f.lower() == key.lower()), None)
        if name is not None:
            out[name] = fields[name](item)
    return out


def _message(value: Any) -> dict[str, Any] | None:
    # LLMMessage: Content string, Role string (ai/worker/runner.gen.go).
    return _go_object(value, {"content": _go_str, "role": _go_str})


def _finish(value: Any) -> str | None:
    return None if value is None else _go_str(value)


def _choice(value: Any) -> dict[str, Any]:
    # LLMChoice: Delta *LLMMessage, FinishReason *string, Index int, Message *LLMMessage.
    # A null element of the choices array decodes to a zero LLMChoice.
    choice = _go_object(value, {"delta": _message, "finish_reason": _finish, "index": _go_int, "message": _message})
    return choice or {}


def _choices(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Mismatch(value)
    return [_choice(item) for item in value]


def _usage(value: Any) -> dict[str, int]:
    # LLMTokenUsage: CompletionTokens, PromptTokens, TotalTokens int (a field left out stays 0).
    usage = _go_object(value, {"completion_tokens": _go_int, "prompt_tokens": _go_int, "total_tokens": _go_int})
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, **(usage or {})}


_LLM_RESPONSE = {"choices": _choices, "created": _go_int, "id": _go_str, "model": _go_str, "usage": _usage}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Go's decoder knows no NaN or Infinity


def decode_llm_response(data: bytes) -> dict[str, Any] | None:
    """json.Unmarshal(data, &worker.LLMResponse{}) (ai/worker/runner.gen.go): the decoded
    response, or None where Go returns an error (go-livepeer then drops the chunk).

    A float `created`, a numeric `content` or a string `usage` is an error for Go's typed
    decoder even though the JSON is valid. `null` decodes to an empty response (no choices).
    """
    try:
        # Go replaces invalid UTF-8 inside strings with U+FFFD instead of failing.
        value = json.loads(data.decode("utf-8", "replace"), parse_constant=_reject_constant)
    except ValueError:
        return None
    try:
        return _go_object(value, _LLM_RESPONSE) or {}
    except _Mismatch:
        return None


def zero_usage() -> dict[str, int]:
    """LLMTokenUsage's zero value (a response without `usage`)."""
    return _usage(None)


def decode_http_error(body: bytes) -> str | None:
    """json.Unmarshal into worker.HTTPError{Detail APIError{Msg string}} (ai/worker/runner.gen.go):
    detail.msg, or None where Go returns an error."""
    try:
        value = json.loads(body.decode("utf-8", "replace"), parse_constant=_reject_constant)
        error = _go_object(value, {"detail": lambda d: _go_object(d, {"msg": _go_str})}) or {}
    except (ValueError, _Mismatch):
        return None
    return str((error.get("detail") or {}).get("msg", ""))
