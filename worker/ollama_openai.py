"""OpenAI's chat options in Ollama's /api/chat form: response formats, tool turns, tool calls.

Each mapping follows Ollama's own OpenAI layer (ollama/ollama openai/openai.go), so a request
reaches Ollama through this runner as it would through Ollama's /v1.
"""

from __future__ import annotations

import json
from typing import Any


def ollama_format(response_format: dict[str, Any] | None) -> str | dict[str, Any] | None:
    """OpenAI's response_format as Ollama's `format`, as Ollama's own OpenAI layer maps it
    (openai/openai.go FromChatRequest): json_object → "json", json_schema → its schema."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else "json"
    return None


def has_tool_turns(messages: list[dict[str, Any]]) -> bool:
    """Whether the conversation holds tool calls or tool results (which Ollama takes in its own form)."""
    return any(m.get("role") == "tool" or "tool_calls" in m for m in messages)


def ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's tool turns in Ollama's api.Message form (openai/openai.go FromChatRequest): an
    assistant's tool calls carry their arguments as an object, not a JSON string
    (FromCompletionToolCall), and a tool result names its tool (`tool_name`, from the call its
    `tool_call_id` answers: nameFromToolCallID). Messages without tool turns are returned as they are."""
    if not has_tool_turns(messages):
        return messages
    names = {
        call.get("id"): call["function"].get("name", "")
        for m in messages
        for call in m.get("tool_calls") or ()
        if isinstance(call, dict) and isinstance(call.get("function"), dict)
    }
    out = []
    for m in messages:
        message = dict(m)
        if "tool_calls" in m:
            message["tool_calls"] = [
                {"id": c.get("id", ""), "function": {"name": c["function"].get("name", ""),
                                                    "arguments": json.loads(c["function"].get("arguments") or "{}")}}
                for c in m["tool_calls"]
            ]  # fmt: skip
        if m.get("role") == "tool":
            message["tool_name"] = m.get("name") or names.get(m.get("tool_call_id"), "")
        out.append(message)
    return out


def tool_call_deltas(calls: list[Any]) -> list[dict[str, Any]]:
    """Ollama's tool calls (whole, in one line) as OpenAI's streamed deltas, as Ollama's own OpenAI
    layer renders them (openai/openai.go ToToolCalls: the index is the parser's count of calls,
    tools/tools.go; the id is ChatHandler's `call_…`; the arguments a JSON string)."""
    out: list[dict[str, Any]] = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        index = function.get("index")
        out.append({
            "index": index if isinstance(index, int) and not isinstance(index, bool) else len(out),
            "id": str(call.get("id") or f"call_{len(out)}"),
            "type": "function",
            "function": {"name": str(function.get("name") or ""),
                         "arguments": json.dumps(function.get("arguments") or {}, ensure_ascii=False)},
        })  # fmt: skip
    return out
