"""The OpenAI-compatible /v1/chat/completions wire, as pure functions: request body, SSE stream, errors.

Read from the servers' sources: vLLM (`vllm/entrypoints/openai/serving_chat.py`,
`serving_engine.py`), llama-cpp-python (`llama_cpp/server/app.py`, `llama_cpp/server/errors.py`,
`llama_cpp/llama.py`), and OpenAI's own streaming format they copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.errors import BackendError
from common.jobs import GenerateJob
from worker.ollama_wire import Final, Parsed

# Finish reasons that mean the engine gave up on the generation rather than completing it
# (vLLM reports "abort" for a request it dropped, and "error" for one that failed).
_BROKEN = frozenset({"abort", "error"})


class Interrupted(BackendError):
    """The engine ended the stream without a finish_reason: the generation was cut off, not completed."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, reason="interrupted")


def chat_body(job: GenerateJob, served: str, *, max_tokens: int, extra: dict[str, Any] | None = None) -> bytes:
    """The /chat/completions request: always streamed, with the usage asked for at the end; `extra`
    fields only for the engines that take them (a continuation's, worker.openai_flavour)."""
    body: dict[str, Any] = {
        "model": served,
        "messages": job.messages,
        "max_tokens": max_tokens,
        "temperature": job.temperature,
        "top_p": job.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if job.top_k > 0:  # not OpenAI's, but vLLM, SGLang and llama.cpp's servers take it
        body["top_k"] = job.top_k
    # The OpenAI API's options go to the engine as the client sent them; it honours or refuses them.
    for name in ("stop", "seed", "response_format", "tools", "tool_choice"):
        if (value := getattr(job, name)) is not None:
            body[name] = value
    if extra:
        body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode()


def completion_body(job: GenerateJob, served: str, *, prompt: str, stop: str, max_tokens: int) -> bytes:
    """A /completions request for a prompt rendered here (a continuation on llama-cpp-python), with
    the job's sampling options; `stop` is the end-of-turn text the chat handler would stop at."""
    body: dict[str, Any] = {"model": served, "prompt": prompt, "max_tokens": max_tokens, "temperature": job.temperature,
                            "top_p": job.top_p, "stream": True}  # fmt: skip
    stops = [stop] if stop else []
    stops += job.stop or []
    if stops:
        body["stop"] = stops
    if job.seed is not None:
        body["seed"] = job.seed
    if job.top_k > 0:
        body["top_k"] = job.top_k
    return json.dumps(body, separators=(",", ":")).encode()


class SseParser:
    """Reads one streamed answer: content deltas, the finish_reason, the usage, then `[DONE]`.

    The usage is the engine's when it sends one (vLLM and SGLang do, asked with
    `stream_options.include_usage`). llama-cpp-python (0.3.x) ignores `stream_options` and its
    chunks carry no usage at all; it streams one token per chunk (`Llama._create_completion`
    yields per token), so the content chunks relayed are then the completion's count, and the
    prompt's count is unknown here (0; the backend has the engine count it where it can).
    """

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: tuple[int, int] | None = None
        self.relayed = 0
        self.calls = ToolCallDeltas()

    def feed(self, lines: list[bytes]) -> Parsed:
        """Parse complete lines; `final` once `[DONE]` came, `error` on an error event or bad data."""
        parsed = Parsed([])
        for raw in lines:
            line = raw.strip()
            # Blank lines end events; ": ping" comments (sse-starlette's keep-alives) and other
            # fields (event:, id:, retry:) carry nothing for us.
            if not line.startswith(b"data:"):
                continue
            data = line[5:].lstrip()
            if data == b"[DONE]":
                try:
                    parsed.final = self.end()
                except BackendError as exc:
                    parsed.error = exc
                return parsed
            try:
                obj = json.loads(data)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                parsed.error = BackendError(f"the engine sent an unexpected event: {data[:120]!r}", reason="protocol")
                return parsed
            if "error" in obj:
                # vLLM's `create_streaming_error_response`: an error event, then [DONE].
                parsed.error = BackendError(f"the engine failed mid-stream: {error_message(obj)}",
                                            reason="stream_error")  # fmt: skip
                return parsed
            self._take(obj, parsed)
        return parsed

    def _take(self, chunk: dict[str, Any], parsed: Parsed) -> None:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            # A chat chunk's delta, or a completion chunk's `text` (llama-cpp-python's /v1/completions).
            content = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(content, str) and content:
                parsed.texts.append(content)
                self.relayed += 1
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            if isinstance(calls, list) and (deltas := self.calls.take(calls)):
                parsed.tool_calls += deltas
                self.relayed += 1
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = (_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))

    def end(self) -> Final:
        """The answer's end (`[DONE]`, or the stream closed cleanly); Interrupted without a finish_reason.

        llama-cpp-python's server ends a running stream with `[DONE]` and no finish_reason when
        another request arrives (`get_event_publisher` in `llama_cpp/server/app.py`, with
        `interrupt_requests`, its default).
        """
        if self.finish_reason is None or self.finish_reason in _BROKEN:
            why = f"finish_reason {self.finish_reason!r}" if self.finish_reason else "no finish_reason"
            raise Interrupted(f"the engine ended the stream with {why} after {self.relayed} token(s): the "
                              "generation was interrupted (another request reached an engine that serves one at "
                              "a time, or the engine gave up)")  # fmt: skip
        prompt, completion = self.usage if self.usage is not None else (0, self.relayed)
        return Final(done_reason=self.finish_reason, prompt_eval_count=prompt, eval_count=completion,
                     load_ns=0, eval_ns=0)  # fmt: skip


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def error_message(obj: Any) -> str:
    """The message in an error body, in each shape the servers use."""
    if isinstance(obj, dict):
        error = obj.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])  # OpenAI, vLLM (ErrorInfo), llama-cpp-python's RouteErrorHandler
        if isinstance(error, str) and error:
            return error
        if obj.get("message"):
            return str(obj["message"])  # older vLLM: a flat ErrorResponse
        detail = obj.get("detail")
        if isinstance(detail, str) and detail:
            return detail  # FastAPI's HTTPException (llama-cpp-python's "Invalid API key")
        if isinstance(detail, list) and detail:
            return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail[:3])
    return ""


def error_for_status(status: int, body: bytes, *, served: str, url: str) -> BackendError:
    """Map the engine's error answer (before any stream) to what go-livepeer should see: 400 for
    the client's fault, 500 otherwise, with the engine's message."""
    try:
        detail = error_message(json.loads(body))
    except ValueError:
        detail = ""
    detail = detail or body[:200].decode(errors="replace").strip() or "no detail"
    if status == 400 and _context_overflow(body, detail):
        return BackendError(f"the engine rejected the request: {detail}", reason="prompt_too_long", status=400)
    if status == 400:
        # e.g. vLLM and llama-cpp-python: the prompt (or prompt + max_tokens) exceeds the context.
        return BackendError(f"the engine rejected the request: {detail}", reason="rejected", status=400)
    if status == 404:
        return BackendError(f"the engine at {url} does not serve {served!r} ({detail}); check MODELS against "
                            "its /v1/models", reason="model_missing")  # fmt: skip
    if status in (401, 403):
        return BackendError(f"the engine at {url} refused the runner's credentials ({status}: {detail}); "
                            "check OPENAI_API_KEY", reason="forbidden")  # fmt: skip
    if status in (429, 503):
        return BackendError(f"insufficient capacity: the engine at {url} is busy ({status}: {detail})", reason="busy")
    return BackendError(f"the engine failed ({status}): {detail}", reason="engine_error")


def _context_overflow(body: bytes, detail: str) -> bool:
    """Whether a 400 says the prompt does not fit: llama-cpp-python's code `context_length_exceeded`
    (llama_cpp/server/errors.py), or vLLM's message "This model's maximum context length is …"."""
    return b'"context_length_exceeded"' in body or "maximum context length" in detail


class ToolCallDeltas:
    """Streamed tool-call deltas made exactly OpenAI's: a call's `id`, `type` and `function.name` on
    its first delta only, `function.arguments` in pieces after. llama-cpp-python repeats id and name
    on every delta (llama_cpp/llama_chat_format.py, _convert_completion_to_chat_function), which
    OpenAI's SDK would concatenate (openai/lib/streaming/_deltas.py, accumulate_delta)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def take(self, calls: list[Any]) -> list[dict[str, Any]]:
        """The deltas of one chunk, normalised; malformed entries dropped."""
        out = []
        for call in calls:
            if not isinstance(call, dict) or not isinstance(index := call.get("index", 0), int):
                continue
            function = call.get("function")
            if not isinstance(function, dict):
                function = {}
            arguments = function.get("arguments")
            delta: dict[str, Any] = {"index": index}
            if index not in self.seen:
                self.seen.add(index)
                delta["id"] = str(call.get("id") or f"call_{index}")
                delta["type"] = "function"
                delta["function"] = {"name": str(function.get("name") or ""),
                                     "arguments": arguments if isinstance(arguments, str) else ""}  # fmt: skip
            elif isinstance(arguments, str) and arguments:
                delta["function"] = {"arguments": arguments}
            else:
                continue
            out.append(delta)
        return out


@dataclass(frozen=True)
class ServedModel:
    """One entry of the engine's /v1/models: its name, its context length when it says (vLLM), its owner."""

    name: str
    max_model_len: int | None
    owned_by: str = ""


def served_models(answer: Any) -> dict[str, ServedModel]:
    """The models an engine's /v1/models answer lists, by name."""
    data = answer.get("data") if isinstance(answer, dict) else None
    out = {}
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            length = entry.get("max_model_len")
            owner = str(entry.get("owned_by") or "")
            out[entry["id"]] = ServedModel(
                entry["id"], length if isinstance(length, int) and length > 0 else None, owner
            )
    return out
