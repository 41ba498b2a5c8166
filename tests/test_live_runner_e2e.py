"""go-livepeer's live-runner path end to end: gunicorn + workers + Redis + a fake Ollama, behind our
model of an orchestrator's live-runner registry (tests/golivepeer_live.py), statically and dynamically.

The proxied app routes are a parameter: PROXIED_ROUTES lists the routes of the web a client calls
through `<orchestrator>/apps/<runner>/app<route>` (the OpenAI API's /v1/chat/completions beside /llm).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import openai
import psutil
import pytest
import requests
from redis import Redis

from tests.fake_ollama import FakeOllama
from tests.golivepeer_live_http import FakeOrchestrator, sse_text
from tests.stack import Process, Stack, free_port, wait_until
from tests.test_fleet import GPUS

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
LABEL = "llm-runner-meta-llama-meta-llama-3.1-8b-instruct"
SECRET = "orch-s3cret"
PROXIED_ROUTES = ["/llm", "/v1/chat/completions"]
# Fast timings for tests: go-livepeer's are 5 s heartbeats, a 20 s TTL and 5 s health polls.
INTERVAL_S, TTL_S, HEALTH_S = 0.5, 3.0, 0.25


@pytest.fixture
def orch() -> Iterator[FakeOrchestrator]:
    fake = FakeOrchestrator(orch_secret=SECRET, heartbeat_interval=INTERVAL_S, heartbeat_ttl=TTL_S,
                            health_interval=HEALTH_S)  # fmt: skip
    with fake:
        yield fake


def body(prompt: str = "alpha bravo charlie", **fields: Any) -> dict[str, Any]:
    return {"model": LLAMA, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64, **fields}


def expected_text(prompt: str, tokens: int) -> str:
    words = prompt.split()
    return "".join(words[i % len(words)] + " " for i in range(tokens))


def start_web(stack: Stack, **env: Any) -> Process:
    """The web, telling the orchestrator its own URL."""
    port = free_port()
    return stack.start_web(port=port, MODELS=LLAMA, LIVE_RUNNER_URL=f"http://127.0.0.1:{port}", **env)


def start_dynamic_web(stack: Stack, orch: FakeOrchestrator, **env: Any) -> Process:
    """A web that registers itself with the orchestrator."""
    return start_web(stack, LIVE_RUNNER_ORCH_URL=orch.url, LIVE_RUNNER_SECRET=SECRET, LIVE_RUNNER_PRICE_USD="0.002",
                     **env)  # fmt: skip


def start_worker(stack: Stack, fake: FakeOllama, slots: int = 2, **env: Any) -> Process:
    return stack.start_worker(MODELS=LLAMA, OLLAMA_URL=fake.url, OLLAMA_NUM_PARALLEL=slots, **env)


def discovered(orch: FakeOrchestrator, **match: Any) -> dict[str, Any] | None:
    """The one runner discovery lists, if its fields match."""
    runners = orch.discovered()
    assert len(runners) <= 1, runners
    return runners[0] if runners and all(runners[0].get(k) == v for k, v in match.items()) else None


def proxied_stream(url: str, prompt: str = "alpha bravo charlie") -> tuple[str, bool]:
    with requests.post(url, json=body(prompt, stream=True), stream=True, timeout=30) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return sse_text(response.iter_lines())


# ---------------------------------------------------------------------------------- static
@pytest.mark.parametrize("route", PROXIED_ROUTES)
def test_static_registration_from_the_cli_is_polled_reserved_and_proxied(
    stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator, route: str
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=200, reply_tokens=12)
    start_worker(stack, fake_ollama, slots=2, FAKE_NVML_GPUS=GPUS[1:])
    web = start_web(stack)
    argv = [shutil.which("llm-runner") or "llm-runner", "liverunner", "--url", stack.web_url, "--price-usd", "0.01"]
    printed = subprocess.run(argv, env=stack.env(MODELS=LLAMA), capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    config = json.loads(printed.stdout)
    [entry] = config["runners"]
    assert (entry["capacity"], entry["mode"], entry["gpu"]["name"]) == (2, "single-shot", "NVIDIA GeForce RTX 3090")

    answer = requests.post(f"{orch.cli_url}/registerLiveRunners", json=config, timeout=10)
    assert answer.status_code == 200 and answer.json()["runners"][0]["healthy"] is True, answer.text
    found = discovered(orch)
    assert found is not None and found["url"] == f"{orch.url}/apps/{LABEL}/app"
    assert (found["capacity"], found["capacity_available"], found["app"]) == (2, 2, f"llm/{LLAMA}")

    text, done = proxied_stream(found["url"] + route)
    assert (text, done) == (expected_text("alpha bravo charlie", 12), True)
    whole = requests.post(found["url"] + route, json=body("delta echo"), timeout=30)
    assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"] == expected_text(
        "delta echo", 12
    )
    # Each request reserved its own session; the web logged it beside the job it placed (never the token).
    sessions = [e["session_id"] for e in orch.registry.of_kind("reserved")]
    assert len(sessions) == 2
    orch.registry.wait_for(lambda ev: len(orch.registry.of_kind("released")) == 2, 10, "both sessions released")
    wait_until(
        lambda: all(f"live-runner session {s} (route {LABEL})" in web.output() for s in sessions), 5, "session logs"
    )
    assert "Livepeer-Session-Token" not in web.output()


def test_static_readiness_goes_non_200_while_no_worker_serves_the_model(
    stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator
) -> None:
    worker = start_worker(stack, fake_ollama)
    start_web(stack)
    entry = {"label": "llama", "routing": "label", "runner_url": f"{stack.web_url}/{LLAMA}", "health_url": "/ready",
             "app": f"llm/{LLAMA}", "mode": "single-shot", "capacity": 2}  # fmt: skip
    config = {"runners": [entry]}
    answer = requests.post(f"{orch.cli_url}/registerLiveRunners", json=config, timeout=10).json()
    # go-livepeer appends the root-relative health_url to runner_url: the model's own readiness.
    assert answer["runners"][0]["health_url"] == f"{stack.web_url}/{LLAMA}/ready" and answer["runners"][0]["healthy"]

    worker.signal(signal.SIGTERM)
    worker.popen.wait(20)
    assert requests.get(f"{stack.web_url}/{LLAMA}/ready", timeout=5).status_code == 503
    wait_until(lambda: discovered(orch) is None, 10, "the runner hidden from discovery")
    refused = requests.post(f"{orch.url}/apps/llama/app/llm", json=body(), timeout=10)
    assert (refused.status_code, refused.text) == (404, "runner not found\n")

    start_worker(stack, fake_ollama)
    wait_until(lambda: discovered(orch, capacity=2), 10, "the runner back in discovery")
    assert requests.get(f"{stack.web_url}/{LLAMA}/ready", timeout=5).status_code == 200


def test_the_unmodified_openai_sdk_consumes_the_runner_through_the_orchestrator(
    stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator
) -> None:
    # As Livepeer's live-runner LLM example consumes its app: OpenAI's SDK pointed at `<app url>/v1`.
    fake_ollama.set_behavior("*", tokens_per_s=200, reply_tokens=10)
    start_worker(stack, fake_ollama, slots=2)
    start_dynamic_web(stack, orch)
    found = wait_until(lambda: discovered(orch, capacity=2), 15, "the runner registered")
    sdk = openai.OpenAI(base_url=found["url"] + "/v1", api_key="unused", max_retries=0)
    chunks = list(sdk.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "kilo lima"}],
                                              stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text("kilo lima", 10)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    whole = sdk.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "mike"}], max_tokens=4)
    assert whole.choices[0].message.content == expected_text("mike", 4) and whole.usage is not None
    assert [m.id for m in sdk.models.list()] == [LLAMA]


# ---------------------------------------------------------------------------------- dynamic
def test_dynamic_registration_follows_the_fleets_capacity(
    stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator
) -> None:
    start_worker(stack, fake_ollama, slots=1, FAKE_NVML_GPUS=GPUS[:1])
    second = start_worker(stack, fake_ollama, slots=2, FAKE_NVML_GPUS=GPUS[1:])
    start_dynamic_web(stack, orch)
    found = wait_until(lambda: discovered(orch, capacity=3), 15, "the runner registered with capacity 3")
    assert found["url"] == f"{orch.url}/apps/{LABEL}/app"
    [registered] = orch.registry.of_kind("registered")
    request = registered["request"]
    assert request["runner_url"] == f"{stack.web_url}/{LLAMA}" and request["status"] == "ready"
    assert request["price_info"] == {"price": 0.002, "currency": "usd", "unit": "fixed"}
    assert request["gpu"]["name"] == "NVIDIA GeForce RTX 3070, NVIDIA GeForce RTX 3090"

    second.signal(signal.SIGTERM)
    wait_until(lambda: discovered(orch, capacity=1), 15, "capacity down to the remaining worker's slot")
    text, done = proxied_stream(f"{found['url']}/llm")
    assert done and text == expected_text("alpha bravo charlie", 8)


@pytest.mark.parametrize("route", PROXIED_ROUTES)
def test_a_request_beyond_capacity_is_refused_by_the_orchestrator_while_a_stream_runs(
    stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator, route: str
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=30)
    start_worker(stack, fake_ollama, slots=1)
    start_dynamic_web(stack, orch)
    found = wait_until(lambda: discovered(orch, capacity=1), 15, "the runner registered")
    with requests.post(found["url"] + route, json=body(stream=True), stream=True, timeout=30) as first:
        lines = first.iter_lines()
        assert next(line for line in lines if line.startswith(b"data: "))  # the stream is under way
        assert discovered(orch, capacity_used=1, capacity_available=0)
        refused = requests.post(found["url"] + route, json=body(), timeout=10)
        assert (refused.status_code, refused.text) == (503, "no capacity available for runner\n")
        text, done = sse_text(lines)
        assert done and len(text) > 0
    # The slot is free once the proxied answer has ended (go-livepeer releases it after proxying).
    orch.registry.wait_for(lambda ev: orch.registry.of_kind("released"), 10, "the slot released")
    assert requests.post(found["url"] + route, json=body(), timeout=30).status_code == 200


def wait_for_replacement(web: Process, survivor: int) -> None:
    """gunicorn replaces a worker that stopped: let the new one finish booting, or the stack's own
    SIGTERM could reach it before it handles signals (gunicorn then kills it after its graceful timeout)."""
    children = psutil.Process(web.pid).children
    others = wait_until(lambda: [p.pid for p in children() if p.pid != survivor], 20, "a new worker")
    wait_until(lambda: f"[{others[0]}]: live-runner registration loops started" in web.output(), 20, "its boot")


def registrations(orch: FakeOrchestrator) -> int:
    return len(orch.registry.of_kind("registered", runner_id=LABEL))


def test_a_404_heartbeat_registers_again(stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator) -> None:
    start_worker(stack, fake_ollama)
    start_dynamic_web(stack, orch)
    wait_until(lambda: discovered(orch), 15, "the runner registered")
    orch.registry.sweeping = False  # hold the window between the TTL running out and the sweep open
    orch.registry.age(LABEL, TTL_S + 1)
    orch.registry.wait_for(lambda ev: any(e["kind"] == "refused" and e["status"] == 404 for e in ev), 10, "a 404")
    orch.registry.remove_expired()
    orch.registry.sweeping = True
    orch.registry.wait_for(lambda ev: registrations(orch) == 2, 10, "a second registration")
    assert discovered(orch, capacity=2)


def test_an_orchestrator_restart_is_registered_with_again(
    stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator
) -> None:
    start_worker(stack, fake_ollama)
    start_dynamic_web(stack, orch)
    wait_until(lambda: discovered(orch), 15, "the runner registered")
    orch.registry.forget_everything()
    # The heartbeat secret means nothing to a new registry (401); the runner registers afresh.
    orch.registry.wait_for(lambda ev: registrations(orch) == 2, 10, "a second registration")
    assert orch.registry.of_kind("refused", runner_id=LABEL, status=401)
    assert discovered(orch, capacity=2)


def test_sigterm_to_the_web_unregisters(stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator) -> None:
    start_worker(stack, fake_ollama)
    web = start_dynamic_web(stack, orch)
    wait_until(lambda: discovered(orch), 15, "the runner registered")
    web.signal(signal.SIGTERM)
    orch.registry.wait_for(lambda ev: orch.registry.of_kind("unregister", runner_id=LABEL, status=204), 15,
                           "the unregister")  # fmt: skip
    assert web.popen.wait(20) == 0
    assert discovered(orch) is None and orch.registry.of_kind("removed", reason="unregister")
    assert Redis.from_url(stack.redis_url).keys("llmrunner:liverunner:*") == []


def test_the_registry_drops_the_runner_when_heartbeats_stop(
    stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator
) -> None:
    start_worker(stack, fake_ollama)
    web = start_dynamic_web(stack, orch)
    wait_until(lambda: discovered(orch), 15, "the runner registered")
    master = psutil.Process(web.pid)
    for process in [*master.children(recursive=True), master]:
        process.kill()  # kill -9: no shutdown hook runs anywhere
    web.popen.wait(10)
    orch.registry.wait_for(lambda ev: orch.registry.of_kind("removed", runner_id=LABEL), TTL_S + 5, "the TTL drop")
    assert orch.registry.of_kind("removed", runner_id=LABEL)[0]["reason"] == "heartbeat timeout"
    assert discovered(orch) is None and not orch.registry.of_kind("unregister")


def test_one_web_process_heartbeats_and_hands_over_when_it_stops(
    stack: Stack, fake_ollama: FakeOllama, orch: FakeOrchestrator
) -> None:
    start_worker(stack, fake_ollama)
    web = start_dynamic_web(stack, orch, WEB_CONCURRENCY=2)
    wait_until(lambda: discovered(orch), 15, "the runner registered")
    redis = Redis.from_url(stack.redis_url)
    lease = f"llmrunner:liverunner:{LABEL}:lease"
    holder = int(redis.get(lease).decode().split(":")[1])  # type: ignore[union-attr]
    orch.registry.wait_for(lambda ev: len(orch.registry.of_kind("heartbeat")) >= 4, 10, "heartbeats")
    assert registrations(orch) == 1  # two processes, one registration

    psutil.Process(holder).send_signal(signal.SIGTERM)  # one gunicorn worker stops; the other goes on
    wait_until(lambda: not psutil.pid_exists(holder) or psutil.Process(holder).status() == psutil.STATUS_ZOMBIE,
               20, "the holder's exit")  # fmt: skip
    stopped_at = time.monotonic()
    new_holder = wait_until(lambda: redis.get(lease), 10, "a new holder").decode()
    assert int(new_holder.split(":")[1]) != holder
    orch.registry.wait_for(lambda ev: [e for e in orch.registry.of_kind("heartbeat") if e["at"] > stopped_at], 10,
                           "a heartbeat from the new holder")  # fmt: skip
    assert registrations(orch) == 1 and not orch.registry.of_kind("unregister") and discovered(orch)
    assert f"[{holder}]: {LABEL}: registration handed over to" in web.output()
    wait_for_replacement(web, survivor=int(new_holder.split(":")[1]))


def test_a_killed_holder_is_taken_over_before_the_orchestrator_drops_the_runner(
    stack: Stack, fake_ollama: FakeOllama
) -> None:
    # A TTL the takeover must beat: the lease lapses after half of what is left of it past an interval.
    with FakeOrchestrator(orch_secret=SECRET, heartbeat_interval=INTERVAL_S, heartbeat_ttl=8.0) as orch:
        start_worker(stack, fake_ollama)
        web = start_dynamic_web(stack, orch, WEB_CONCURRENCY=2)
        wait_until(lambda: discovered(orch), 15, "the runner registered")
        redis = Redis.from_url(stack.redis_url)
        lease = f"llmrunner:liverunner:{LABEL}:lease"
        holder = int(redis.get(lease).decode().split(":")[1])  # type: ignore[union-attr]
        psutil.Process(holder).kill()  # kill -9: the lease is left to lapse
        killed_at = time.monotonic()

        def other_holder() -> bytes | None:
            raw = redis.get(lease)
            return raw if raw is not None and int(raw.decode().split(":")[1]) != holder else None

        new_holder = wait_until(other_holder, 15, "another process holding the lease")
        orch.registry.wait_for(lambda ev: [e for e in orch.registry.of_kind("heartbeat") if e["at"] > killed_at],
                               10, "a heartbeat from the new holder")  # fmt: skip
        # The same registration carried on with the stored secret: never dropped, never registered twice.
        assert registrations(orch) == 1 and not orch.registry.of_kind("removed") and discovered(orch)
        wait_for_replacement(web, survivor=int(new_holder.decode().split(":")[1]))
