"""The job the web places in RQ for a worker: its payload and its lifetimes in Redis."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

# How long RQ keeps a finished job's record, a failed one's, and the most a job may sit queued
# beyond the web's own queue timeout before RQ drops it.
RESULT_TTL_S = 300
FAILURE_TTL_S = 86_400
QUEUED_TTL_MARGIN_S = 60


@dataclass(frozen=True)
class GenerateJob:
    """Everything a worker needs to run one chat generation and report back.

    A continuation job (`continue_final`) carries a generation that was lost after it started
    (a Failed event whose reason is in common.errors.CONTINUABLE_REASONS): its `messages` end
    with `{"role": "assistant", "content": <the text the client already got>}`, which the
    worker's engine continues, never restarts; `max_tokens` is what is left of the original
    budget (the web subtracts `sent_tokens` itself). The worker publishes only the new text; its
    Done event counts the continuation's own completion tokens and the ORIGINAL prompt's tokens
    (worker.backend.Backend.usage). A worker whose engine cannot continue the model fails it
    with the reason common.errors.NOT_CONTINUABLE (WorkerRecord.can_continue tells which can).
    Same sampling options as the original job.

    The options `stop` to `tool_choice` come from the OpenAI API only (go-livepeer's /llm carries
    none of them); they default to "not asked". A payload leaves every field out that holds its
    default (those options, and the continuation's), so an original job from either API decodes
    on workers of either version.
    """

    reply_to: str
    model_id: str
    tag: str
    # {role, content} (a string); OpenAI's assistant messages may also carry `tool_calls`, and its
    # tool results are {role: "tool", content, tool_call_id}.
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stream: bool
    stop: list[str] | None = None
    seed: int | None = None
    # As OpenAI takes them: {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}.
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    # "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.
    tool_choice: str | dict[str, Any] | None = None
    # A continuation: the last message is the assistant's answer so far, already sent to the client.
    continue_final: bool = False
    # Completion tokens the client already got (the usage of the part being continued).
    sent_tokens: int = 0
    # Which continuation of the original job this is (0: the original), for logs.
    attempt: int = 0

    def to_payload(self) -> dict[str, Any]:
        """The plain dict RQ stores (JSON-serialised, readable in rq-dashboard); unset options left out."""
        # Not dataclasses.asdict: it deep-copies every message, and this runs per request.
        payload = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, default in _DEFAULTS.items():
            if payload[name] == default:
                del payload[name]
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> GenerateJob:
        """Rebuild the job from its payload; raises TypeError/KeyError if it is malformed."""
        return cls(**payload)

    @property
    def prefix(self) -> str:
        """The answer being continued (the trailing assistant message), or "" for an original job."""
        if not self.continue_final or not self.messages or self.messages[-1].get("role") != "assistant":
            return ""
        return str(self.messages[-1].get("content") or "")

    def describe(self) -> str:
        """A short description for RQ's job record that leaves the prompt out."""
        more = f" continuation #{self.attempt} after {self.sent_tokens} tokens" if self.continue_final else ""
        return f"generate {self.model_id} ({self.tag}) max_tokens={self.max_tokens}{more}"


# Fields a payload leaves out while they hold their default: an original /llm job's payload is what
# it always was, readable by workers of any version.
_DEFAULTS: dict[str, object] = {f.name: f.default for f in fields(GenerateJob) if f.default is not MISSING}
