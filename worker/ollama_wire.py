"""Ollama's /api/chat wire, as pure functions: the request body, the NDJSON lines, the errors."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from common.errors import BackendError
from common.jobs import GenerateJob
from worker.ollama_openai import ollama_format, ollama_messages, tool_call_deltas

logger = logging.getLogger(__name__)

# Model families that think whatever `think: false` says: Ollama renders them through harmony
# (ollama/ollama server/routes.go, shouldUseHarmony), and harmony takes only a level.
ALWAYS_THINKING_FAMILIES = frozenset({"gptoss", "gpt-oss"})
LOWEST_THINK_LEVEL = "low"


def think_value(family: str) -> bool | str:
    """What to send as `think`: off where a model honours it, the lowest level where it does not."""
    return LOWEST_THINK_LEVEL if family.lower() in ALWAYS_THINKING_FAMILIES else False


def chat_body(job: GenerateJob, *, num_ctx: int, keep_alive: int | str, think: bool | str = False) -> bytes:
    """The /api/chat request for a job: streaming, no thinking where possible, never cut, bounded."""
    options: dict[str, Any] = {
        # A generation can use no more than the context (any max_tokens is accepted; this bounds it).
        "num_predict": min(job.max_tokens, num_ctx),
        "temperature": job.temperature,
        "top_p": job.top_p,
        # ai-runner's top_k ≤ 0 means "disabled". Omitted, Ollama would use the Modelfile's value or
        # 40 (ollama/ollama api/types.go, DefaultOptions); 0 reaches llama-server as `top_k: 0`
        # (llm/llama_server.go, llamaServerCompletionRequest has no omitempty), which disables it.
        "top_k": max(job.top_k, 0),
        "num_ctx": num_ctx,
    }
    if job.stop:
        options["stop"] = job.stop
    if job.seed is not None:
        options["seed"] = job.seed
    body: dict[str, Any] = {
        "model": job.tag,
        "messages": ollama_messages(job.messages),
        "stream": True,
        "think": think,
        # Refuse a prompt that does not fit instead of dropping messages (server/prompt.go,
        # chatPrompt) and stop at a full context instead of shifting it (server/routes.go ChatHandler).
        "truncate": False,
        "shift": False,
        "keep_alive": keep_alive,
        "options": options,
    }
    if (fmt := ollama_format(job.response_format)) is not None:
        body["format"] = fmt
    # Ollama takes no tool_choice: "none" is honoured by not offering the tools; the web refuses
    # "required" and named choices for Ollama's models (they lack the `tool_choice` feature).
    if job.tools and job.tool_choice != "none":
        body["tools"] = job.tools
    return json.dumps(body, separators=(",", ":")).encode()


def load_body(tag: str, *, num_ctx: int, keep_alive: int | str) -> dict[str, Any]:
    """A preload: no messages, the jobs' num_ctx and shift, so Ollama keeps the runner jobs reuse."""
    # `shift` is a launch attribute: a job with another value would reload the model
    # (server/sched.go, getRunner → needsReload).
    return {"model": tag, "messages": [], "keep_alive": keep_alive, "shift": False, "options": {"num_ctx": num_ctx}}


@dataclass(frozen=True, slots=True)
class Final:
    """Ollama's last line: why it stopped and its counts (absent metrics count as 0)."""

    done_reason: str
    prompt_eval_count: int
    eval_count: int
    load_ns: int
    eval_ns: int

    @property
    def finish_reason(self) -> str:
        """The OpenAI finish_reason: `length` when num_predict or the context cut it, `tool_calls` when
        an OpenAI-compatible engine said so, `stop` otherwise."""
        if self.done_reason in ("length", "tool_calls"):
            return self.done_reason
        return "stop"

    @classmethod
    def clean_end(cls, relayed: int) -> Final:
        """A stream Ollama ended without a `done` line: a normal stop; count what was relayed.

        Ollama does this when it stops a repetition loop (llm/llama_server.go, Completion: more
        than 30 repeated tokens returns without a final response) and gives no counts then.
        """
        return cls(done_reason="stop", prompt_eval_count=0, eval_count=relayed, load_ns=0, eval_ns=0)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(slots=True)
class Parsed:
    """What a batch of lines held: token texts, reasoning chunks, then maybe the final record or an error."""

    texts: list[str]
    thinking: int = 0
    final: Final | None = None
    error: BackendError | None = None
    # Tool calls, as OpenAI streams them (see common.events.ToolCalls); relayed after the texts.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def parse_lines(lines: list[bytes]) -> Parsed:
    """Parse complete NDJSON lines: token texts up to the final record or the first bad line.

    An `{"error": ...}` line, or one that is not an Ollama chat object, ends the batch with
    `error` set; the texts before it are kept, since they were generated and must be relayed.
    Reasoning (`message.thinking`) is counted, never relayed as content.
    """
    parsed = Parsed([])
    for raw in lines:
        try:
            obj = json.loads(raw.decode())  # str: json.loads(bytes) would detect the encoding each time
        except ValueError:  # UnicodeDecodeError included
            obj = None
        if not isinstance(obj, dict):
            parsed.error = BackendError(f"Ollama sent an unexpected line: {raw[:120]!r}", reason="protocol")
            return parsed
        error = obj.get("error")
        if error is not None:
            parsed.error = BackendError(f"Ollama failed mid-stream: {error}", reason="stream_error")
            return parsed
        message = obj.get("message")
        if isinstance(message, dict):
            content, thinking = message.get("content"), message.get("thinking")
            if isinstance(content, str) and content:
                parsed.texts.append(content)
            if isinstance(thinking, str) and thinking:
                parsed.thinking += 1
            calls = message.get("tool_calls")
            if isinstance(calls, list) and calls:
                parsed.tool_calls += tool_call_deltas(calls)
        if obj.get("done") is True:
            parsed.final = Final(
                done_reason=str(obj.get("done_reason") or "stop"),
                prompt_eval_count=_count(obj.get("prompt_eval_count")),
                eval_count=_count(obj.get("eval_count")),
                load_ns=_count(obj.get("load_duration")),
                eval_ns=_count(obj.get("eval_duration")),
            )
            return parsed
    return parsed


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error") or "").strip()
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip()


def _context_overflow(detail: str) -> tuple[int, int] | None:
    """(prompt tokens, context) from llama-server's refusal of a prompt longer than the context.

    With `truncate: false` Ollama passes the prompt on uncut (llm/llama_server.go,
    completionPromptForRequest) and relays llama-server's 400 body as its error text
    (statusErrorMessage): `{"error":{"code":400,"message":"request (N tokens) exceeds the
    available context size (M tokens), try increasing it","type":"exceed_context_size_error",
    "n_prompt_tokens":N,"n_ctx":M}}`.
    """
    if "exceed_context_size_error" not in detail and "exceeds the available context size" not in detail:
        return None
    try:
        inner = json.loads(detail).get("error") or {}
        return int(inner.get("n_prompt_tokens", 0)), int(inner.get("n_ctx", 0))
    except (ValueError, AttributeError, TypeError):
        return 0, 0


def error_for_status(status: int, body: bytes, *, tag: str, url: str) -> BackendError:
    """Map an error answer from Ollama (before any stream) to a BackendError with the right status.

    Only a prompt that does not fit is the client's fault (400). Every other refusal is about
    what the operator configured (a model that "does not support chat", a broken manifest, a
    bad option), so it is a 500 for the client and an error line for the operator.
    """
    detail = _detail(body)
    if status == 400 and (overflow := _context_overflow(detail)) is not None:
        tokens, context = overflow
        size = f"{tokens} tokens" if tokens else "too long"
        room = f"{context} tokens" if context else "its configured size"
        return BackendError(
            f"the prompt is {size}; the context of model {tag!r} holds {room}: shorten the conversation",
            reason="prompt_too_long",
            status=400,
        )
    if status == 404:
        return BackendError(
            f"model {tag!r} is not installed on the Ollama at {url} ({detail or 'not found'}); "
            "pull it with `llm-runner models pull`",
            reason="model_missing",
        )
    if status == 503:
        return BackendError(f"Ollama at {url} is busy: {detail or 'server busy'}", reason="busy")
    if status == 403 and not detail:
        return BackendError(
            f"Ollama at {url} refused the request (403): it only accepts its own host name", reason="forbidden"
        )
    if status == 400:
        logger.error("operator: Ollama at %s refused %r: %s (check the model and MODELS)", url, tag, detail)
        return BackendError(
            f"Ollama at {url} refused model {tag!r}: {detail or 'bad request'} (a configuration problem)",
            reason="ollama_config",
        )
    return BackendError(f"Ollama failed ({status}): {detail or 'no detail'}", reason="ollama_error")


class OllamaParser:
    """Reads one /api/chat answer batch by batch (the stream's parser for the Ollama backend)."""

    def __init__(self) -> None:
        self.relayed = 0

    def feed(self, lines: list[bytes]) -> Parsed:
        """Parse complete NDJSON lines (see `parse_lines`)."""
        parsed = parse_lines(lines)
        self.relayed += len(parsed.texts)
        return parsed

    def end(self) -> Final:
        """The stream ended cleanly (chunked terminator) before a `done` line: Ollama stopping a
        repetition loop (llm/llama_server.go, Completion), a normal finish; only a cut connection
        is an error."""
        return Final.clean_end(self.relayed)
