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


def parse_lines(lines: list[bytes]) -> tuple[list[str], Final | None]:
    """Parse complete NDJSON lines into token texts and, if present, the final record.

    Raises BackendError for an `{"error": ...}` line or a line that is not an Ollama chat object.
    """
    texts: list[str] = []
    for raw in lines:
        try:
            obj = json.loads(raw)
        except ValueError:
            raise BackendError(f"Ollama sent a line that is not JSON: {raw[:120]!r}", reason="protocol") from None
        if not isinstance(obj, dict):
            raise BackendError(f"Ollama sent an unexpected line: {raw[:120]!r}", reason="protocol")
        error = obj.get("error")
        if error is not None:
            raise BackendError(f"Ollama failed mid-stream: {error}", reason="stream_error")
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            texts.append(content)
        if obj.get("done") is True:
            return texts, Final(
                done_reason=str(obj.get("done_reason") or "stop"),
                prompt_eval_count=_count(obj.get("prompt_eval_count")),
                eval_count=_count(obj.get("eval_count")),
                load_ns=_count(obj.get("load_duration")),
                eval_ns=_count(obj.get("eval_duration")),
            )
    return texts, None


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
