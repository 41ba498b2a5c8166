"""End to end with BACKEND=openai: gunicorn + worker + a fake OpenAI-compatible engine, read as go-livepeer reads.

The fake behaves as llama-cpp-python's server (one request at a time, any other request
interrupts the running stream, no usage) unless made vLLM-like; see tests/fake_openai.py.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
from redis import Redis

from tests.client import call, stream
from tests.conftest import RedisServer
from tests.fake_openai import PROMPT_TOKENS_PER_MESSAGE, FakeOpenAI, token_text
from tests.golivepeer import read_stream
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SERVED = "smollm2-served"
KEY = "engine-key"
OTHER = "Qwen/Qwen2.5-0.5B-Instruct"


@dataclass
class Runner:
    stack: Stack
    fake: FakeOpenAI
    url: str


@pytest.fixture(scope="module")
def runner(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    stack = Stack(str(tmp_path_factory.mktemp("openai")), redis_server.url)
    with FakeOpenAI([SERVED], api_key=KEY) as fake:
        try:
            env = dict(MODELS=f"{MODEL}={SERVED}", BACKEND="openai", OPENAI_BASE_URL=fake.url, OPENAI_API_KEY=KEY,
                       SLOTS=1, OLLAMA_IDLE_TIMEOUT_S=1.5, QUEUE_TIMEOUT_S=20)  # fmt: skip
            stack.start_web(**env)
            stack.start_worker(**env)
            yield Runner(stack, fake, stack.web_url)
        finally:
            stack.stop()


@pytest.fixture(autouse=True)
def reset(runner: Runner) -> None:
    runner.fake.set_behavior(first_token_delay=0.0, tokens_per_s=0.0, reply_tokens=8, status=None, error=None,
                             error_after=None, drop_after=None, stall_after=None, interrupt=True,
                             usage=False, ping_s=None, done_after=None)  # fmt: skip


def body(prompt: str = "hello", *, stream_: bool = True, max_tokens: int = 64) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": stream_}  # fmt: skip


def expected(n: int) -> str:
    return "".join(token_text(i) for i in range(n))


def test_a_stream_as_go_livepeer_reads_it_with_the_relayed_count(runner: Runner) -> None:
    response, lines = stream(f"{runner.url}/llm", body())
    assert response.status_code == 200
    got = read_stream(lines)
    assert got.text == expected(8) and got.finish_reason == "stop" and got.saw_done_marker
    # llama-cpp-python sends no usage: the completion count is what was relayed, the prompt's unknown.
    assert got.usage == {"prompt_tokens": 0, "completion_tokens": 8, "total_tokens": 8}
    chat = runner.fake.chats()[-1]
    assert chat.headers["authorization"] == f"Bearer {KEY}"
    assert chat.body["model"] == SERVED and chat.body["stream"] is True
    assert chat.body["stream_options"] == {"include_usage": True}


def test_a_whole_answer_and_length_when_max_tokens_cuts(runner: Runner) -> None:
    answer = call("POST", f"{runner.url}/llm", json=body(stream_=False, max_tokens=3)).json()
    assert answer["choices"][0]["message"]["content"] == expected(3)
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3


def test_the_engines_400_reaches_the_client_with_its_message(runner: Runner) -> None:
    runner.fake.set_behavior(status=400, error="This model's maximum context length is 2048 tokens")
    response = call("POST", f"{runner.url}/llm", json=body(stream_=False))
    assert response.status_code == 400
    assert "maximum context length is 2048" in response.json()["detail"]["msg"]


def test_an_engine_failure_is_a_500_with_its_message(runner: Runner) -> None:
    runner.fake.set_behavior(status=500, error="llama_decode returned -3")
    response = call("POST", f"{runner.url}/llm", json=body(stream_=False))
    assert response.status_code == 500
    assert "llama_decode returned -3" in response.json()["detail"]["msg"]


def test_an_interrupted_stream_ends_with_finish_reason_error(runner: Runner) -> None:
    runner.fake.set_behavior(tokens_per_s=20, reply_tokens=200)
    result: dict[str, object] = {}

    def client() -> None:
        result["reply"] = stream(f"{runner.url}/llm", body(max_tokens=200))

    thread = threading.Thread(target=client)
    thread.start()
    assert runner.fake.wait_for(lambda f: f.chats() and f.chats()[-1].sent_tokens >= 3)
    # Someone else asks the engine something: llama-cpp-python gives up the running stream.
    requests.get(f"{runner.fake.url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    thread.join(15)
    response, lines = result["reply"]  # type: ignore[misc]
    got = read_stream(lines)
    assert response.status_code == 200 and got.finish_reason == "error" and got.saw_done_marker
    assert got.text.startswith(expected(3)) and got.usage["completion_tokens"] >= 3
    assert runner.fake.chats()[-1].outcome == "interrupted"


def test_an_interrupted_answer_to_a_non_streaming_request_is_a_500_never_a_partial_200(runner: Runner) -> None:
    # The engine stops after one token without a finish_reason (llama-cpp-python's interrupted
    # stream): SDKs would read a 200 with half a message as a success.
    runner.fake.set_behavior(done_after=1)
    response = call("POST", f"{runner.url}/llm", json=body(stream_=False))
    assert response.status_code == 500
    assert "no finish_reason after 1 token(s)" in response.json()["detail"]["msg"]
    # A stream gets the token it was sent, then the final chunk saying the generation failed.
    got = read_stream(stream(f"{runner.url}/llm", body())[1])
    assert got.text == expected(1) and got.finish_reason == "error" and got.saw_done_marker


def test_an_error_event_mid_stream_ends_with_finish_reason_error(runner: Runner) -> None:
    runner.fake.set_behavior(error_after=4)
    _, lines = stream(f"{runner.url}/llm", body())
    got = read_stream(lines)
    assert got.text == expected(4) and got.finish_reason == "error"


def test_a_dropped_connection_mid_stream_ends_with_finish_reason_error(runner: Runner) -> None:
    runner.fake.set_behavior(drop_after=5)
    _, lines = stream(f"{runner.url}/llm", body())
    got = read_stream(lines)
    assert got.text == expected(5) and got.finish_reason == "error"


def test_a_slow_first_token_is_waited_for(runner: Runner) -> None:
    runner.fake.set_behavior(first_token_delay=2.0)
    started = time.monotonic()
    got = read_stream(stream(f"{runner.url}/llm", body())[1])
    assert got.text == expected(8) and got.finish_reason == "stop"
    assert time.monotonic() - started >= 2.0


def test_a_stall_ends_the_stream_with_an_error(runner: Runner) -> None:
    # The engine's keep-alive comments (sse-starlette pings) do not count as progress.
    runner.fake.set_behavior(stall_after=2, ping_s=0.3)
    got = read_stream(stream(f"{runner.url}/llm", body())[1])
    assert got.text == expected(2) and got.finish_reason == "error"
    assert runner.fake.wait_for(lambda f: f.chats()[-1].outcome == "cancelled", timeout=10)


def test_a_client_that_leaves_stops_the_engine(runner: Runner) -> None:
    runner.fake.set_behavior(tokens_per_s=20, reply_tokens=1000)
    with requests.post(f"{runner.url}/llm", json=body(max_tokens=1000), stream=True, timeout=10) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if b"content" in line)
    assert runner.fake.wait_for(lambda f: f.chats()[-1].outcome == "cancelled", timeout=10)
    assert runner.fake.chats()[-1].sent_tokens < 200


def test_two_requests_on_one_slot_queue_rather_than_interrupt(runner: Runner) -> None:
    runner.fake.set_behavior(tokens_per_s=40, reply_tokens=20)
    before = len(runner.fake.chats())
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda p: stream(f"{runner.url}/llm", body(p)), ["one", "two"]))
    for _, lines in replies:
        got = read_stream(lines)
        assert got.text == expected(20) and got.finish_reason == "stop"
    assert [c.outcome for c in runner.fake.chats()[before:]] == ["done", "done"]


def test_the_worker_never_asks_the_engine_anything_while_serving(runner: Runner) -> None:
    # Only the start-up check: the heartbeat (every 2 s) must not poll an engine that a second
    # request would interrupt.
    runner.fake.set_behavior(tokens_per_s=10, reply_tokens=30)
    got = read_stream(stream(f"{runner.url}/llm", body(max_tokens=30))[1])
    assert got.finish_reason == "stop"
    from_runner = [r for r in runner.fake.records if r.headers.get("user-agent", "").startswith("livepeer-llm-runner")]
    assert [r.path for r in from_runner if r.method == "GET"] == ["/v1/models"]


def test_the_fleet_says_vram_is_the_engines_business(runner: Runner) -> None:
    fleet = call("GET", f"{runner.url}/fleet").json()
    worker = fleet["workers"][0]
    assert worker["backend"] == "openai" and worker["engine_url"] == runner.fake.url
    assert "VRAM fit is the engine's business" in worker["engine_note"]
    assert fleet["models"][MODEL]["capacity"] == 1


def test_a_vllm_like_engine_reports_its_own_usage_and_is_asked_again_within_its_context(
    tmp_path: object, redis_server: RedisServer, redis: Redis
) -> None:
    stack = Stack(str(tmp_path), redis_server.url)
    # Another model id than the module's runner serves, so that its worker takes none of these jobs.
    with FakeOpenAI([OTHER], vllm=True, n_ctx=100) as fake:
        try:
            env = dict(MODELS=OTHER, BACKEND="openai", OPENAI_BASE_URL=fake.url, SLOTS=4)
            stack.start_web(**env)
            stack.start_worker(**env)
            fake.set_behavior(reply_tokens=500)
            response, lines = stream(f"{stack.web_url}/llm", {**body(max_tokens=5000), "model": OTHER})
            assert response.status_code == 200, lines
            got = read_stream(lines)
            # vLLM refuses prompt + max_tokens beyond its context with a 400 (which would suspend the
            # orchestrator); asked again with the room the refusal reports, it answers.
            first, second = fake.chats()[-2:]
            assert (first.body["max_tokens"], first.outcome) == (100, "error")
            prompt = PROMPT_TOKENS_PER_MESSAGE
            assert (second.body["max_tokens"], second.outcome) == (100 - prompt, "done")
            assert got.finish_reason == "length"
            assert got.usage == {"prompt_tokens": prompt, "completion_tokens": 100 - prompt,
                                 "total_tokens": 100}  # fmt: skip
            with ThreadPoolExecutor(4) as pool:
                many = list(pool.map(lambda p: stream(f"{stack.web_url}/llm", {**body(p), "model": OTHER})[1], "abcd"))
            assert all(read_stream(lines).finish_reason == "length" for lines in many)
            # A prompt that alone fills the context is the client's 400, with vLLM's words.
            long = [{"role": "user", "content": "x"}] * 15
            refused = call(
                "POST", f"{stack.web_url}/llm", json={**body(stream_=False), "model": OTHER, "messages": long}
            )
            assert (
                refused.status_code == 400 and "maximum context length is 100 tokens" in refused.json()["detail"]["msg"]
            )
        finally:
            stack.stop()


def test_a_wrong_api_key_keeps_the_worker_from_serving(tmp_path: object, redis_server: RedisServer,
                                                       redis: Redis) -> None:  # fmt: skip
    stack = Stack(str(tmp_path), redis_server.url)
    with FakeOpenAI([OTHER], api_key="right") as fake:
        try:
            worker = stack.start_worker(wait_ready=False, MODELS=OTHER, BACKEND="openai", OPENAI_BASE_URL=fake.url,
                                        OPENAI_API_KEY="wrong")  # fmt: skip
            wait_until(lambda: "OPENAI_API_KEY" in worker.output(), 15, "the worker to name the key")
            assert fake.records and all(r.outcome == "refused" for r in fake.records)
        finally:
            stack.stop()


def test_an_https_engine_with_its_own_ca(tmp_path: Path, redis_server: RedisServer, redis: Redis) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    stack = Stack(str(tmp_path), redis_server.url)
    with FakeOpenAI([OTHER], api_key=KEY, tls=server_tls) as fake:
        try:
            # The worker trusts the engine's CA as OpenSSL does: SSL_CERT_FILE.
            env = dict(MODELS=OTHER, BACKEND="openai", OPENAI_BASE_URL=fake.url, OPENAI_API_KEY=KEY,
                       SSL_CERT_FILE=ca_file)  # fmt: skip
            stack.start_web(**env)
            stack.start_worker(**env)
            got = read_stream(stream(f"{stack.web_url}/llm", {**body(), "model": OTHER})[1])
            assert fake.url.startswith("https://")
            assert got.text == expected(8) and got.finish_reason == "stop"
            assert fake.chats()[-1].headers["authorization"] == f"Bearer {KEY}"
        finally:
            stack.stop()


def test_a_served_name_the_engine_lacks_is_said_in_the_fleet(tmp_path: Path, redis_server: RedisServer,
                                                             redis: Redis) -> None:  # fmt: skip
    stack = Stack(str(tmp_path), redis_server.url)
    with FakeOpenAI(["something-else"]) as fake:
        try:
            env = dict(MODELS=f"{OTHER}=not-there", BACKEND="openai", OPENAI_BASE_URL=fake.url)
            stack.start_web(**env)
            stack.start_worker(**env)

            # The web refreshes its view of the fleet periodically: wait for the worker's record.
            def seen() -> dict[str, Any] | None:
                fleet: dict[str, Any] = call("GET", f"{stack.web_url}/fleet").json()
                return fleet if any(OTHER in w["models"] for w in fleet["workers"]) else None

            fleet = wait_until(seen, 10, "the worker in the web's fleet view")
            assert fleet["models"][OTHER]["capacity"] == 0
            assert "'not-there' is not served by the engine" in fleet["models"][OTHER]["note"]
            assert "something-else" in fleet["models"][OTHER]["note"]
            response = call("POST", f"{stack.web_url}/llm", json={**body(stream_=False), "model": OTHER})
            assert response.status_code == 500 and "not served by the engine" in response.json()["detail"]["msg"]
        finally:
            stack.stop()
