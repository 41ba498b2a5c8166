"""A continuation job on a worker with Ollama: the answer goes on where it was cut, or is refused, never restarted.

The fake Ollama renders each model's chat template as Ollama does (tests/fake_ollama_templates.py):
llama3.1's leaves the last assistant turn open, an imported gemma3 with Ollama's fallback template
closes it. Jobs are placed and read as the web does (tests/continuation_jobs.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis import Redis

from common.errors import CONTINUABLE_REASONS, NOT_CONTINUABLE
from common.events import Done, Failed
from tests.client import call
from tests.conftest import RedisServer
from tests.continuation_jobs import continuation_of, generate_job, run_job
from tests.fake_ollama import KNOWN_MODELS, FakeOllama
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

LLAMA, GEMMA = "meta-llama/Meta-Llama-3.1-8B-Instruct", "google/gemma-3-4b-it"
MODELS = f"{LLAMA}=llama3.1:8b,{GEMMA}=my-gemma3:4b"
# A gemma3 imported from a GGUF: Ollama gives it its fallback template, which closes every turn.
IMPORTED_GEMMA3 = dataclasses.replace(KNOWN_MODELS["gemma2:9b"], tag="my-gemma3:4b", family="gemma3",
                                      template="gemma3-instruct")  # fmt: skip
PROMPT = "alpha bravo charlie"


@dataclass
class Runner:
    url: str
    fake: FakeOllama
    redis: Redis


@pytest.fixture(scope="module")
def runner(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    if redis_server.proc is None:
        redis_server.start()
    redis = Redis.from_url(redis_server.url)
    redis.flushall()
    fake = FakeOllama(models={"llama3.1:8b": KNOWN_MODELS["llama3.1:8b"], "my-gemma3:4b": IMPORTED_GEMMA3},
                      slots=2).start()  # fmt: skip
    stack = Stack(str(tmp_path_factory.mktemp("continuation")), redis_server.url)
    env = {"MODELS": MODELS, "OLLAMA_URL": fake.url, "OLLAMA_NUM_PARALLEL": 2, "VRAM_MB": 81920,
           "OLLAMA_MAX_LOADED_MODELS": 2}  # fmt: skip
    try:
        stack.start_web(**env)
        stack.start_worker(**env)
        yield Runner(stack.web_url, fake, redis)
    finally:
        stack.stop()
        fake.stop()


def whole_answer(runner: Runner, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64, "temperature": 0.0}
    answer: dict[str, Any] = call("POST", f"{runner.url}/llm", json=body).json()
    return answer


def test_the_fleet_says_per_model_whether_an_answer_can_be_continued(runner: Runner) -> None:
    def worker() -> dict[str, Any] | None:
        workers = call("GET", f"{runner.url}/fleet").json()["workers"]
        return workers[0] if workers and workers[0]["state"] == "ready" else None

    models = wait_until(worker, 10, "the worker in /fleet")["models"]
    assert models[LLAMA]["continuation"] is True
    assert "leaves the last assistant turn open" in models[LLAMA]["continuation_note"]
    assert models[GEMMA]["continuation"] is False
    assert "closes every assistant turn" in models[GEMMA]["continuation_note"]


def test_a_continuation_goes_on_where_the_answer_was_cut_with_the_original_usage(runner: Runner) -> None:
    runner.fake.set_behavior("*", reply_tokens=8)
    whole = whole_answer(runner, LLAMA)
    text = whole["choices"][0]["message"]["content"]
    assert text == "alpha bravo charlie " * 2 + "alpha bravo "
    sent = "alpha bravo charlie "  # the client got 3 tokens before the generation was lost
    job = continuation_of(generate_job(LLAMA, "llama3.1:8b", PROMPT), sent, sent_tokens=3)
    got = run_job(runner.redis, MODELS, job)
    assert isinstance(got.end, Done), got
    assert sent + got.text == text  # no restart, no duplicated and no missing text at the seam
    assert got.end.finish_reason == "stop" and got.end.completion_tokens == 5
    # The client's usage: the original prompt's tokens, not the continuation's (which holds `sent`).
    assert got.end.prompt_tokens == whole["usage"]["prompt_tokens"]
    request = runner.fake.chat_records()[-1].body
    assert request["messages"][-1] == {"role": "assistant", "content": sent}
    assert request["options"]["num_predict"] == 61


def test_a_model_whose_template_closes_the_turn_refuses_the_continuation_rather_than_restart(
    runner: Runner,
) -> None:
    before = len(runner.fake.chat_records())
    job = continuation_of(generate_job(GEMMA, "my-gemma3:4b", PROMPT), "alpha bravo ", sent_tokens=2)
    got = run_job(runner.redis, MODELS, job)
    assert isinstance(got.end, Failed) and got.end.reason == NOT_CONTINUABLE and got.end.status == 500
    assert "cannot continue an answer of google/gemma-3-4b-it" in got.end.msg and not got.texts
    assert len(runner.fake.chat_records()) == before  # Ollama was not asked: it would have started over


def test_a_connection_dropped_mid_answer_is_a_failure_the_web_may_continue(runner: Runner) -> None:
    runner.fake.set_behavior("*", reply_tokens=8, drop_after=3)
    try:
        got = run_job(runner.redis, MODELS, generate_job(LLAMA, "llama3.1:8b", PROMPT, stream=False))
    finally:
        runner.fake.clear_behaviors()
    assert got.text == "alpha bravo charlie "
    assert isinstance(got.end, Failed) and got.end.reason in CONTINUABLE_REASONS and got.end.status == 500
