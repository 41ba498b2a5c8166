"""What the web saw of one job, for its log line and the metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class JobTrace:
    """Timings and counts of one job as the web saw them, for the log line and the metrics."""

    job_id: str
    model_id: str
    stream: bool
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    first_token_at: float | None = None
    ended_at: float | None = None
    worker: str = ""
    gpu: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    eval_ms: float = 0.0
    outcome: str = "pending"
    reason: str = ""
    continuations: int = 0  # jobs placed to carry a lost generation on (web.continuation)
