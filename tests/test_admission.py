"""Admission: room per model, nothing written for a refused job, refusals go-livepeer reads as
"no room right now", streams that wait instead of being refused, and bounded waits."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from common import keys
from common.errors import NO_ROOM, CapacityError, RunnerError
from common.events import Failed
from common.fleet import PROVISIONING, READY, GpuInfo, ModelFit, WorkerRecord, announce, read_fleet
from common.jobs import GenerateJob
from common.models import parse_models
from common.settings import Settings
from tests.client import call, stream
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.golivepeer import RETRIED, non_streaming_verdict, read_stream
from tests.rawclient import RawRequest
from tests.stack import Stack, wait_until
from web import admission
from web.flow import failure as job_error
from web.runtime import Runtime

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QUEUE_KEY = f"rq:queue:{keys.queue_name(LLAMA)}"


def record(name: str, state: str = READY, *, slots: int = 2, fits: bool | None = True) -> WorkerRecord:
    models = {} if fits is None else {LLAMA: ModelFit(tag="llama3.1:8b", installed=True, fits=fits, need_bytes=1)}
    gpu = GpuInfo(0, f"GPU-{name}", "RTX", 8 << 30, 8 << 30, 8, 6)
    return WorkerRecord(name, "h", 1, "0", "u", state=state, slots=slots, gpu=gpu, models=models, vram_budget=2)


def generate_job() -> GenerateJob:
    return GenerateJob("reply", LLAMA, "llama3.1:8b", [{"role": "user", "content": "hi"}], 5, 0.7, 1.0, -1, False)


@pytest.fixture
def runtime_for(redis: Redis, redis_server: RedisServer) -> Iterator[Any]:
    made: list[Runtime] = []

    def make(**settings: Any) -> Runtime:
        rt = Runtime(Settings(redis_url=redis_server.url, models=parse_models(LLAMA), **settings), redis)
        made.append(rt)
        return rt

    yield make


# --- room and placement, against a real Redis ------------------------------------------------------


def test_room_is_the_slots_plus_max_queue_and_streams_have_no_limit(runtime_for: Any, redis: Redis) -> None:
    announce(redis, record("a", slots=2))
    announce(redis, record("b", slots=3))
    assert admission.room(runtime_for(max_queue=0), LLAMA, stream=False).limit == 5
    assert admission.room(runtime_for(max_queue=7), LLAMA, stream=False).limit == 12
    assert admission.room(runtime_for(), LLAMA, stream=False).limit == 5 + 10  # default: twice the slots
    assert admission.room(runtime_for(max_queue=0), LLAMA, stream=True).limit == admission.NO_LIMIT


def test_a_model_nobody_serves_yet_is_no_room_but_a_stream_waits_for_a_provisioning_worker(
    runtime_for: Any, redis: Redis
) -> None:
    rt = runtime_for()
    with pytest.raises(CapacityError) as nobody:
        admission.room(rt, LLAMA, stream=True)
    assert nobody.value.msg.startswith(f"{NO_ROOM}: no worker is running")
    announce(redis, record("p", PROVISIONING, fits=None))
    rt = runtime_for()
    with pytest.raises(CapacityError) as loading:
        admission.room(rt, LLAMA, stream=False)
    assert NO_ROOM in loading.value.msg and "not ready yet" in loading.value.msg
    assert admission.room(rt, LLAMA, stream=True).limit == admission.NO_LIMIT


def test_a_model_every_ready_worker_ruled_out_is_a_plain_error(runtime_for: Any, redis: Redis) -> None:
    announce(redis, record("a", fits=False))
    with pytest.raises(RunnerError) as caught:
        admission.room(runtime_for(), LLAMA, stream=False)
    assert not isinstance(caught.value, CapacityError) and NO_ROOM not in caught.value.msg


def test_a_draining_runner_refuses_new_jobs_as_no_room(runtime_for: Any, redis: Redis) -> None:
    announce(redis, record("a"))
    rt = runtime_for()
    rt.drain()
    with pytest.raises(CapacityError) as caught:
        admission.room(rt, LLAMA, stream=True)
    assert caught.value.reason == "shutdown" and "shutting down" in caught.value.msg


def test_a_placed_job_is_an_rq_job_and_a_refused_one_writes_nothing(runtime_for: Any, redis: Redis) -> None:
    rt = runtime_for(max_queue=0)
    queue = rt.queue(LLAMA)
    space = admission.Room(limit=1, slots=1, max_queue=0)
    assert admission.place(rt, queue, "first", generate_job(), space) == 0
    job = Job.fetch("first", connection=redis, serializer=JSONSerializer)
    assert job.get_status().value == "queued" and job.origin == queue.name
    assert job.args[0]["messages"] == [{"role": "user", "content": "hi"}] and job.func_name == keys.GENERATE_JOB
    assert queue.job_ids == ["first"] and 0 < redis.ttl(job.key) <= 30 + 60
    before = sorted(redis.keys("*"))
    with pytest.raises(CapacityError) as caught:
        admission.place(rt, queue, "second", generate_job(), space)
    assert caught.value.reason == "queue_full" and "MAX_QUEUE is 0" in caught.value.msg
    assert sorted(redis.keys("*")) == before
    assert admission.place(rt, queue, "third", generate_job(), admission.Room(admission.NO_LIMIT, 1, 0)) == 1


def test_the_admission_wait_is_bounded(runtime_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime_for()
    monkeypatch.setattr(admission, "ADMISSION_WAIT_S", 0.2)
    for _ in range(admission.ADMISSION_SLOTS):
        rt.admission.acquire()
    asked = time.monotonic()
    with pytest.raises(CapacityError) as caught, admission.gate(rt):
        pass
    assert 0.2 <= time.monotonic() - asked < 2 and caught.value.reason == "admission"


@pytest.mark.parametrize(
    ("failed", "no_room"),
    [
        (Failed("the worker is shutting down; retry on another orchestrator", 500, "shutdown"), True),
        (Failed("Ollama at http://o is busy: server busy", 500, "busy"), True),
        (Failed("worker w stopped responding", 500, "worker_lost"), False),
        (Failed("Ollama failed: CUDA error", 500, "ollama_error"), False),
    ],
)
def test_a_failed_job_says_no_room_only_when_it_is(failed: Failed, no_room: bool) -> None:
    error = job_error(failed)
    assert error.status == 500 and error.msg.startswith(f"{NO_ROOM}: ") is no_room
    assert failed.msg in error.msg


# --- the real stack --------------------------------------------------------------------------------


def body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": LLAMA, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2000, **fields}


class CancelWatch:
    """Every message on the workers' cancel channel while it runs."""

    def __init__(self, redis: Redis) -> None:
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(keys.cancel_channel())
        self.pubsub.get_message(timeout=1)

    def seen(self, wait: float = 0.5) -> list[bytes]:
        found, deadline = [], time.monotonic() + wait
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None:
                found.append(message["data"])
        return found


def job_keys(redis: Redis) -> set[bytes]:
    return {k for k in redis.scan_iter("rq:job:*") if k.count(b":") == 2}


def start(stack: Stack, fake: FakeOllama, **web_env: Any) -> None:
    stack.start_web(OLLAMA_URL=fake.url, **web_env)
    stack.start_worker(OLLAMA_URL=fake.url, OLLAMA_NUM_PARALLEL=1, VRAM_MB=24576)


def test_max_queue_zero_takes_what_a_free_slot_can_and_refuses_the_rest(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=30)
    start(stack, fake_ollama, MAX_QUEUE=0)
    assert call("POST", f"{stack.web_url}/llm", json=body("idle", max_tokens=3)).status_code == 200
    hog = RawRequest(f"{stack.web_url}/llm", body("hog", stream=True))
    hog.read_until(b"data: ")
    cancels = CancelWatch(redis)
    before = job_keys(redis)
    response = call("POST", f"{stack.web_url}/llm", json=body("one too many"))
    assert response.status_code == 500 and response.headers["Content-Type"] == "application/json"
    msg = response.json()["detail"]["msg"]
    assert msg.startswith(f"{NO_ROOM}: ") and "1 job(s) running and 0 waiting" in msg and "MAX_QUEUE is 0" in msg
    assert non_streaming_verdict(500, response.headers["Content-Type"], response.content).outcome == RETRIED
    assert job_keys(redis) == before and redis.llen(QUEUE_KEY) == 0  # nothing written for it
    assert cancels.seen() == []  # and nothing told to the workers
    waiting, lines = stream(f"{stack.web_url}/llm", body("a stream waits", stream=True, max_tokens=5))
    assert waiting.status_code == 200 and read_stream(lines).finish_reason == "length"
    hog.close()


def test_a_burst_of_streams_past_max_queue_is_served_in_full(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=200, reply_tokens=10)
    start(stack, fake_ollama, MAX_QUEUE=1)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: stream(f"{stack.web_url}/llm", body(f"b{i}", stream=True)), range(12)))
    assert [r.status_code for r, _ in results] == [200] * 12
    assert all(read_stream(lines).finish_reason == "stop" for _, lines in results)
    assert call("POST", f"{stack.web_url}/llm", json=body("after the burst", max_tokens=2)).status_code == 200


def test_a_queue_timeout_is_no_room_and_leaves_the_workers_alone(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama, QUEUE_TIMEOUT_S=1)
    hog = RawRequest(f"{stack.web_url}/llm", body("hog", stream=True))
    hog.read_until(b"data: ")
    cancels = CancelWatch(redis)
    response = call("POST", f"{stack.web_url}/llm", json=body("patient"))
    assert response.status_code == 500
    msg = response.json()["detail"]["msg"]
    assert msg.startswith(f"{NO_ROOM}: no slot for ") and "within 1 s (QUEUE_TIMEOUT_S)" in msg
    assert cancels.seen() == []  # taken off the queue: no worker had it
    hog.close()


def test_no_worker_yet_is_no_room_and_a_stream_waits_for_a_provisioning_worker(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    stack.start_web(OLLAMA_URL=fake_ollama.url)
    response = call("POST", f"{stack.web_url}/llm", json=body("too early"))
    assert response.status_code == 500 and response.json()["detail"]["msg"].startswith(f"{NO_ROOM}: no worker")
    assert job_keys(redis) == set()
    fake_ollama.set_behavior("*", load_time_s=4.0, reply_tokens=3)
    worker = stack.start_worker(wait_ready=False, OLLAMA_URL=fake_ollama.url, VRAM_MB=24576)
    wait_until(lambda: read_fleet(redis), 10, "the worker registered")
    refused = call("POST", f"{stack.web_url}/llm", json=body("still loading"))
    assert refused.status_code == 500 and NO_ROOM in refused.json()["detail"]["msg"]
    patient, lines = stream(f"{stack.web_url}/llm", body("waits for the load", stream=True))
    assert patient.status_code == 200 and read_stream(lines).finish_reason == "stop"
    stack.wait_worker_ready(worker)


def test_a_web_shutting_down_answers_waiting_jobs_with_no_room(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama, SHUTDOWN_GRACE_S=0.5)
    hog = RawRequest(f"{stack.web_url}/llm", body("hog", stream=True))
    hog.read_until(b"data: ")
    answer: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: answer.update(r=call("POST", f"{stack.web_url}/llm", json=body("w"))))
    waiter.start()
    wait_until(lambda: redis.llen(QUEUE_KEY) == 1, 5, "the job queued")
    stack.processes[0].signal(signal.SIGTERM)
    waiter.join(15)
    response = answer["r"]
    assert response.status_code == 500
    assert response.json()["detail"]["msg"] == f"{NO_ROOM}: the runner is shutting down; retry on another orchestrator"
    hog.close()


def test_requests_are_answered_within_bounds_while_redis_hangs(
    stack: Stack, fake_ollama: FakeOllama, redis_server: RedisServer
) -> None:
    fake_ollama.set_behavior("*", reply_tokens=3)
    start(stack, fake_ollama)
    assert call("POST", f"{stack.web_url}/llm", json=body("before")).status_code == 200
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        asked = time.monotonic()
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda i: call("POST", f"{stack.web_url}/llm", json=body(f"h{i}"), timeout=60),
                                    range(24)))  # fmt: skip
        took = time.monotonic() - asked
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert [a.status_code for a in answers] == [500] * 24
    msgs = {a.json()["detail"]["msg"] for a in answers}
    assert all("unavailable" in m or m.startswith(NO_ROOM) for m in msgs), msgs
    assert any(m.startswith(NO_ROOM) for m in msgs)  # past the admission gate's bound
    assert took < 30, f"answers took {took:.1f} s"
    wait_until(lambda: call("POST", f"{stack.web_url}/llm", json=body("after")).status_code == 200, 20, "recovery")
