"""The routes: go-livepeer's /health, /version, /hardware/*, /llm, and the OpenAI API's /v1/chat/completions
and /v1/models, each also under a per-model prefix; operators' /fleet and /metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, g, jsonify, request

from common.errors import BadRequest, RunnerError
from common.models import ModelSpec
from web import answers, flow, metrics, openai_errors
from web.openai_request import check_features, model_not_found, parse_chat_request
from web.openai_wire import OpenAIAnswer, model_entry, models_list
from web.runtime import Runtime, runtime
from web.sse import LlmAnswer
from web.validation import OPENAI_API, parse_llm_request

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
        if request.endpoint in openai_errors.ENDPOINTS:
            response.headers["X-Request-Id"] = job_id  # what OpenAI's SDKs show as a response's request id
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
    return flow.serve(rt, req, lambda r: LlmAnswer(r.model.model_id), _llm_gone)


def _llm_gone() -> Response:
    return _json_error(500, "the client closed the connection")


@_routes("/v1/chat/completions", methods=["POST"])
def chat_completions(model_id: str | None = None) -> Response:
    """OpenAI's chat completions on the same queue, workers and relay as /llm (see docs/openai.md)."""
    rt = runtime()
    try:
        scope = _openai_scope(rt, model_id)
        req = parse_chat_request(request.get_data(cache=False), rt.settings, scope)
        check_features(req, rt.fleet.view_or_none() or [])
    except RunnerError as exc:
        metrics.observe_refusal("", "bad_request" if exc.status == 400 else "not_found", api=OPENAI_API)
        raise
    return flow.serve(rt, req, lambda r: OpenAIAnswer(r.model.model_id, include_usage=r.include_usage),
                      _openai_gone)  # fmt: skip


def _openai_gone() -> Response:
    return openai_errors.error_response(500, "the client closed the connection")


@_routes("/v1/models", methods=["GET"])
def models(model_id: str | None = None) -> Response:
    """OpenAI's model list: the served ids (the prefix's only, under one), with capacity and features."""
    rt = runtime()
    scope = _openai_scope(rt, model_id) if model_id is not None else None
    records = rt.fleet.view_or_none()
    return jsonify(models_list(rt.settings, records, scope.model_id if scope else None))


@bp.get("/v1/models/<path:model_id>")
def model(model_id: str) -> Response:
    """One model of the list (OpenAI's `GET /v1/models/{model}`)."""
    rt = runtime()
    if rt.settings.model(model_id) is None:
        raise model_not_found(model_id, rt.settings)
    return jsonify(model_entry(model_id, rt.fleet.view_or_none()))


def _openai_scope(rt: Runtime, model_id: str | None) -> ModelSpec:
    """The model a per-model prefix names, else the runner's first; ModelNotFound (404) if unknown."""
    if model_id is None:
        return rt.settings.default_model
    spec = rt.settings.model(model_id)
    if spec is None:
        raise model_not_found(model_id, rt.settings)
    return spec


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus exposition of the runner's and the fleet's metrics."""
    return metrics.metrics_response(runtime())


def _json_error(status: int, msg: str) -> Response:
    response = jsonify({"detail": {"msg": msg}})
    response.status_code = status
    return response
