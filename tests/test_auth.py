"""With AUTH_TOKEN set, every route but /health and /ready answers 401 without the bearer token (real gunicorn)."""

from __future__ import annotations

import pytest

from common.models import DEFAULT_MODELS, parse_models
from common.settings import Settings
from tests.client import call
from tests.contract import validate
from tests.openai_contract import validate as validate_openai
from tests.stack import Stack
from web.app import build_app
from web.auth import OPEN_ENDPOINTS
from web.openai_errors import ENDPOINTS as OPENAI_ENDPOINTS

TOKEN = "auth-token-for-tests"
METRICS_TOKEN = "metrics-token-for-tests"
MODEL = parse_models(DEFAULT_MODELS)[0].model_id


def every_route() -> list[tuple[str, str, str]]:
    """(method, concrete path, endpoint) of every rule the app has, per-model prefixes filled in."""
    app = build_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    found = []
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<path:model_id>", MODEL).replace("<path:filename>", "style.css")
        assert "<" not in path, f"fill in the variables of {rule.rule}"
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, path, rule.endpoint))
    return found


ROUTES = every_route()


def test_the_route_list_covers_prefixes_and_operator_routes() -> None:
    paths = {path for _, path, _ in ROUTES}
    assert {"/llm", f"/{MODEL}/llm", "/health", f"/{MODEL}/health", "/fleet", "/metrics"} <= paths
    assert {"/version", f"/{MODEL}/version", "/hardware/info", f"/{MODEL}/hardware/stats"} <= paths


@pytest.fixture
def web(stack: Stack) -> str:
    stack.start_web(AUTH_TOKEN=TOKEN, METRICS_TOKEN=METRICS_TOKEN)
    return stack.web_url


def test_every_route_but_health_needs_the_token(web: str) -> None:
    checked = 0
    for method, path, endpoint in ROUTES:
        url = f"{web}{path}"
        if endpoint in OPEN_ENDPOINTS:  # /health, and /ready (503: no worker serves the model here)
            assert call(method, url).status_code == (200 if endpoint == "runner.health" else 503), path
            if endpoint == "live_runner.ready":  # why it is not ready is for token holders only
                assert "details on /fleet" in call(method, url).json()["reason"], path
                assert "details on /fleet" not in call(method, url, token=TOKEN).json()["reason"], path
            continue
        body = {"json": {"messages": [{"role": "user", "content": "hi"}]}} if method == "POST" else {}
        for token in (None, "wrong", f"{TOKEN}x", METRICS_TOKEN if endpoint != "runner.prometheus_metrics" else None):
            response = call(method, url, token=token, **body)
            assert response.status_code == 401, (method, path, token, response.status_code)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            if endpoint in OPENAI_ENDPOINTS:  # the OpenAI API answers in its own error shape
                validate_openai("ErrorResponse", response.json())
                assert response.json()["error"]["code"] == "invalid_api_key"
            else:
                validate("HTTPError", response.json())
                assert response.json() == {"detail": {"msg": "missing or invalid bearer token"}}
            checked += 1
        assert call(method, url, token=TOKEN, **body).status_code != 401, path
    assert checked >= 4 * 12
    # Not a route at all: still no hint without the token.
    assert call("GET", f"{web}/no/such/route").status_code == 401
    assert call("GET", f"{web}/no/such/route", token=TOKEN).status_code == 404


def test_metrics_token_opens_only_metrics(web: str) -> None:
    for token in (TOKEN, METRICS_TOKEN):
        response = call("GET", f"{web}/metrics", token=token)
        assert response.status_code == 200 and "llm_redis_up" in response.text
    assert call("GET", f"{web}/fleet", token=METRICS_TOKEN).status_code == 401
    assert call("GET", f"{web}/fleet", token=TOKEN).status_code == 200


def test_without_auth_token_metrics_token_still_guards_metrics(stack: Stack) -> None:
    stack.start_web(METRICS_TOKEN=METRICS_TOKEN)
    assert call("GET", f"{stack.web_url}/metrics").status_code == 401
    assert call("GET", f"{stack.web_url}/metrics", token=METRICS_TOKEN).status_code == 200
    assert call("GET", f"{stack.web_url}/fleet").status_code == 200
