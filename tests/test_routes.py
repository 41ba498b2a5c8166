"""Every documented route answers directly (Flask's test client follows no redirect), under every
per-model prefix, with and without a trailing slash."""

from __future__ import annotations

import pytest

from common.models import parse_models
from common.settings import Settings
from tests.client import free_redis_url
from web.app import build_app

MODELS = ("meta-llama/Meta-Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3")
PREFIXES = ["", *(f"/{m}" for m in MODELS)]


@pytest.mark.parametrize("slash", ["", "/"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_no_documented_route_redirects(prefix: str, slash: str) -> None:
    app = build_app(Settings(redis_url=free_redis_url(), models=parse_models(",".join(MODELS))))
    client = app.test_client()
    for path in ("/health", "/version", "/hardware/info", "/hardware/stats"):
        response = client.get(f"{prefix}{path}{slash}")
        assert response.status_code == 200, (prefix, path, slash, response.status_code)
        assert response.is_json
    response = client.post(f"{prefix}/llm{slash}", json={"messages": [{"role": "user", "content": "hi"}]})
    assert not 300 <= response.status_code < 400, response.headers.get("Location")
    assert response.is_json and response.get_json()["detail"]["msg"]  # Redis is not running: a 500, not a 308
