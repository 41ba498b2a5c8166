"""Errors on the OpenAI API: `{"error": {message, type, param, code}}` with the statuses the SDKs act on.

OpenAI's Python SDK turns 400/401/404/429/5xx into BadRequestError, AuthenticationError,
NotFoundError, RateLimitError and InternalServerError, and retries 408, 409, 429 and 5xx, waiting
what `Retry-After` says when it is at most a minute (openai/_base_client.py, _should_retry and
_calculate_retry_timeout). So "no room right now" is a 429 with `Retry-After` (it is worth
retrying here soon), and no worker or a runner shutting down a 503: neither is go-livepeer's
`{"detail": {"msg"}}`, which only /llm speaks.
"""

from __future__ import annotations

from flask import Request, Response, jsonify

from common.errors import NO_ROOM_REASONS, RunnerError
from web.openai_wire import error_object

# The views that speak the OpenAI API, and a path that does (an unknown /v1/... route).
ENDPOINTS = frozenset({"runner.chat_completions", "runner.models", "runner.model"})
PATH_MARK = "/v1/"
# Seconds a client should wait: a slot frees in seconds; a model loads or a runner restarts in more.
RETRY_AFTER_S = 1
RETRY_UNSERVED_S = 5
# No room that only waiting for a worker or a restart cures.
_UNAVAILABLE = frozenset({"no_worker", "shutdown", "redis"})


def speaks_openai(request: Request) -> bool:
    """Whether this request's errors are answered in OpenAI's shape."""
    if request.endpoint is not None:
        return request.endpoint in ENDPOINTS
    return PATH_MARK in f"{request.path}/"


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   retry_after: int | None = None) -> Response:  # fmt: skip
    """One OpenAI error answer."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        kind = "requests"  # what OpenAI says of a requests-per-minute limit
    response = jsonify(error_object(message, kind, param=param, code=code))
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def runner_error_response(exc: RunnerError) -> Response:
    """The OpenAI answer for one of the runner's errors."""
    param = getattr(exc, "param", None)
    if exc.status == 400:
        if exc.reason == "prompt_too_long":
            return error_response(400, exc.msg, param="messages", code="context_length_exceeded")
        return error_response(400, exc.msg, param=param)
    if exc.status == 401:
        return error_response(401, exc.msg, code="invalid_api_key")
    if exc.status == 404:
        return error_response(404, exc.msg, param="model", code="model_not_found")
    if exc.reason in _UNAVAILABLE:
        return error_response(503, exc.msg, retry_after=RETRY_UNSERVED_S)
    if exc.reason in NO_ROOM_REASONS:
        return error_response(429, exc.msg, code="rate_limit_exceeded", retry_after=RETRY_AFTER_S)
    return error_response(500 if exc.status < 500 else exc.status, exc.msg)


def http_error_response(status: int, message: str) -> Response:
    """An HTTP-level refusal (unknown route, wrong method, body too large) in OpenAI's shape."""
    return error_response(status, message)
