"""The one path every chat request takes, whichever API it came in on.

Validated request → job placed (or refused at once) → first event → SSE stream or whole answer →
job finished and recorded once, cancelled when the client leaves. The APIs differ only at the
edge: how a request is parsed (their routes do that), how an answer is rendered (an `Answer`:
`web.sse.LlmAnswer` for go-livepeer's /llm, `web.openai_wire.OpenAIAnswer` for /v1), and how
an error is (the app's error handlers, by route).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from flask import Response, g, jsonify, request

from common.errors import NO_ROOM_REASONS, BadRequest, CapacityError, QueueUnavailable, RunnerError
from common.events import Done, Failed, Tokens, ToolCalls
from web import metrics
from web.client import ClientWatch
from web.relay import Answer as Event
from web.relay import ClientGone, JobRelay
from web.report import report
from web.runtime import Runtime
from web.sse import SSE_HEADERS
from web.validation import LLMRequest


class Answer(Protocol):
    """One answer rendered in an API's shapes (built once the job's first event is in)."""

    def content(self, event: Tokens, sent_tokens: int) -> bytes:
        """An SSE chunk with some text; `sent_tokens` counts this one's too."""

    def tool_calls(self, event: ToolCalls) -> bytes:
        """An SSE chunk with tool-call deltas."""

    def end(self, done: Done, sent_tokens: int) -> bytes:
        """The stream's ending after its last event, `data: [DONE]` included."""

    def broken(self, failed: Failed, sent_tokens: int) -> bytes:
        """The stream's ending after a failure mid-way, `data: [DONE]` included."""

    def unfinished(self, done: Done) -> RunnerError | None:
        """The error to answer instead of a whole answer or a stream's start, if the API has one."""

    def answer(self, text: str, calls: list[dict[str, Any]], done: Done) -> dict[str, Any]:
        """The whole non-streaming answer."""


# How an API renders one request's answer, and what it answers a client that left before anything was sent.
AnswerFactory = Callable[[LLMRequest], Answer]
GoneResponse = Callable[[], Response]


def serve(rt: Runtime, req: LLMRequest, render: AnswerFactory, gone: GoneResponse) -> Response:
    """Run one validated request: SSE when `stream` is true, one JSON answer otherwise.

    Raises RunnerError for refusals and failures before the first byte; the app renders them.
    """
    api = req.api
    relay = JobRelay(rt, req, ClientWatch.from_environ(request.environ))
    try:
        relay.submit()
    except RunnerError as exc:
        if relay.placed:
            g.job_id = relay.job_id
        outcome = "unavailable" if isinstance(exc, QueueUnavailable) else "rejected"
        metrics.observe_refusal(req.model.model_id, outcome, api=api)
        raise
    g.job_id = relay.job_id
    metrics.IN_FLIGHT.labels(req.model.model_id).inc()
    try:
        first = relay.next_event()
        g.job_id = relay.job_id  # placed again under a new id if Redis lost it while queued
        if isinstance(first, Failed):
            raise failure(first)
        answer = render(req)
        if isinstance(first, Done) and (refused := answer.unfinished(first)) is not None:
            raise refused
        if req.stream:
            relay.watch.bound_sends(rt.settings.send_timeout_s)
            body = _Stream(relay, answer, first)
            response = Response(body, status=200, content_type="text/event-stream", headers=SSE_HEADERS)
        else:
            response = jsonify(_collect(relay, answer, first))
    except ClientGone:
        _finish(relay)
        return gone()
    except BaseException:
        _finish(relay)
        raise
    if not req.stream:
        _finish(relay)
    return response


def _finish(relay: JobRelay) -> None:
    """Close the relay (cancelling an unfinished job) and record the job once."""
    if relay.recorded:
        return
    relay.recorded = True
    relay.close()
    relay.watch.unbound_sends()
    metrics.IN_FLIGHT.labels(relay.trace.model_id).dec()
    api = relay.request.api
    metrics.observe(relay.trace, api)
    report(relay.trace, api)


def failure(failed: Failed) -> RunnerError:
    """The error a job's failure answers with; a "no room right now" failure says so to the gateway."""
    if failed.status == 400:
        return BadRequest(failed.msg, reason=failed.reason)
    if failed.reason in NO_ROOM_REASONS:
        return CapacityError(failed.msg, reason=failed.reason)
    return RunnerError(failed.msg, reason=failed.reason)


def _collect(relay: JobRelay, answer: Answer, event: Event) -> dict[str, Any]:
    """Gather the whole answer (non-streaming)."""
    parts: list[str] = []
    calls: list[dict[str, Any]] = []
    while True:
        if isinstance(event, Tokens):
            parts.append(event.text_json)
        elif isinstance(event, ToolCalls):
            calls += json.loads(event.calls_json)
        elif isinstance(event, Done):
            if (refused := answer.unfinished(event)) is not None:
                raise refused
            text = "".join(json.loads(f"[{','.join(parts)}]"))
            return answer.answer(text, calls, event)
        else:
            raise failure(event)
        event = relay.next_event()


class _Stream:
    """The SSE body: chunks as the events come, then the API's ending.

    A class rather than a generator so that `close()` (called by the server when the client
    is gone, even before the first chunk) always finishes the job.
    """

    def __init__(self, relay: JobRelay, answer: Answer, first: Event) -> None:
        self.relay = relay
        self.answer = answer
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        relay, answer = self.relay, self.answer
        sent_tokens = 0
        event = self.first
        try:
            while True:
                out = []
                for item in [event, *relay.pending()]:
                    if isinstance(item, Tokens):
                        sent_tokens += item.count
                        out.append(answer.content(item, sent_tokens))
                        continue
                    if isinstance(item, ToolCalls):
                        out.append(answer.tool_calls(item))
                        continue
                    if isinstance(item, Done):
                        out.append(answer.end(item, sent_tokens))
                    else:
                        out.append(answer.broken(item, sent_tokens))
                    yield b"".join(out)
                    return
                yield b"".join(out)
                event = relay.next_event()
        except ClientGone:
            return
        finally:
            _finish(relay)

    def close(self) -> None:
        """Finish the job if the body was not read to the end."""
        _finish(self.relay)
