"""go-livepeer registering this runner while its workers are still provisioning: what it records
(health, hardware, version) is what it keeps, so it must be right then."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from common.fleet import PROVISIONING, READY, read_fleet
from common.version import __version__
from tests.client import call
from tests.contract import validate
from tests.fake_ollama import FakeOllama
from tests.golivepeer import advertised_version, register_external_runner, version_compatible
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
GIB = 1 << 30
GPU = {
    "name": "NVIDIA GeForce RTX 3090", "uuid": "GPU-5e1f0c2a-0000-4000-8000-000000000024",
    "memory_total": 24 * GIB, "memory_free": 23 * GIB, "major": 8, "minor": 6, "util_gpu": 0, "util_mem": 0,
}  # fmt: skip


def fetch(url: str) -> tuple[int, Any]:
    response = call("GET", url, timeout=5)  # go-livepeer's 5 s per call; fails on a redirect
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


def test_go_livepeer_records_the_gpus_and_version_of_a_worker_still_provisioning(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", load_time_s=6.0)
    models = f"{LLAMA},{QWEN}"
    stack.start_web(OLLAMA_URL=fake_ollama.url, MODELS=models, VERSION="0.14.2")
    worker = stack.start_worker(wait_ready=False, OLLAMA_URL=fake_ollama.url, MODELS=models, FAKE_NVML_GPUS=[GPU])
    wait_until(lambda: read_fleet(redis), 10, "the worker registered")
    versions = []
    for model in (LLAMA, QWEN):
        registered = register_external_runner(fetch, f"{stack.web_url}/{model}", "llm", model)
        assert registered.is_loading
        validate("HardwareInformation", registered.hardware)
        assert registered.hardware["model_id"] == model
        assert [(g["id"], g["name"]) for g in registered.hardware["gpu_info"].values()] == [(GPU["uuid"], GPU["name"])]
        versions.append(registered.version)
    assert [r.state for r in read_fleet(redis)] == [PROVISIONING]  # all of that happened while it loaded
    for model in (LLAMA, QWEN):
        assert advertised_version(versions, "llm", model) == "0.14.2"
        assert version_compatible("0.14.0", "0.14.2")
    stack.wait_worker_ready(worker)
    assert [r.state for r in read_fleet(redis)] == [READY]


def test_without_version_the_runner_reports_its_own_semver(stack: Stack, fake_ollama: FakeOllama) -> None:
    stack.start_web(OLLAMA_URL=fake_ollama.url)
    status, answer = fetch(f"{stack.web_url}/{LLAMA}/version")
    assert status == 200 and answer == {"pipeline": "llm", "model_id": LLAMA, "version": __version__}
    assert advertised_version([answer], "llm", LLAMA) == __version__
