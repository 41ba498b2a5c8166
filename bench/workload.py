"""What the bench asks for and what it must get back: bodies for both paths and per-stream checks."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bench.client import Reply
from common.jobs import GenerateJob
from common.settings import Settings
from tests.golivepeer import read_stream
from worker.ollama_wire import chat_body


@dataclass(frozen=True)
class Ask:
    """One stream's request: a prompt distinct to this stream and the tokens it must produce."""

    label: str
    max_tokens: int

    @property
    def words(self) -> list[str]:
        """The prompt's words; the fake answers them cycled, one word and a space per token."""
        return [self.label, "alpha", f"beta-{self.label}", "gamma"]

    @property
    def prompt(self) -> str:
        """The user message."""
        return " ".join(self.words)

    @property
    def expected(self) -> str:
        """The exact text the stream must carry."""
        words = self.words
        return "".join(words[i % len(words)] + " " for i in range(self.max_tokens))

    def messages(self) -> list[dict[str, str]]:
        """The chat messages."""
        return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": self.prompt}]


def runner_body(ask: Ask, model_id: str) -> bytes:
    """go-livepeer's POST /llm body, streaming."""
    body = {"model": model_id, "messages": ask.messages(), "max_tokens": ask.max_tokens,
            "temperature": 0.7, "top_p": 1.0, "top_k": -1, "stream": True}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def openai_body(ask: Ask, model_id: str) -> bytes:
    """The same request on the OpenAI API, streaming with the usage asked for (as gateways that bill do)."""
    body = {"model": model_id, "messages": ask.messages(), "max_tokens": ask.max_tokens, "temperature": 0.7,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def direct_body(ask: Ask, settings: Settings) -> bytes:
    """Exactly the /api/chat body the worker sends for the same request (worker.ollama_wire.chat_body)."""
    spec = settings.default_model
    job = GenerateJob(reply_to="", model_id=spec.model_id, tag=spec.tag, messages=ask.messages(),
                      max_tokens=ask.max_tokens, temperature=0.7, top_p=1.0, top_k=-1, stream=True)  # fmt: skip
    return chat_body(job, num_ctx=settings.num_ctx, keep_alive=settings.keep_alive)


def _common(reply: Reply, ctype: str) -> list[str]:
    problems = []
    if reply.error:
        problems.append(f"transport: {reply.error}")
    if reply.status != 200:
        problems.append(f"status {reply.status}: {reply.body[:160]!r}")
    if not reply.headers.get("content-type", "").startswith(ctype):
        problems.append(f"content-type {reply.headers.get('content-type')!r}, expected {ctype}")
    if not reply.t_first:
        problems.append("no content token seen")
    return problems


def check_runner(reply: Reply, ask: Ask) -> list[str]:
    """Problems with a runner SSE stream, read as go-livepeer reads it (empty list: correct)."""
    problems = _common(reply, "text/event-stream")
    if reply.status != 200 or reply.error:
        return problems
    try:
        got = read_stream(reply.body.split(b"\n"))
    except (KeyError, IndexError, TypeError, AssertionError) as exc:
        return [*problems, f"go-livepeer would crash on a chunk: {type(exc).__name__}: {exc}"]
    if got.text != ask.expected:
        problems.append(f"text differs: got {got.text[:80]!r}…, expected {ask.expected[:80]!r}…")
    if got.finish_reason != "length":
        problems.append(f"finish_reason {got.finish_reason!r}, expected 'length'")
    usage = got.usage
    if usage.get("completion_tokens") != ask.max_tokens or usage.get("total_tokens") != usage.get(
        "prompt_tokens", 0
    ) + usage.get("completion_tokens", 0):
        problems.append(f"final usage {usage}, expected completion_tokens={ask.max_tokens}")
    if not got.saw_done_marker:
        problems.append("no `data: [DONE]` after the final chunk")
    return problems


def check_direct(reply: Reply, ask: Ask) -> list[str]:
    """Problems with an Ollama NDJSON stream (empty list: correct)."""
    problems = _common(reply, "application/x-ndjson")
    if reply.status != 200 or reply.error:
        return problems
    text, final = [], None
    for line in reply.body.split(b"\n"):
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError:
                return [*problems, f"undecodable line {line[:80]!r}"]
            text.append((obj.get("message") or {}).get("content", ""))
            final = obj if obj.get("done") else final
    if "".join(text) != ask.expected:
        problems.append(f"text differs: got {''.join(text)[:80]!r}…")
    if final is None or final.get("done_reason") != "length" or final.get("eval_count") != ask.max_tokens:
        problems.append(f"final line {final}, expected done_reason 'length', eval_count {ask.max_tokens}")
    return problems


def check_openai(reply: Reply, ask: Ask) -> list[str]:
    """Problems with a /v1/chat/completions stream, read as OpenAI's SDK reads it (empty list: correct)."""
    problems = _common(reply, "text/event-stream")
    if reply.status != 200 or reply.error:
        return problems
    events = [line[6:] for line in reply.body.split(b"\n") if line.startswith(b"data: ")]
    if not events or events[-1] != b"[DONE]":
        return [*problems, "no `data: [DONE]` at the end"]
    try:
        chunks = [json.loads(e) for e in events[:-1]]
    except ValueError as exc:
        return [*problems, f"undecodable chunk: {exc}"]
    choices = [c["choices"][0] for c in chunks if c.get("choices")]
    text = "".join(choice["delta"].get("content") or "" for choice in choices)
    if text != ask.expected:
        problems.append(f"text differs: got {text[:80]!r}…, expected {ask.expected[:80]!r}…")
    if not choices or choices[0]["delta"].get("role") != "assistant" or any("role" in c["delta"] for c in choices[1:]):
        problems.append("delta.role must be in the first chunk only")
    if [c["finish_reason"] for c in choices] != [None] * (len(choices) - 1) + ["length"]:
        problems.append("finish_reason must be null until the last choice chunk, then 'length'")
    usage = chunks[-1].get("usage") if chunks and chunks[-1].get("choices") == [] else None
    if not usage or usage.get("completion_tokens") != ask.max_tokens:
        problems.append(f"last chunk {chunks[-1] if chunks else None}, expected the usage with {ask.max_tokens} tokens")
    return problems
