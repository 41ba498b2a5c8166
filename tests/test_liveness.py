"""A worker stays alive to the web whatever Ollama's side calls cost, and starts cleanly when they are slow."""

from __future__ import annotations

import pytest
from redis import Redis

from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.jobcheck import assert_recorded
from tests.stack import Stack, wait_until
from tests.test_faults import body, start

pytestmark = pytest.mark.e2e

# Longer than the web's WORKER_SILENCE_S (5 s): on a thread shared with the pings it silenced them.
SLOW_PS_S = 7.0


def test_a_slow_api_ps_does_not_make_the_web_give_up_on_a_loading_job(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", reply_tokens=3)
    start(stack, fake_ollama)
    fake_ollama.ps_delay_s = SLOW_PS_S
    wait_until(lambda: fake_ollama.ps_started >= 1, 10, "the worker's next /api/ps poll under way (it hangs)")
    # The model "loads" for 9 s: nothing but the worker's pings tells the web it is alive.
    fake_ollama.set_behavior("*", first_byte_delay=9, reply_tokens=3)
    answer = call("POST", f"{stack.web_url}/llm", json=body("patience"), timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"].strip() == "patience patience patience"
    assert_recorded(redis, answer.headers["X-Job-Id"], "finished")


def test_a_worker_started_while_api_ps_is_slow_registers_once_and_serves(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", reply_tokens=2)
    fake_ollama.ps_delay_s = SLOW_PS_S
    stack.start_web(OLLAMA_URL=fake_ollama.url)
    worker = stack.start_worker(wait_ready=False, OLLAMA_URL=fake_ollama.url, VRAM_MB=24576)
    stack.wait_worker_ready(worker, timeout=40)
    fake_ollama.ps_delay_s = 0.0
    answer = call("POST", f"{stack.web_url}/llm", json=body(), timeout=30)
    assert answer.status_code == 200
    assert worker.popen.poll() is None
    assert "There exists an active worker" not in worker.output()
