"""Hostile input against the running stack: property-based bodies and a schemathesis run of /llm.

Whatever the body, the answer is a 200 or a 400 with `{"detail": {"msg"}}` JSON: never a 5xx,
a hang, or a stack trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.client import CLOSE, call
from tests.conftest import RedisServer
from tests.contract import SPEC_PATH
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.stack import Stack

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)


@pytest.fixture(scope="module")
def url(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    fake = FakeOllama(slots=4).start()
    fake.set_behavior("*", reply_tokens=3)
    stack = Stack(str(tmp_path_factory.mktemp("fuzz")), redis_server.url)
    try:
        stack.start_web(OLLAMA_URL=fake.url, MAX_BODY_BYTES=65536)
        stack.start_worker(OLLAMA_URL=fake.url, OLLAMA_NUM_PARALLEL=4, VRAM_MB=24576)
        yield stack.web_url
    finally:
        stack.stop()
        fake.stop()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "user", "assistant", "tool", "", "USER"]) | JSON,
        "content": st.text(max_size=40) | JSON,
    },
)
NEAR_VALID = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(MESSAGE, max_size=4) | JSON,
        "model": st.sampled_from(["", LLAMA, "meta-llama", "../../etc"]) | JSON,
        "max_tokens": st.integers(-5, 10_000) | JSON,
        "temperature": st.floats(-1, 3, allow_nan=False) | JSON,
        "top_p": st.floats(-1, 2, allow_nan=False) | JSON,
        "top_k": st.integers(-(10**15), 10**15) | JSON,
        "stream": st.booleans() | JSON,
    },
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    NEAR_VALID.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=300).map(str.encode),
)


def content_type(response: Any) -> str:
    """The Content-Type of a requests or a schemathesis response (lists of lower-cased headers)."""
    value = response.headers.get("Content-Type") or response.headers.get("content-type")
    return str(value[0] if isinstance(value, list) else value)


def assert_well_formed(response: Any) -> None:
    assert response.status_code in (200, 400), response.text[:300]
    assert "Traceback" not in response.text
    if response.status_code == 400:
        assert content_type(response) == "application/json"
        assert isinstance(response.json()["detail"]["msg"], str)
    elif content_type(response) == "text/event-stream":
        result = read_stream(response.content.split(b"\n"))
        assert result.finish_reason == "stop" and result.saw_done_marker
    else:
        assert response.json()["choices"][0]["message"]["content"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=BODIES)
def test_no_body_gets_a_server_error_a_hang_or_a_traceback(url: str, raw: bytes) -> None:
    response = call("POST", f"{url}/llm", data=raw, headers={"Content-Type": "application/json"}, timeout=10)
    assert_well_formed(response)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@SCHEMA.include(path="/llm", method="POST").parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_llm_conforms_to_the_published_contract(case: schemathesis.Case, url: str) -> None:
    if isinstance(case.body, dict) and case.body.get("stream") is True:
        # The contract documents only JSON for 200; streams are SSE (go-livepeer reads them in
        # ai/worker/worker.go, Worker.handleStreamingResponse).
        response = case.call(base_url=url, headers=CLOSE)
        assert_well_formed(response)
    else:
        case.call_and_validate(base_url=url, headers=CLOSE, checks=CHECKS)
