"""OpenAI's answer shapes: `chat.completion.chunk` SSE events, the whole `chat.completion`, the model list.

As OpenAI sends them (its published OpenAPI, CreateChatCompletionStreamResponse): every choice
chunk has `finish_reason` (null until the last), the first carries `delta.role`, and with
`stream_options.include_usage` every chunk has `"usage": null` and a last chunk with empty
`choices` carries the usage, before `data: [DONE]`. A stream that fails after its first chunk
ends as vLLM ends one (`create_streaming_error_response` in serving_chat's stream generator):
`data: {"error": {...}}`, then `data: [DONE]`; OpenAI's Python SDK raises an APIError with that
message (openai/_streaming.py, Stream.__stream__). Chunks are built by string templates: this
runs per token.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from common.errors import RunnerError
from common.events import Done, Failed, Tokens, ToolCalls
from common.fleet import WorkerRecord, capacity, model_features, model_status
from common.settings import Settings
from web.sse import DONE_LINE

OWNER = "llm-runner"
# What a stream that ended with an interrupted generation says (the engine gave no reason).
INTERRUPTED = "the engine's generation was interrupted before it completed; retry"


def usage(prompt: int, completion: int) -> dict[str, int]:
    """OpenAI's CompletionUsage."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def error_object(message: str, kind: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's ErrorResponse body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def finish_reason(reason: str, called: bool) -> str:
    """OpenAI's finish_reason: a natural stop after tool calls is `tool_calls` (as Ollama's own OpenAI
    layer says it: openai/openai.go FinishChunk)."""
    if reason == "stop" and called:
        return "tool_calls"
    return reason if reason in ("stop", "length", "tool_calls") else "stop"


class OpenAIAnswer:
    """One answer in OpenAI's shapes: its chunks as they come, or the whole of it."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self._head = (f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
                      f'"model":{json.dumps(self.model)},')  # fmt: skip
        self._open = f'{self._head}"choices":[{{"index":0,"delta":{{'
        self._usage_null = ',"usage":null' if include_usage else ""
        self._running = f'}},"finish_reason":null}}]{self._usage_null}}}\n\n'
        self.role_sent = False
        self.called = False  # tool calls were sent

    def _role(self, content_null: bool = False) -> str:
        if self.role_sent:
            return ""
        self.role_sent = True
        return '"role":"assistant","content":null,' if content_null else '"role":"assistant",'

    def content(self, event: Tokens, sent_tokens: int) -> bytes:
        """A chunk with some text (already a JSON string literal)."""
        return f'{self._open}{self._role()}"content":{event.text_json}{self._running}'.encode()

    def tool_calls(self, event: ToolCalls) -> bytes:
        """A chunk with tool-call deltas, as OpenAI streams them."""
        self.called = True
        return f'{self._open}{self._role(content_null=True)}"tool_calls":{event.calls_json}{self._running}'.encode()

    def end(self, done: Done, sent_tokens: int) -> bytes:
        """The last choice chunk (empty delta, finish_reason), the usage chunk if asked, `[DONE]`."""
        if done.finish_reason == "error":
            return self.broken(Failed(INTERRUPTED), sent_tokens)
        delta = '"role":"assistant","content":""' if not self.role_sent else ""
        reason = finish_reason(done.finish_reason, self.called)
        out = f'{self._open}{delta}}},"finish_reason":"{reason}"}}]{self._usage_null}}}\n\n'
        if self.include_usage:
            counts = json.dumps(usage(done.prompt_tokens, done.completion_tokens))
            out += f'{self._head}"choices":[],"usage":{counts}}}\n\n'
        return out.encode() + DONE_LINE

    def broken(self, failed: Failed, sent_tokens: int) -> bytes:
        """A failure after the first chunk: vLLM's error event, then `[DONE]`."""
        kind = "invalid_request_error" if failed.status == 400 else "server_error"
        return f"data: {json.dumps(error_object(failed.msg, kind))}\n\n".encode() + DONE_LINE

    def unfinished(self, done: Done) -> RunnerError | None:
        """Why an ended generation cannot be answered 200 (an interrupted one: never a partial
        answer read as a success), else None."""
        return RunnerError(INTERRUPTED, reason="interrupted") if done.finish_reason == "error" else None

    def answer(self, text: str, calls: list[dict[str, Any]], done: Done) -> dict[str, Any]:
        """The whole `chat.completion`; `calls` are the tool-call deltas, merged here."""
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None,
                                   "refusal": None}  # fmt: skip
        if calls:
            message["tool_calls"] = merge_tool_calls(calls)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason(done.finish_reason, bool(calls)),
                }
            ],
            "usage": usage(done.prompt_tokens, done.completion_tokens),
        }


def merge_tool_calls(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whole tool calls from their streamed deltas, by index: the first delta's id, type and name,
    every delta's arguments joined (as the SDK's accumulate_delta joins them)."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        function = delta.get("function") or {}
        call = calls.get(delta["index"])
        if call is None:
            calls[delta["index"]] = {"id": delta.get("id", ""), "type": "function",
                                     "function": {"name": function.get("name", ""),
                                                  "arguments": function.get("arguments", "")}}  # fmt: skip
        else:
            call["function"]["arguments"] += function.get("arguments", "")
    return [calls[i] for i in sorted(calls)]


def model_entry(model_id: str, records: list[WorkerRecord] | None) -> dict[str, Any]:
    """One `model` object, with what this runner knows of it: its capacity, status and features."""
    features = model_features(records or [], model_id)
    return {
        "id": model_id,
        "object": "model",
        "created": 0,  # unknown: the models are the operator's, not this runner's
        "owned_by": OWNER,
        "status": model_status(records or [], model_id),
        "capacity": capacity(records or [], model_id),
        # null while no worker serves it; else the OpenAI options its engine takes (docs/openai.md)
        "features": features,
    }


def models_list(settings: Settings, records: list[WorkerRecord] | None, only: str | None = None) -> dict[str, Any]:
    """`GET /v1/models`: every served model id (or the one a per-model prefix names)."""
    ids = [m.model_id for m in settings.models if only is None or m.model_id == only]
    return {"object": "list", "data": [model_entry(model_id, records) for model_id in ids]}
