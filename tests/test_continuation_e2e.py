"""An answer outlives its engine and its worker, with real processes: gunicorn, two workers, each
with its own fake Ollama (tests/fake_ollama.py as its own process, as one Ollama per GPU).

The serving engine, then the serving worker, is SIGKILLed mid-stream; the client's answer goes on
on the other slot: the exact text the fake gives uninterrupted (it continues a trailing assistant
message where the model's template leaves it open, as Ollama does), one final chunk, the role once
on /v1, the usage of the whole answer, one 200.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis import Redis

from tests.client import call
from tests.conftest import RedisServer
from tests.continuation_stack import Reader, chain, serving_worker
from tests.stack import Process, Stack, free_port, wait_until

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"  # llama3.1's template leaves the last assistant turn open
PROMPT = "alpha bravo charlie"
REPLY_TOKENS, TOKENS_PER_S = 40, 20.0  # a 2 s answer: broken after its first few tokens
CUT_AT = 5


@dataclass
class Fleet:
    stack: Stack
    engines: dict[int, Process]  # by port
    workers: dict[int, int]  # worker pid → the port of its engine

    def env(self, port: int) -> dict[str, Any]:
        return dict(MODELS=LLAMA, OLLAMA_URL=f"http://127.0.0.1:{port}", OLLAMA_NUM_PARALLEL=1, VRAM_MB=24576)

    def start_engine(self, port: int) -> None:
        argv = [sys.executable, "-m", "tests.fake_ollama", "--port", str(port), "--slots", "1",
                "--tokens-per-s", str(TOKENS_PER_S), "--reply-tokens", str(REPLY_TOKENS)]  # fmt: skip
        engine = self.stack.spawn("fake-ollama", argv, self.stack.env())
        self.stack._wait(engine, lambda: call("GET", f"http://127.0.0.1:{port}/api/version", timeout=1).ok,
                         "the fake Ollama")  # fmt: skip
        self.engines[port] = engine

    def start_worker(self, port: int) -> None:
        self.workers[self.stack.start_worker(**self.env(port)).pid] = port


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    made = Fleet(Stack(str(tmp_path_factory.mktemp("continued")), redis_server.url), {}, {})
    try:
        ports = [free_port(), free_port()]
        made.stack.start_web(**made.env(ports[0]))
        for port in ports:
            made.start_engine(port)
            made.start_worker(port)
        yield made
    finally:
        made.stack.stop()


def body(api: str, max_tokens: int = 64) -> dict[str, Any]:
    asked: dict[str, Any] = {"model": LLAMA, "messages": [{"role": "user", "content": PROMPT}],
                             "max_tokens": max_tokens, "temperature": 0.0, "stream": True}  # fmt: skip
    if api == "openai":
        asked["stream_options"] = {"include_usage": True}
    return asked


def url(fleet: Fleet, api: str) -> str:
    return f"{fleet.stack.web_url}/llm" if api == "llm" else f"{fleet.stack.web_url}/v1/chat/completions"


def answer(fleet: Fleet, api: str, break_it: str | None) -> tuple[str, str, dict[str, int], Reader]:
    """(text, finish_reason, usage) of one stream, its engine or worker killed mid-way if `break_it`."""
    reader = Reader(url(fleet, api), body(api)).start()
    if break_it is not None:
        reader.wait_texts(CUT_AT)
        worker = serving_worker(fleet.stack, reader.job_id)
        port = fleet.workers[worker.pid]
        if break_it == "engine":
            fleet.engines[port].signal(signal.SIGKILL)
            fleet.engines[port].popen.wait()
            fleet.start_engine(port)  # as a supervisor would restart it
        else:
            worker.signal(signal.SIGKILL)
            worker.popen.wait()
            del fleet.workers[worker.pid]
    reader.finish()
    if break_it == "worker":
        fleet.start_worker(port)  # the engine that lost its worker gets one again
    if api == "llm":
        got = reader.llm()
        return got.text, got.finish_reason, got.usage, reader
    chunks: list[Any] = reader.openai()
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    reason = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")][-1]
    return text, reason, chunks[-1]["usage"], reader


@pytest.mark.parametrize("api", ["llm", "openai"])
@pytest.mark.parametrize("break_it", ["engine", "worker"])
def test_a_stream_goes_on_on_another_slot_when_its_engine_or_worker_dies(fleet: Fleet, api: str,
                                                                         break_it: str) -> None:  # fmt: skip
    whole, reason, usage, _ = answer(fleet, api, None)
    assert (len(whole.split()), reason) == (REPLY_TOKENS, "stop")
    text, finish, got_usage, reader = answer(fleet, api, break_it)
    assert text == whole and finish == reason  # no gap, no repeat at the seam
    assert got_usage["prompt_tokens"] == usage["prompt_tokens"] and got_usage["completion_tokens"] == REPLY_TOKENS
    # The jobs behind it: the broken one ended failed once, the one that finished the answer finished.
    jobs = chain(fleet.stack.redis, reader.job_id)
    assert len(jobs) >= 2 and [j.get_status().value for j in jobs] == ["failed"] * (len(jobs) - 1) + ["finished"]
    assert jobs[-1].args[0]["continue_final"] is True and jobs[-1].args[0]["messages"][-1]["role"] == "assistant"
    cause = "truncated" if break_it == "engine" else "worker_lost"
    counted = f'llm_job_continuations_total{{reason="{cause}"}}'
    wait_until(lambda: counted in call("GET", f"{fleet.stack.web_url}/metrics").text, 5, "the continuation counted")
