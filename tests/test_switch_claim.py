"""The model-switch claim: refreshed while a switch runs, and never deleted once it is another GPU's."""

from __future__ import annotations

import threading
from typing import Any

from redis import Redis

from common import keys
from common.fleet import ModelFit, WorkerRecord
from common.models import parse_models
from common.settings import Settings
from worker.schedule import ModelSchedule

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"


class Admin:
    """An Ollama admin whose preload runs `during_load` (the switch is under way then)."""

    def __init__(self, during_load: Any) -> None:
        self.during_load = during_load

    def ps(self) -> dict[str, Any]:
        return {}

    def preload(self, tag: str, **options: Any) -> None:
        self.during_load()

    def unload(self, tag: str) -> None:
        pass


class IdleWorker:
    """A slot worker with nothing running."""

    busy = 0
    stopping = False
    taken_total = 0

    def set_queue_order(self, queue_names: list[str], *, slots: int | None = None) -> None:
        pass


def test_a_switch_outliving_its_claim_leaves_the_next_claimant_s_claim_alone(redis: Redis) -> None:
    settings = Settings(models=parse_models(f"{LLAMA},{QWEN}"), model_hold_s=0.0)
    fits = {m.model_id: ModelFit(tag=m.tag, installed=True, fits=True) for m in settings.models}
    record = WorkerRecord(name="gpu-a", host="h", pid=1, version="0", ollama_url="", models=fits)

    def claim_expires_and_another_gpu_claims() -> None:
        assert redis.get(keys.model_claim(QWEN)) is not None, "the switch holds the claim while it loads"
        redis.set(keys.model_claim(QWEN), "gpu-b")

    schedule = ModelSchedule(redis, record, Admin(claim_expires_and_another_gpu_claims), settings,  # type: ignore[arg-type]
                             threading.Event())  # fmt: skip
    schedule.worker = IdleWorker()  # type: ignore[assignment]
    schedule.current = LLAMA
    schedule._next_check = float("inf")  # this test is about switching, not about reloads
    redis.hset("rq:job:waiting", "enqueued_at", "2020-01-01T00:00:00.000000Z")
    redis.rpush(f"rq:queue:{keys.queue_name(QWEN)}", "waiting")
    schedule.tick()
    assert schedule.current == QWEN
    assert redis.get(keys.model_claim(QWEN)) == b"gpu-b", "another GPU's claim was deleted"
