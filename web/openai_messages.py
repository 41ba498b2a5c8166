"""Validation of the OpenAI API's conversation parts: messages, tools and the tool choice.

Content arrays are flattened to one string (text parts joined by a newline, as vLLM's chat
utilities do), so every engine gets plain `{role, content}` messages; a `developer` message is a
`system` one for every engine this runner drives. Tool turns keep OpenAI's shape: an assistant's
`tool_calls` (arguments a JSON object, as a string) and a `tool` message's `tool_call_id`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from common.errors import BadRequest
from common.settings import Settings
from web.validation import show_value


class InvalidParam(BadRequest):
    """A 400 about one request field, named in OpenAI's error `param`."""

    def __init__(self, msg: str, param: str) -> None:
        super().__init__(msg)
        self.param = param


ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_TOOLS = 128  # OpenAI's own bound on `tools`
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
TOOL_CHOICES = ("none", "auto", "required")


def messages(value: Any, settings: Settings) -> list[dict[str, Any]]:
    """The conversation, checked and flattened; InvalidParam (`messages`) naming the first problem."""
    if not isinstance(value, list) or not value:
        raise InvalidParam("'messages' must be a non-empty list of {role, content} objects", "messages")
    if len(value) > settings.max_messages:
        raise InvalidParam(f"too many messages: {len(value)} (at most {settings.max_messages})", "messages")
    out, total = [], 0
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidParam(f"messages[{i}] must be an object with 'role' and 'content'", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidParam(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {show_value(role)}",
                               "messages")  # fmt: skip
        calls = message.get("tool_calls") if role == "assistant" else None
        text = _content(message.get("content"), f"messages[{i}]", optional=bool(calls))
        item: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": text}
        total += len(text)
        if calls:
            item["tool_calls"] = _tool_calls(calls, f"messages[{i}].tool_calls")
            total += sum(len(c["function"]["arguments"]) for c in item["tool_calls"])
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidParam(f"messages[{i}].tool_call_id must be the id of the tool call it answers",
                                   "messages")  # fmt: skip
            item["tool_call_id"] = call_id
            if isinstance(message.get("name"), str):
                item["name"] = message["name"]
        if total > settings.max_prompt_chars:
            raise InvalidParam(f"messages are too long: more than {settings.max_prompt_chars} characters in all",
                               "messages")  # fmt: skip
        out.append(item)
    return out


def _content(value: Any, where: str, *, optional: bool) -> str:
    if value is None and optional:
        return ""
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise InvalidParam(f"{where}.content[{j}]: only text parts are served here; got "
                                   f"{show_value(kind) if kind else 'a malformed part'}", "messages")  # fmt: skip
            texts.append(part["text"])
        value = "\n".join(texts)
    if not isinstance(value, str):
        raise InvalidParam(f"{where}.content must be a string or a list of text parts; got {show_value(value)}",
                           "messages")  # fmt: skip
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParam(f"{where}.content is not valid Unicode (lone surrogate)", "messages") from None
    return value


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidParam(f"{where} must be a list of tool calls", "messages")
    calls = []
    for j, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or not isinstance(name, str):
            raise InvalidParam(f"{where}[{j}] must be {{id, type: 'function', function: {{name, arguments}}}}",
                               "messages")  # fmt: skip
        if not isinstance(arguments, str) or not isinstance(_json_or_none(arguments), dict):
            raise InvalidParam(f"{where}[{j}].function.arguments must be a JSON object, as a string", "messages")
        calls.append({"id": call["id"], "type": "function", "function": {"name": name, "arguments": arguments}})
    return calls


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def tools(value: Any) -> list[dict[str, Any]] | None:
    """The function tools offered, as sent; None when absent or empty."""
    if value is None or value == []:
        return None
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise InvalidParam(f"'tools' must be a list of at most {MAX_TOOLS} function tools", "tools")
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidParam(f"tools[{i}] must be {{type: 'function', function: {{name, parameters}}}}; only "
                               "function tools are served", "tools")  # fmt: skip
        if not isinstance(function.get("name"), str) or not TOOL_NAME.match(function["name"]):
            raise InvalidParam(f"tools[{i}].function.name must be 1 to 64 letters, digits, '_' or '-'", "tools")
        if not isinstance(function.get("parameters", {}), dict):
            raise InvalidParam(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
    return list(value)


def tool_choice(value: Any, offered: list[dict[str, Any]] | None) -> str | dict[str, Any] | None:
    """`none`, `auto`, `required` or one named function among the tools offered."""
    if value is None:
        return None
    if isinstance(value, str) and value in TOOL_CHOICES:
        choice: str | dict[str, Any] = value
    elif isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if name not in {t["function"]["name"] for t in offered or ()}:
            raise InvalidParam(f"tool_choice names {show_value(name)}, which is not among the tools offered",
                               "tool_choice")  # fmt: skip
        choice = {"type": "function", "function": {"name": name}}
    else:
        raise InvalidParam("'tool_choice' must be 'none', 'auto', 'required' or {type: 'function', function: "
                           "{name}}", "tool_choice")  # fmt: skip
    if offered is None and choice != "none":
        raise InvalidParam("'tool_choice' needs 'tools' to choose from", "tool_choice")
    return choice
