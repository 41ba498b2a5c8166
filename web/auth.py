"""Bearer tokens: with AUTH_TOKEN set every route but /health and /ready needs it (the OpenAI API's
included: it is the API key its SDKs send as a bearer token); /metrics also takes METRICS_TOKEN.

/health stays open for container health checks; everything else (/fleet and /metrics list Ollama
URLs, hosts, pids and GPU UUIDs) answers 401 without the token. go-livepeer sends the token on
every call, /version and /hardware/* included (livepeer/go-livepeer ai/worker/container.go,
NewRunnerContainer: a bearer-token request editor on its whole runner client).
Prometheus sends a bearer token too (`authorization` in its scrape config), so it can be given a
METRICS_TOKEN that opens /metrics and nothing else.
"""

from __future__ import annotations

import hmac

from flask import Flask, request

from common.errors import Unauthorized
from common.settings import Settings
from web import metrics

# Endpoints anyone may call, token or not (go-livepeer polls a live runner's /ready with none).
OPEN_ENDPOINTS = frozenset({"runner.health", "live_runner.ready"})
METRICS_ENDPOINT = "runner.prometheus_metrics"
LLM_ENDPOINT = "runner.llm"
CHAT_ENDPOINT = "runner.chat_completions"


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str | None, expected: str | None) -> bool:
    return token is not None and expected is not None and hmac.compare_digest(token.encode(), expected.encode())


def may_see_details(settings: Settings, header: str | None) -> bool:
    """Whether the caller of an open endpoint may be told what /fleet tells (no AUTH_TOKEN, or it)."""
    return settings.auth_token is None or _matches(bearer_token(header), settings.auth_token)


def accepted_tokens(settings: Settings, endpoint: str | None) -> list[str] | None:
    """The tokens that open this endpoint; None when it is open to anyone."""
    if endpoint in OPEN_ENDPOINTS:
        return None
    tokens = [settings.auth_token] if settings.auth_token else []
    if endpoint == METRICS_ENDPOINT and settings.metrics_token:
        tokens.append(settings.metrics_token)
    return tokens or None


def check(settings: Settings, endpoint: str | None, header: str | None) -> None:
    """Raise Unauthorized unless the request's bearer token opens this endpoint."""
    tokens = accepted_tokens(settings, endpoint)
    if tokens is None:
        return
    token = bearer_token(header)
    # Compare with every accepted token, so the time taken does not tell which one was close.
    if not [expected for expected in tokens if _matches(token, expected)]:
        raise Unauthorized("missing or invalid bearer token")


def install(app: Flask, settings: Settings) -> None:
    """Check the bearer token before every request of `app`."""

    @app.before_request
    def require_token() -> None:
        try:
            check(settings, request.endpoint, request.headers.get("Authorization"))
        except Unauthorized:
            if request.endpoint == LLM_ENDPOINT:
                metrics.observe_refusal("", "unauthorized")
            elif request.endpoint == CHAT_ENDPOINT:
                metrics.observe_refusal("", "unauthorized", api="openai")
            raise
