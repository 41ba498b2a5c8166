"""What the fake OpenAI-compatible engine does with stop, response_format and tools, per server.

llama-cpp-python (llama_cpp/llama_chat_format.py, chat_formatter_to_chat_completion_handler, the
handler of a model's own chat template; llama_cpp/llama.py _create_completion):
- `stop`: the text ends before the first stop string, finish_reason "stop";
- `response_format`: only types "text" and "json_object" exist (llama_cpp/llama_types.py,
  ChatCompletionRequestResponseFormat): any other is refused by FastAPI's validation with a 422
  whose `detail` lists the errors; json_object constrains the answer to JSON by a grammar
  (_grammar_for_response_format);
- `tools`: a call is made only when `tool_choice` names a function (its parameters become the
  grammar); streamed by _convert_completion_to_chat_function: a first chunk with the role, then a
  delta per token repeating the call's index, id (`call__0_<name>_<completion id>`), type and
  name with a piece of the arguments, then finish_reason "tool_calls". Tools without a named
  choice are handed to the template and the answer is plain text.
vLLM (serving_chat.py, chat_completion_stream_generator): `stop` the same; json_object and
json_schema both constrain the answer; tool calls stream as OpenAI streams them (id, type and
name on a call's first delta, the arguments after) and end with finish_reason "tool_calls".
"""

from __future__ import annotations

import json
from typing import Any

from tests.fake_ollama_options import json_tokens


def refusal(body: dict[str, Any], vllm: bool) -> tuple[int, dict[str, Any]] | None:
    """The validation error llama-cpp-python answers for a response_format it does not define."""
    kind = (body.get("response_format") or {}).get("type")
    if vllm or kind in (None, "text", "json_object"):
        return None
    return 422, {"detail": [{"type": "literal_error", "loc": ["body", "response_format", "type"],
                             "msg": "Input should be 'text' or 'json_object'", "input": kind}]}  # fmt: skip


def texts(body: dict[str, Any], natural: list[str]) -> tuple[list[str], bool]:
    """The answer's token texts (JSON when a format asks for it), cut at a stop string; whether it stopped."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        schema = fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")
        natural = json_tokens(schema, [t.strip() for t in natural])
    stops = body.get("stop")
    stops = [stops] if isinstance(stops, str) else stops or []
    text = "".join(natural)
    found = [p for p in (text.find(s) for s in stops) if p >= 0]
    if not found:
        return natural, False
    cut, kept, at = min(found), [], 0
    for token in natural:
        if at + len(token) > cut:
            if cut > at:
                kept.append(token[: cut - at])
            break
        kept.append(token)
        at += len(token)
    return kept, True


def tool_call(body: dict[str, Any], calls: list[dict[str, Any]] | None, vllm: bool) -> dict[str, Any] | None:
    """The call the engine makes, if it makes one: {"name", "arguments"} (a JSON text)."""
    choice = body.get("tool_choice")
    if not body.get("tools") or not calls or choice == "none":
        return None
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        made = next((c for c in calls if c["name"] == name), {"name": name, "arguments": {}})
    elif vllm:
        made = calls[0]
    else:
        return None  # llama-cpp-python: no named choice, no call
    return {"name": made["name"], "arguments": json.dumps(made.get("arguments", {}))}


def tool_call_deltas(call: dict[str, Any], completion_id: str, vllm: bool) -> list[dict[str, Any]]:
    """The `delta.tool_calls` of each chunk that streams the call, as the server streams them."""
    pieces = [call["arguments"][i : i + 5] for i in range(0, len(call["arguments"]), 5)] or [""]
    call_id = f"call__0_{call['name']}_{completion_id}"
    if vllm:
        first = {"index": 0, "id": call_id, "type": "function", "function": {"name": call["name"], "arguments": ""}}
        return [first, *({"index": 0, "function": {"arguments": p}} for p in pieces)]
    return [{"index": 0, "id": call_id, "type": "function", "function": {"name": call["name"], "arguments": p}}
            for p in pieces]  # fmt: skip
