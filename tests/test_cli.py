"""The operator CLI against a running test stack: doctor, models pull, aimodels, compose."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from ops.cli import build_parser
from ops.secrets_file import shown_url
from tests.fake_ollama import KNOWN_MODELS, FakeOllama
from tests.stack import Stack, free_port
from tests.test_fleet import GPUS

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QWEN7 = "Qwen/Qwen2.5-7B-Instruct"
LLAMA70 = "meta-llama/Meta-Llama-3.1-70B-Instruct"


def cli(stack: Stack, *args: str, **env: Any) -> subprocess.CompletedProcess[str]:
    argv = [shutil.which("llm-runner") or "llm-runner", *args]
    return subprocess.run(argv, env=stack.env(**env), capture_output=True, text=True, timeout=60)


def test_doctor_reports_a_healthy_runner(stack: Stack, fake_ollama: FakeOllama) -> None:
    models = f"{LLAMA},{QWEN7}"
    stack.start_worker(OLLAMA_URL=fake_ollama.url, MODELS=models, OLLAMA_NUM_PARALLEL=2, FAKE_NVML_GPUS=GPUS[1:])
    result = cli(stack, "doctor", OLLAMA_URL=fake_ollama.url, MODELS=models, FAKE_NVML_GPUS=GPUS[1:])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"[ ok ] Redis at {stack.redis_url} answers" in out
    assert "[ ok ] GPU 0 on this host: NVIDIA GeForce RTX 3090, 24.0 GiB" in out
    assert f"[ ok ] Ollama 0.12.6 at {fake_ollama.url}" in out
    assert "NVIDIA GeForce RTX 3090 (23.0 GiB usable), 0/2 slots busy" in out
    assert f"[ ok ] model {LLAMA} (llama3.1:8b): 2 slot(s) → aiModels.json capacity 2" in out
    assert out.strip().endswith("all good")


def test_doctor_says_what_to_fix(stack: Stack, fake_ollama: FakeOllama) -> None:
    models = f"{LLAMA},{LLAMA70}"
    stack.start_worker(OLLAMA_URL=fake_ollama.url, MODELS=models, FAKE_NVML_GPUS=GPUS[:1])
    result = cli(stack, "doctor", OLLAMA_URL=fake_ollama.url, MODELS=models, FAKE_NVML_GPUS=GPUS[:1])
    assert result.returncode == 1
    assert f"[FAIL] model {LLAMA70} (llama3.1:70b): model '{LLAMA70}' needs about 41.5 GiB of VRAM" in result.stdout
    assert "fix: use a smaller quantisation" in result.stdout
    assert "1 problem(s)" in result.stdout
    unreachable = cli(stack, "doctor", REDIS_URL="redis://127.0.0.1:1/0", OLLAMA_URL=fake_ollama.url)
    assert unreachable.returncode == 1 and "[FAIL] cannot reach Redis at redis://127.0.0.1:1/0" in unreachable.stdout


def test_doctor_ends_with_its_report(fake_ollama: FakeOllama) -> None:
    """Nothing after the report: every HTTP session and Redis client it opened is closed (an unclosed
    aiohttp session makes asyncio log "Unclosed client session" at exit)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODELS", "BACKEND", "OPENAI_BASE_URL")}
    env.update(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", OLLAMA_URL=fake_ollama.url)
    argv = [shutil.which("llm-runner") or "llm-runner", "doctor"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert f"[ ok ] Ollama 0.12.6 at {fake_ollama.url}" in result.stdout
    assert re.search(r"\d+ problem\(s\), \d+ warning\(s\)$", result.stdout.strip()), result.stdout
    assert result.stderr == ""


def test_models_pull_installs_what_each_ollama_lacks(stack: Stack) -> None:
    models = {t: dataclasses.replace(s, installed=t != "qwen2.5:7b") for t, s in KNOWN_MODELS.items()}
    with FakeOllama(models=models).start() as fake:
        result = cli(stack, "models", "pull", "--ollama-urls", fake.url, MODELS=f"{LLAMA},{QWEN7}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert fake.pulls == ["qwen2.5:7b"]
        assert f"{fake.url}: llama3.1:8b already installed" in result.stdout
        assert f"{fake.url} qwen2.5:7b: [##############################] 100%" in result.stdout
        assert f"{fake.url}: qwen2.5:7b pulled" in result.stdout
    with FakeOllama(models=models).start() as fake:
        fake.set_behavior("*", pull_error=True)
        failed = cli(stack, "models", "pull", "--ollama-urls", fake.url, MODELS=QWEN7)
        assert failed.returncode == 1 and "pulling 'qwen2.5:7b' failed" in failed.stdout


def test_aimodels_prints_entries_with_the_fleets_capacity(stack: Stack, fake_ollama: FakeOllama) -> None:
    models = f"{LLAMA},{QWEN7}"
    stack.start_worker(OLLAMA_URL=fake_ollama.url, MODELS=models, OLLAMA_NUM_PARALLEL=3, FAKE_NVML_GPUS=GPUS[1:])
    result = cli(stack, "aimodels", "--url", "http://llm-runner:8000/", "--usd-per-million-tokens", "0.2",
                 "--price", f"{QWEN7}=0.15", MODELS=models, AUTH_TOKEN="tok")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"pipeline": "llm", "model_id": LLAMA, "url": f"http://llm-runner:8000/{LLAMA}", "warm": True, "capacity": 3,
         "price_per_unit": 0.2, "pixels_per_unit": 1_000_000, "currency": "USD", "token": "tok"},
        {"pipeline": "llm", "model_id": QWEN7, "url": f"http://llm-runner:8000/{QWEN7}", "warm": True, "capacity": 3,
         "price_per_unit": 0.15, "pixels_per_unit": 1_000_000, "currency": "USD", "token": "tok"},
    ]  # fmt: skip


def test_compose_writes_a_file_per_gpu_count(stack: Stack) -> None:
    result = cli(stack, "compose", "--gpus", "3")
    assert result.returncode == 0
    assert all(f"worker-gpu{i}:" in result.stdout and f"ollama-gpu{i}:" in result.stdout for i in range(3))


def test_gpus_means_the_same_in_every_command() -> None:
    parser = build_parser()
    for value, expected in (("2", [0, 1]), ("1", [0]), ("0,2", [0, 2]), ("3,", [3])):
        for command in ("workers", "up", "compose"):
            assert parser.parse_args([command, "--gpus", value]).gpus == expected, (command, value)
    for command in ("workers", "up", "compose"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--gpus", "0"])  # no GPU at all is not a GPU list


def test_urls_are_shown_without_their_password() -> None:
    assert shown_url("redis://:s3cret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert shown_url("rediss://default:s3cret@redis.example:6380/1") == "rediss://default:***@redis.example:6380/1"
    assert shown_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
