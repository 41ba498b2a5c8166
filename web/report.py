"""The one log line each job gets at its end."""

from __future__ import annotations

import logging

from web.trace import JobTrace

logger = logging.getLogger(__name__)


def _ms(start: float | None, end: float | None) -> str:
    return "-" if start is None or end is None else f"{(end - start) * 1000:.1f}"


def report(trace: JobTrace, api: str = "llm") -> None:
    """Log the job's line: model, GPU, queue wait, time to first token, tokens, outcome, API, continuations."""
    logger.info(
        "job %s model=%s gpu=%s worker=%s queue_ms=%s ttft_ms=%s total_ms=%s prompt_tokens=%d "
        "completion_tokens=%d stream=%s outcome=%s reason=%s api=%s continuations=%d",
        trace.job_id,
        trace.model_id,
        trace.gpu or "-",
        trace.worker or "-",
        _ms(trace.submitted_at, trace.started_at),
        _ms(trace.submitted_at, trace.first_token_at),
        _ms(trace.submitted_at, trace.ended_at),
        trace.prompt_tokens,
        trace.completion_tokens,
        trace.stream,
        trace.outcome,
        trace.reason or "-",
        api,
        trace.continuations,
    )
