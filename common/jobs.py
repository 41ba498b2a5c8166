"""The job the web places in RQ for a worker: its payload and its lifetimes in Redis."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# How long RQ keeps a finished job's record, a failed one's, and the most a job may sit queued
# beyond the web's own queue timeout before RQ drops it.
RESULT_TTL_S = 300
FAILURE_TTL_S = 86_400
QUEUED_TTL_MARGIN_S = 60


@dataclass(frozen=True)
class GenerateJob:
    """Everything a worker needs to run one chat generation and report back."""

    reply_to: str
    model_id: str
    tag: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stream: bool

    def to_payload(self) -> dict[str, Any]:
        """The plain dict RQ stores (JSON-serialised, readable in rq-dashboard)."""
        # Not dataclasses.asdict: it deep-copies every message, and this runs per request.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> GenerateJob:
        """Rebuild the job from its payload; raises TypeError/KeyError if it is malformed."""
        return cls(**payload)

    def describe(self) -> str:
        """A short description for RQ's job record that leaves the prompt out."""
        return f"generate {self.model_id} ({self.tag}) max_tokens={self.max_tokens}"
