"""go-livepeer's routes: /health, /version, /hardware/*, /llm, also under a per-model prefix."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from flask import Blueprint, Response, g, jsonify, request

from common.errors import NO_ROOM_REASONS, BadRequest, CapacityError, QueueUnavailable, RunnerError
from common.events import Done, Failed, Tokens
from common.models import ModelSpec
from web import answers, metrics
from web.client import ClientWatch
from web.relay import Answer, ClientGone, JobRelay
from web.report import report
from web.runtime import Runtime, runtime
from web.sse import DONE_LINE, SSE_HEADERS, Completion
from web.validation import parse_llm_request

logger = logging.getLogger(__name__)

bp = Blueprint("runner", __name__)
F = TypeVar("F", bound=Callable[..., Any])
JOB_ID_HEADER = "X-Job-Id"


@bp.after_request
def job_id_header(response: Response) -> Response:
    """Every answer about a placed job names it, error answers included (to find it in RQ)."""
    job_id = g.get("job_id")
    if job_id is not None:
        response.headers[JOB_ID_HEADER] = job_id
    return response


class UnknownPrefix(RunnerError):
    """A path prefix that names no configured model (404)."""

    status = 404
    reason = "not_found"


def _scope(rt: Runtime, model_id: str | None) -> ModelSpec | None:
    """The model a per-model prefix names (None without prefix); UnknownPrefix if unknown."""
    if model_id is None:
        return None
    spec = rt.settings.model(model_id)
    if spec is None:
        served = ", ".join(m.model_id for m in rt.settings.models)
        raise UnknownPrefix(f"no model {model_id[:200]!r} here; this runner serves: {served}")
    return spec


def _routes(path: str, **options: object) -> Callable[[F], F]:
    """Register a view at `path` and `path/`, both also under a per-model prefix, none redirecting."""

    def register(view: F) -> F:
        for rule in (path, f"{path}/", f"/<path:model_id>{path}", f"/<path:model_id>{path}/"):
            bp.add_url_rule(rule, view_func=view, **options)  # type: ignore[arg-type]
        return view

    return register


@_routes("/health", methods=["GET"])
def health(model_id: str | None = None) -> Response:
    """Readiness for go-livepeer's start-up poll."""
    rt = runtime()
    scope = _scope(rt, model_id)
    # Without its event subscription this process cannot follow a job: not ready, whatever the fleet.
    # Read the fleet afresh: go-livepeer reads /hardware/info right after /health first answers,
    # and both must show a worker that registered a moment ago (each is called once, or by operators).
    records = rt.fleet.view_or_none(fresh=True) if rt.hub.running(timeout=1.0) else None
    return jsonify(answers.health(records, rt.settings, scope.model_id if scope else None))


@_routes("/version", methods=["GET"])
def version(model_id: str | None = None) -> Response:
    """Pipeline, model_id and runner version."""
    rt = runtime()
    scope = _scope(rt, model_id) or rt.settings.default_model
    return jsonify(answers.version(scope.model_id, rt.settings.version))


@_routes("/hardware/info", methods=["GET"])
def hardware_info(model_id: str | None = None) -> Response:
    """The fleet's GPUs (those that will serve the prefix's model, under a prefix): identity and memory."""
    return _hardware(model_id, stats=False)


@_routes("/hardware/stats", methods=["GET"])
def hardware_stats(model_id: str | None = None) -> Response:
    """The same GPUs' live figures: memory and utilisation."""
    return _hardware(model_id, stats=True)


def _hardware(model_id: str | None, *, stats: bool) -> Response:
    rt = runtime()
    scope = _scope(rt, model_id)
    shown = scope or rt.settings.default_model
    records = rt.fleet.view_or_none(fresh=True)  # read once by go-livepeer, at its start: never stale
    return jsonify(answers.hardware(records, shown.model_id, scope.model_id if scope else None, stats=stats))


@bp.get("/fleet")
def fleet() -> Response:
    """For operators: per-model capacity (what to put in aiModels.json) and every worker's state."""
    rt = runtime()
    return jsonify(answers.fleet(rt.fleet.view_or_none(), rt.settings))


@_routes("/llm", methods=["POST"])
def llm(model_id: str | None = None) -> Response:
    """Run one chat generation: SSE when `stream` is true, one JSON answer otherwise."""
    rt = runtime()  # the bearer token is checked before every route (web.auth)
    try:
        if model_id is not None and rt.settings.model(model_id) is None:
            served = ", ".join(m.model_id for m in rt.settings.models)
            raise BadRequest(f"unknown model {model_id[:200]!r} in the URL; this runner serves: {served}")
        scope = _scope(rt, model_id) or rt.settings.default_model
        req = parse_llm_request(request.get_data(cache=False), rt.settings, scope)
    except BadRequest:
        metrics.observe_refusal("", "bad_request")
        raise
    relay = JobRelay(rt, req, ClientWatch.from_environ(request.environ))
    try:
        relay.submit()
    except RunnerError as exc:
        if relay.placed:
            g.job_id = relay.job_id
        metrics.observe_refusal(req.model.model_id, "unavailable" if isinstance(exc, QueueUnavailable) else "rejected")
        raise
    g.job_id = relay.job_id
    metrics.IN_FLIGHT.labels(req.model.model_id).inc()
    try:
        first = relay.next_event()
        g.job_id = relay.job_id  # placed again under a new id if Redis lost it while queued
        if isinstance(first, Failed):
            raise _error(first)
        completion = Completion.new(req.model.model_id)
        if req.stream:
            relay.watch.bound_sends(rt.settings.send_timeout_s)
            body = _Stream(relay, completion, first)
            response = Response(body, status=200, content_type="text/event-stream", headers=SSE_HEADERS)
        else:
            response = jsonify(_collect(relay, completion, first))
    except ClientGone:
        _finish(relay)
        return _json_error(500, "the client closed the connection")
    except BaseException:
        _finish(relay)
        raise
    if not req.stream:
        _finish(relay)
    return response


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus exposition of the runner's and the fleet's metrics."""
    return metrics.metrics_response(runtime())


def _finish(relay: JobRelay) -> None:
    """Close the relay (cancelling an unfinished job) and record the job once."""
    if relay.recorded:
        return
    relay.recorded = True
    relay.close()
    relay.watch.unbound_sends()
    metrics.IN_FLIGHT.labels(relay.trace.model_id).dec()
    metrics.observe(relay.trace)
    report(relay.trace)


def _error(failed: Failed) -> RunnerError:
    """The error a job's failure answers with; a "no room right now" failure says so to the gateway."""
    if failed.status == 400:
        return BadRequest(failed.msg, reason=failed.reason)
    if failed.reason in NO_ROOM_REASONS:
        return CapacityError(failed.msg, reason=failed.reason)
    return RunnerError(failed.msg, reason=failed.reason)


def _collect(relay: JobRelay, completion: Completion, event: Answer) -> dict[str, object]:
    """Gather the whole answer (non-streaming)."""
    parts: list[str] = []
    while True:
        if isinstance(event, Tokens):
            parts.append(event.text_json)
        elif isinstance(event, Done):
            text = "".join(json.loads(f"[{','.join(parts)}]"))
            return completion.answer(text, event.finish_reason, event.prompt_tokens, event.completion_tokens)
        else:
            raise _error(event)
        event = relay.next_event()


class _Stream:
    """The SSE body: content chunks, one final chunk with finish_reason and usage, then [DONE].

    A class rather than a generator so that `close()` (called by the server when the client
    is gone, even before the first chunk) always finishes the job.
    """

    def __init__(self, relay: JobRelay, completion: Completion, first: Answer) -> None:
        self.relay = relay
        self.completion = completion
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        relay, completion = self.relay, self.completion
        sent_tokens = 0
        event = self.first
        try:
            while True:
                out = []
                for item in [event, *relay.pending()]:
                    if isinstance(item, Tokens):
                        sent_tokens += item.count
                        out.append(completion.content_chunk(item.text_json, sent_tokens))
                        continue
                    if isinstance(item, Done):
                        out.append(completion.final_chunk(item.finish_reason, item.prompt_tokens,
                                                          item.completion_tokens))  # fmt: skip
                    else:
                        out.append(completion.final_chunk("error", 0, sent_tokens))
                    out.append(DONE_LINE)
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


def _json_error(status: int, msg: str) -> Response:
    response = jsonify({"detail": {"msg": msg}})
    response.status_code = status
    return response
