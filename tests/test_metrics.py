"""/metrics after real requests: outcomes, latencies, tokens, cancels, failures, GPUs, worker deaths.

The web runs two gunicorn processes, so the counts also prove the multiprocess aggregation.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.client import call, stream
from tests.fake_ollama import FakeOllama
from tests.rawclient import RawRequest
from tests.stack import Stack, wait_until
from tests.test_fleet import GPUS

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = call("GET", f"{url}/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], metric: str, /, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": LLAMA, "messages": [{"role": "user", "content": prompt}], **fields}


def test_metrics_follow_real_requests(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", reply_tokens=5)
    stack.start_web(WEB_CONCURRENCY=2)
    worker = stack.start_worker(OLLAMA_URL=fake_ollama.url, OLLAMA_NUM_PARALLEL=2, FAKE_NVML_GPUS=GPUS[1:])
    url = stack.web_url

    assert call("POST", f"{url}/llm", json=body("one two")).status_code == 200
    assert stream(f"{url}/llm", body("three four", stream=True))[0].status_code == 200
    fake_ollama.set_behavior("*", status=500, error="llama runner process has terminated")
    assert call("POST", f"{url}/llm", json=body("boom")).status_code == 500
    fake_ollama.set_behavior("*", status=None, error=None, tokens_per_s=20, reply_tokens=1000)
    leaving = RawRequest(f"{url}/llm", body("bye", stream=True))
    leaving.read_until(b"data: ")
    leaving.close()
    assert fake_ollama.wait_for(lambda f: f.chat_records()[-1].outcome == "cancelled")
    assert call("POST", f"{url}/llm", json={"messages": []}).status_code == 400
    assert call("POST", f"{url}/llm", json=body("x", model="nope")).status_code == 400

    def settled() -> dict[Any, float] | None:
        samples = scrape(url)
        return samples if value(samples, "llm_requests_total", model=LLAMA, outcome="cancelled") == 1 else None

    samples = wait_until(settled, 5, "the cancelled request recorded")
    assert value(samples, "llm_requests_total", model=LLAMA, outcome="ok") == 2
    assert value(samples, "llm_requests_total", model=LLAMA, outcome="failed") == 1
    assert value(samples, "llm_requests_total", model="", outcome="bad_request") == 2
    assert value(samples, "llm_completion_tokens_total", model=LLAMA) == 10
    assert value(samples, "llm_prompt_tokens_total", model=LLAMA) == 2 * (2 + 4)
    assert value(samples, "llm_time_to_first_token_seconds_count", model=LLAMA) == 3
    assert value(samples, "llm_queue_wait_seconds_count", model=LLAMA) == 4
    assert value(samples, "llm_request_duration_seconds_count", model=LLAMA, outcome="ok") == 2
    assert value(samples, "llm_generation_tokens_per_second_count", model=LLAMA) == 2
    assert value(samples, "llm_cancellations_total", model=LLAMA, phase="running") == 1
    assert value(samples, "llm_backend_errors_total", model=LLAMA, reason="ollama_error") == 1
    assert value(samples, "llm_requests_in_flight", model=LLAMA) == 0

    gpu = {"gpu": "0", "uuid": GPUS[1]["uuid"], "name": GPUS[1]["name"], "worker": worker_name(samples)}
    assert value(samples, "llm_gpu_memory_total_bytes", **gpu) == GPUS[1]["memory_total"]
    assert value(samples, "llm_gpu_utilization_compute_percent", **gpu) == GPUS[1]["util_gpu"]
    assert value(samples, "llm_model_capacity_slots", model=LLAMA) == 2
    assert value(samples, "llm_queued_jobs", model=LLAMA) == 0
    assert value(samples, "llm_redis_up") == 1
    assert value(samples, "llm_worker_deaths_total") == 0

    worker.signal(signal.SIGKILL)
    wait_until(lambda: value(scrape(url), "llm_worker_deaths_total") == 1, 15, "the dead worker counted")
    assert value(scrape(url), "llm_model_capacity_slots", model=LLAMA) == 0


def worker_name(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> str:
    names = [dict(labels)["worker"] for name, labels in samples if name == "llm_worker_busy_slots"]
    assert len(names) == 1
    return names[0]
