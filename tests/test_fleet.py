"""A mixed GPU fleet: one worker per GPU (the launcher), VRAM-bound models, routing, pulls, slots."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis import Redis

from common.fleet import READY, ModelFit, WorkerRecord, read_fleet
from tests.client import call
from tests.conftest import RedisServer
from tests.contract import validate
from tests.fake_ollama import KNOWN_MODELS, FakeOllama
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

GIB = 1 << 30
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QWEN7 = "Qwen/Qwen2.5-7B-Instruct"
QWEN14 = "Qwen/Qwen2.5-14B-Instruct"
LLAMA70 = "meta-llama/Meta-Llama-3.1-70B-Instruct"
GPUS = [
    {"name": "NVIDIA GeForce RTX 3070", "uuid": "GPU-8f1c0a44-0000-4000-8000-000000000008",
     "memory_total": 8 * GIB, "memory_free": 7 * GIB, "major": 8, "minor": 6, "util_gpu": 3, "util_mem": 1},
    {"name": "NVIDIA GeForce RTX 3090", "uuid": "GPU-8f1c0a44-0000-4000-8000-000000000024",
     "memory_total": 24 * GIB, "memory_free": 23 * GIB, "major": 8, "minor": 6, "util_gpu": 5, "util_mem": 2},
]  # fmt: skip


def models_without(*missing: str) -> dict[str, Any]:
    import dataclasses

    return {tag: dataclasses.replace(spec, installed=tag not in missing) for tag, spec in KNOWN_MODELS.items()}


@dataclass
class Fleet:
    """An 8 GB GPU and a 24 GB one, each with its Ollama, behind one web."""

    stack: Stack
    small: FakeOllama
    big: FakeOllama

    @property
    def url(self) -> str:
        return self.stack.web_url


def start_fleet(
    stack: Stack, small: FakeOllama, big: FakeOllama, models: str, gpus: list[dict[str, Any]] = GPUS
) -> None:
    """`llm-runner workers` for both GPUs, and the web; waits until both workers are ready."""
    launcher = [shutil.which("llm-runner") or "llm-runner", "workers", "--gpus", "all",
                "--ollama-urls", f"{small.url},{big.url}"]  # fmt: skip
    stack.spawn("workers", launcher, stack.env(MODELS=models, FAKE_NVML_GPUS=gpus))
    wait_until(lambda: [r.state for r in read_fleet(stack.redis)] == [READY, READY], 20, "both GPU workers ready")
    stack.start_web(MODELS=models)


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if redis_server.proc is None:
        redis_server.start()
    Redis.from_url(redis_server.url).flushall()
    small = FakeOllama(models=models_without("qwen2.5:7b")).start()
    big = FakeOllama().start()
    for fake in (small, big):
        fake.set_behavior("*", reply_tokens=4)
    stack = Stack(str(tmp_path_factory.mktemp("fleet")), redis_server.url)
    try:
        start_fleet(stack, small, big, f"{LLAMA},{QWEN7},{QWEN14},{LLAMA70}")
        yield Fleet(stack, small, big)
    finally:
        stack.stop()
        small.stop()
        big.stop()


def ask(url: str, model: str, prompt: str = "hello there") -> Any:
    return call("POST", f"{url}/llm", json={"model": model, "messages": [{"role": "user", "content": prompt}]})


def test_each_gpu_serves_only_the_models_that_fit_it(fleet: Fleet) -> None:
    view = call("GET", f"{fleet.url}/fleet").json()
    small, big = view["workers"]
    assert small["gpu"]["memory_total"] == 8 * GIB and big["gpu"]["memory_total"] == 24 * GIB
    served = {w["gpu"]["index"]: sorted(m for m, fit in w["models"].items() if fit["fits"]) for w in view["workers"]}
    assert served == {0: sorted([LLAMA, QWEN7]), 1: sorted([LLAMA, QWEN7, QWEN14])}
    assert small["models"][QWEN14]["need_bytes"] > small["vram_budget"]
    assert view["models"][LLAMA]["capacity"] == 2 and view["models"][QWEN14]["capacity"] == 1
    assert view["models"][LLAMA70]["capacity"] == 0 and "needs about 41.5 GiB" in view["models"][LLAMA70]["note"]


def test_14b_jobs_go_only_to_the_24gb_gpu(fleet: Fleet) -> None:
    before_small = len(fleet.small.chat_records())
    for i in range(6):
        response = ask(fleet.url, QWEN14, f"fourteen {i}")
        assert response.status_code == 200 and response.json()["model"] == QWEN14
    assert [r.model for r in fleet.big.chat_records()[-6:]] == ["qwen2.5:14b"] * 6
    assert len(fleet.small.chat_records()) == before_small


def test_a_model_no_gpu_can_hold_is_refused_within_a_second(fleet: Fleet) -> None:
    asked = time.monotonic()
    response = ask(fleet.url, LLAMA70)
    assert time.monotonic() - asked < 1.0
    assert response.status_code == 500
    msg = response.json()["detail"]["msg"]
    assert LLAMA70 in msg and "needs about 41.5 GiB" in msg and "offers 23.0 GiB" in msg
    assert not [r for f in (fleet.small, fleet.big) for r in f.chat_records() if r.model == "llama3.1:70b"]


def test_a_model_missing_from_ollama_was_pulled_then_served(fleet: Fleet) -> None:
    assert "qwen2.5:7b" in fleet.small.pulls
    small = call("GET", f"{fleet.url}/fleet").json()["workers"][0]
    assert small["models"][QWEN7]["installed"] and small["models"][QWEN7]["fits"]
    assert ask(fleet.url, QWEN7).status_code == 200


def test_health_is_ok_when_every_model_is_served_or_fits_nowhere(fleet: Fleet) -> None:
    assert call("GET", f"{fleet.url}/health").json() == {"status": "OK"}
    assert call("GET", f"{fleet.url}/{QWEN14}/health").json() == {"status": "OK"}
    assert call("GET", f"{fleet.url}/{LLAMA70}/health").json() == {"status": "LOADING"}


def test_hardware_endpoints_show_every_gpu_of_the_fleet(fleet: Fleet) -> None:
    info = call("GET", f"{fleet.url}/hardware/info").json()
    validate("HardwareInformation", info)
    assert info["model_id"] == LLAMA
    assert info["gpu_info"] == {
        str(i): {"id": g["uuid"], "name": g["name"], "memory_total": g["memory_total"],
                 "memory_free": g["memory_free"], "major": 8, "minor": 6}
        for i, g in enumerate(GPUS)
    }  # fmt: skip
    stats = call("GET", f"{fleet.url}/hardware/stats").json()
    validate("HardwareStats", stats)
    assert [s["utilization_compute"] for s in stats["gpu_stats"].values()] == [3, 5]
    scoped = call("GET", f"{fleet.url}/{QWEN14}/hardware/info").json()
    assert scoped["model_id"] == QWEN14
    assert [g["id"] for g in scoped["gpu_info"].values()] == [GPUS[1]["uuid"]]


def test_a_record_from_a_newer_worker_stays_readable() -> None:
    # A field this version does not know (a worker upgraded before the web) must not make the
    # worker look dead: read_fleet forgets records it cannot parse and counts a death.
    record = WorkerRecord(name="w", host="h", pid=1, version="v", ollama_url="u",
                          models={"m": ModelFit(tag="t", installed=True, fits=True, features=["tools"])})  # fmt: skip
    data = json.loads(record.to_json())
    data["from_the_future"] = 1
    data["models"]["m"]["also_new"] = [1]
    again = WorkerRecord.from_json(json.dumps(data))
    assert again == record and again.models["m"].features == ["tools"]
