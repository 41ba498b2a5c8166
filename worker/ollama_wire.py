"""Ollama's /api/chat wire, as pure functions: the request body, the NDJSON lines, the errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.errors import BackendError
from common.jobs import GenerateJob


def chat_body(job: GenerateJob, *, num_ctx: int, keep_alive: int | str) -> bytes:
    """The /api/chat request for a job: always streaming, no thinking, bounded, constant num_ctx."""
    options: dict[str, Any] = {
        "num_predict": job.max_tokens,
        "temperature": job.temperature,
        "top_p": job.top_p,
        "num_ctx": num_ctx,
    }
    if job.top_k > 0:
        options["top_k"] = job.top_k
    body = {
        "model": job.tag,
        "messages": job.messages,
        "stream": True,
        "think": False,
        "keep_alive": keep_alive,
        "options": options,
    }
    return json.dumps(body, separators=(",", ":")).encode()


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
        """The OpenAI finish_reason: `length` when num_predict cut it, `stop` otherwise."""
        return "length" if self.done_reason == "length" else "stop"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(slots=True)
class Parsed:
    """What a batch of lines held: token texts, then maybe the final record or an error."""

    texts: list[str]
    final: Final | None = None
    error: BackendError | None = None


def parse_lines(lines: list[bytes]) -> Parsed:
    """Parse complete NDJSON lines: token texts up to the final record or the first bad line.

    An `{"error": ...}` line, or one that is not an Ollama chat object, ends the batch with
    `error` set; the texts before it are kept, since they were generated and must be relayed.
    """
    parsed = Parsed([])
    for raw in lines:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            parsed.error = BackendError(f"Ollama sent an unexpected line: {raw[:120]!r}", reason="protocol")
            return parsed
        error = obj.get("error")
        if error is not None:
            parsed.error = BackendError(f"Ollama failed mid-stream: {error}", reason="stream_error")
            return parsed
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            parsed.texts.append(content)
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


def error_for_status(status: int, body: bytes, *, tag: str, url: str) -> BackendError:
    """Map an error answer from Ollama (before any stream) to a BackendError with the right status."""
    try:
        detail = str(json.loads(body).get("error") or "").strip()
    except (ValueError, AttributeError):
        detail = body[:200].decode(errors="replace").strip()
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
        return BackendError(f"Ollama rejected the request: {detail or 'bad request'}", reason="rejected", status=400)
    return BackendError(f"Ollama failed ({status}): {detail or 'no detail'}", reason="ollama_error")
