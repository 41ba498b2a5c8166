"""What the fake Ollama does with the chat options beyond sampling: stop, format, tools.

Each rule follows Ollama's source (ollama/ollama):
- `options.stop`: passed to llama-server (llm/llama_server.go Completion, `Stop`), which ends the
  generation at the first stop string without sending it (llama.cpp tools/server: STOP_TYPE_WORD),
  reported as done_reason "stop".
- `format`: "json" becomes llama-server's JSON grammar, an object its `json_schema`
  (llm/llama_server.go Completion); the answer is then JSON of that shape.
- `tools`: refused with a 400 for a model without the `tools` capability (server/routes.go
  ChatHandler → scheduleRunner → Model.CheckCapabilities, server/images.go: "<name> does not
  support tools"); a model that calls tools sends them whole in one line's `message.tool_calls`,
  content empty, each with an id `call_` + 8 characters (ChatHandler, toolCallId) and its
  function's `index` counted by the parser (tools/tools.go), then its done line.
"""

from __future__ import annotations

import json
import random
import string
from typing import Any


def json_answer(fmt: Any, words: list[str]) -> str:
    """The JSON text a constrained model answers: a schema's properties filled in, else {"answer": ...}."""
    if isinstance(fmt, dict) and isinstance(fmt.get("properties"), dict):
        return json.dumps(_instance(fmt, words), ensure_ascii=False)
    return json.dumps({"answer": " ".join(words)}, ensure_ascii=False)


def _instance(schema: Any, words: list[str]) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        return {name: _instance(prop, words) for name, prop in schema["properties"].items()}
    if kind in ("integer", "number"):
        return len(words)
    if kind == "boolean":
        return True
    if kind == "array":
        return [_instance(schema.get("items"), words)]
    return " ".join(words)


def json_tokens(fmt: Any, words: list[str]) -> list[str]:
    """The constrained answer in tokens of a few characters."""
    text = json_answer(fmt, words)
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def apply_stop(units: list[str], count: int, stops: Any) -> tuple[list[str], int, bool]:
    """The tokens up to the first stop string (its text left out): (tokens, count, whether it stopped)."""
    if not isinstance(stops, list) or not stops:
        return units, count, False
    tokens = [units[i % len(units)] for i in range(count)]
    text = "".join(tokens)
    found = [p for p in (text.find(s) for s in stops if isinstance(s, str) and s) if p >= 0]
    if not found:
        return units, count, False
    cut, kept, at = min(found), [], 0
    for token in tokens:
        if at + len(token) > cut:
            if cut > at:
                kept.append(token[: cut - at])
            break
        kept.append(token)
        at += len(token)
    return kept or [""], len(kept), True


def tool_calls_line(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The message of the line that carries a model's tool calls."""
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8)),
                "function": {"index": i, "name": call["name"], "arguments": call.get("arguments", {})},
            }
            for i, call in enumerate(calls)
        ],
    }
