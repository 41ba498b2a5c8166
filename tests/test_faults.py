"""Fault injection on real processes: clients that leave, workers that die, Redis that goes away,
full queues and shutdowns. Each test checks what the client saw, what Redis keeps, and what the
fake Ollama saw (generation really stopped)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
from redis import Redis
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker

from common import keys
from tests.client import call
from tests.conftest import RedisServer
from tests.fake_ollama import ChatRecord, FakeOllama
from tests.golivepeer import read_stream
from tests.rawclient import RawRequest
from tests.stack import Process, Stack, free_port, wait_until

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QUEUE_KEY = f"rq:queue:{keys.queue_name(LLAMA)}"
# Stops must happen "within a second"; the web checks its client every 0.25 s.
CANCEL_DEADLINE_S = 1.0


def body(prompt: str = "alpha bravo", **fields: Any) -> dict[str, Any]:
    return {"model": LLAMA, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2000, **fields}


def start(stack: Stack, fake: FakeOllama, *, slots: int = 1, web_env: dict[str, Any] | None = None,
          **worker_env: Any) -> Process:  # fmt: skip
    stack.start_web(OLLAMA_URL=fake.url, **(web_env or {}))
    worker_env.setdefault("VRAM_MB", 24576)
    return stack.start_worker(OLLAMA_URL=fake.url, OLLAMA_NUM_PARALLEL=slots, **worker_env)


def record_for(fake: FakeOllama, prompt: str) -> ChatRecord | None:
    for record in fake.chat_records():
        if record.body.get("messages") and record.body["messages"][-1]["content"] == prompt:
            return record
    return None


def job_status(redis: Redis, job_id: str) -> str:
    return Job.fetch(job_id, connection=redis, serializer=JSONSerializer).get_status().value


def only_job(redis: Redis, status: str) -> str:
    """The id of the one job in `status` (waits for it)."""

    def find() -> str | None:
        ids = [k.decode().rsplit(":", 1)[1] for k in redis.scan_iter("rq:job:*") if k.count(b":") == 2]
        matching = [i for i in ids if redis.hget(f"rq:job:{i}", "status") == status.encode()]
        return matching[0] if len(matching) == 1 else None

    return wait_until(find, 5, f"one job {status}")


def assert_nothing_lingers(redis: Redis, job_id: str) -> None:
    """Every key about the job expires, and no registry still counts it as started."""
    for key in redis.scan_iter(f"*{job_id}*"):
        assert redis.ttl(key) > 0, f"{key!r} never expires"
    started = StartedJobRegistry(keys.queue_name(LLAMA), connection=redis)
    assert not any(job == job_id for job, _ in started.get_job_and_execution_ids(cleanup=False))


def test_cancel_while_queued_never_reaches_ollama(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=50, reply_tokens=40)
    start(stack, fake_ollama, slots=1)
    running = RawRequest(f"{stack.web_url}/llm", body("running one", stream=True))
    running.read_until(b"data: ")
    queued = RawRequest(f"{stack.web_url}/llm", body("queued one", stream=True))
    wait_until(lambda: redis.llen(QUEUE_KEY) == 1, 5, "the second job queued")
    job_id = redis.lrange(QUEUE_KEY, 0, -1)[0].decode()
    queued.close()
    left = time.monotonic()
    wait_until(lambda: redis.llen(QUEUE_KEY) == 0, CANCEL_DEADLINE_S, "the queued job removed")
    assert time.monotonic() - left <= CANCEL_DEADLINE_S
    assert job_status(redis, job_id) == "canceled"
    running.read_all()
    result = read_stream(running.body_lines())
    assert result.finish_reason == "stop"
    # A job queued after it: had the cancelled one stayed queued, the one slot would take it first
    # (FIFO), and the worker sends a job to Ollama the moment it takes it.
    assert call("POST", f"{stack.web_url}/llm", json=body("queued after it")).status_code == 200
    assert record_for(fake_ollama, "queued one") is None
    assert_nothing_lingers(redis, job_id)


def test_cancel_during_the_model_load_aborts_it(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    start(stack, fake_ollama)
    fake_ollama.set_behavior("*", first_byte_delay=30)
    request = RawRequest(f"{stack.web_url}/llm", body("loading", stream=True))
    assert fake_ollama.wait_for(lambda f: record_for(f, "loading") is not None)
    job_id = only_job(redis, "started")
    request.close()
    assert fake_ollama.wait_for(lambda f: record_for(f, "loading").outcome == "cancelled", CANCEL_DEADLINE_S)  # type: ignore[union-attr]
    wait_until(lambda: job_status(redis, job_id) == "canceled", 2, "job recorded as canceled")
    assert_nothing_lingers(redis, job_id)


def test_cancel_mid_stream_stops_generation(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("streaming", stream=True))
    request.read_until(b"data: ")
    job_id = only_job(redis, "started")
    request.close()
    assert fake_ollama.wait_for(lambda f: record_for(f, "streaming").outcome == "cancelled", CANCEL_DEADLINE_S)  # type: ignore[union-attr]
    record = record_for(fake_ollama, "streaming")
    assert record is not None and record.tokens_sent < 40
    wait_until(lambda: job_status(redis, job_id) == "canceled", 2, "job recorded as canceled")
    assert fake_ollama.active_generations() == 0
    assert_nothing_lingers(redis, job_id)


def test_cancel_during_a_non_streaming_wait(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("waiting"))
    assert fake_ollama.wait_for(lambda f: (r := record_for(f, "waiting")) is not None and r.tokens_sent > 2)
    job_id = only_job(redis, "started")
    request.close()
    assert fake_ollama.wait_for(lambda f: record_for(f, "waiting").outcome == "cancelled", CANCEL_DEADLINE_S)  # type: ignore[union-attr]
    wait_until(lambda: job_status(redis, job_id) == "canceled", 2, "job recorded as canceled")


@pytest.mark.parametrize("streaming", [True, False])
def test_a_killed_worker_ends_the_request_within_ten_seconds(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, streaming: bool
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    worker = start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("doomed", stream=streaming))
    assert fake_ollama.wait_for(lambda f: (r := record_for(f, "doomed")) is not None and r.tokens_sent > 2)
    job_id = only_job(redis, "started")
    worker.signal(signal.SIGKILL)
    killed = time.monotonic()
    request.read_all(timeout=15)
    assert time.monotonic() - killed < 10
    if streaming:
        assert request.status() == 200
        result = read_stream(request.body_lines())
        assert result.finish_reason == "error" and result.saw_done_marker and result.text
    else:
        assert request.status() == 500
        assert b"stopped responding" in request.received
    assert job_status(redis, job_id) == "failed"
    assert_nothing_lingers(redis, job_id)
    assert fake_ollama.wait_for(lambda f: record_for(f, "doomed").outcome == "cancelled")  # type: ignore[union-attr]
    stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=8192)
    fake_ollama.set_behavior("*", tokens_per_s=0, reply_tokens=3)
    assert call("POST", f"{stack.web_url}/llm", json=body("after")).status_code == 200


def test_redis_outage_answers_500_fast_and_everything_recovers(
    stack: Stack, fake_ollama: FakeOllama, redis_server: RedisServer
) -> None:
    fake_ollama.set_behavior("*", reply_tokens=3)
    start(stack, fake_ollama)
    assert call("POST", f"{stack.web_url}/llm", json=body()).status_code == 200
    redis_server.kill()
    try:
        asked = time.monotonic()
        response = call("POST", f"{stack.web_url}/llm", json=body(), timeout=10)
        assert time.monotonic() - asked < 5
        assert response.status_code == 500 and response.json()["detail"]["msg"]
        health = call("GET", f"{stack.web_url}/health", timeout=6)
        assert health.status_code == 200 and health.json()["status"] in ("LOADING", "OK")
    finally:
        redis_server.start()
    wait_until(lambda: call("POST", f"{stack.web_url}/llm", json=body(), timeout=5).status_code == 200, 30,
               "service back after Redis returned")  # fmt: skip


def test_a_full_queue_is_refused_at_once(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama, web_env={"MAX_QUEUE": 2})
    # One job running (taken by the worker), then two waiting: the queue is full.
    requests = [RawRequest(f"{stack.web_url}/llm", body("r0", stream=True))]
    wait_until(lambda: record_for(fake_ollama, "r0"), 10, "the first job running")
    requests += [RawRequest(f"{stack.web_url}/llm", body(f"r{i}", stream=True)) for i in (1, 2)]
    wait_until(lambda: redis.llen(QUEUE_KEY) == 2, 5, "two jobs queued")
    asked = time.monotonic()
    response = call("POST", f"{stack.web_url}/llm", json=body("one too many"))
    assert time.monotonic() - asked < 1.0
    assert response.status_code == 500
    assert response.json()["detail"]["msg"].startswith("insufficient capacity: ")
    assert redis.llen(QUEUE_KEY) == 2  # the refused job is not left waiting
    assert not [k for k in redis.scan_iter("rq:job:*") if redis.hget(k, "status") == b"canceled"]  # nor written
    assert record_for(fake_ollama, "one too many") is None
    for request in requests:
        request.close()


def test_a_job_that_waits_past_the_queue_timeout_is_answered_and_dropped(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama, web_env={"QUEUE_TIMEOUT_S": 1})
    running = RawRequest(f"{stack.web_url}/llm", body("hog", stream=True))
    running.read_until(b"data: ")
    asked = time.monotonic()
    response = call("POST", f"{stack.web_url}/llm", json=body("patient"))
    assert 0.9 <= time.monotonic() - asked < 2.5
    assert response.status_code == 500 and "insufficient capacity: no slot" in response.json()["detail"]["msg"]
    assert redis.llen(QUEUE_KEY) == 0
    dropped = only_job(redis, "canceled")
    assert_nothing_lingers(redis, dropped)
    running.close()
    assert fake_ollama.wait_for(lambda f: record_for(f, "hog").outcome == "cancelled")  # type: ignore[union-attr]
    wait_until(lambda: [w.get_state() for w in Worker.all(connection=redis)] == ["idle"], 5, "the slot free")
    # A job asked now is the next one taken (the dropped one, had it stayed queued, would be first).
    fake_ollama.set_behavior("*", tokens_per_s=0, reply_tokens=2)
    assert call("POST", f"{stack.web_url}/llm", json=body("asked after")).status_code == 200
    assert record_for(fake_ollama, "patient") is None


def test_worker_sigterm_lets_a_running_stream_finish(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=30)
    worker = start(stack, fake_ollama, SHUTDOWN_GRACE_S=10)
    request = RawRequest(f"{stack.web_url}/llm", body("finish me", stream=True))
    request.read_until(b"data: ")
    worker.signal(signal.SIGTERM)
    request.read_all()
    result = read_stream(request.body_lines())
    assert result.finish_reason == "stop" and result.usage["completion_tokens"] == 30
    assert worker.popen.wait(timeout=10) == 0
    assert_nothing_lingers(stack.redis, only_job(stack.redis, "finished"))


def test_worker_sigterm_past_its_grace_ends_streams_with_an_error(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    worker = start(stack, fake_ollama, SHUTDOWN_GRACE_S=1)
    request = RawRequest(f"{stack.web_url}/llm", body("cut short", stream=True))
    request.read_until(b"data: ")
    worker.signal(signal.SIGTERM)
    stopped = time.monotonic()
    request.read_all(timeout=10)
    assert time.monotonic() - stopped < 4
    result = read_stream(request.body_lines())
    assert result.finish_reason == "error" and result.saw_done_marker
    assert fake_ollama.wait_for(lambda f: record_for(f, "cut short").outcome == "cancelled")  # type: ignore[union-attr]
    assert worker.popen.wait(timeout=10) == 0


def test_web_sigterm_ends_open_streams_with_a_final_chunk(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama, web_env={"SHUTDOWN_GRACE_S": 1})
    web = stack.processes[0]
    request = RawRequest(f"{stack.web_url}/llm", body("web going", stream=True))
    request.read_until(b"data: ")
    web.signal(signal.SIGTERM)
    request.read_all(timeout=10)
    result = read_stream(request.body_lines())
    assert result.finish_reason == "error" and result.saw_done_marker
    assert fake_ollama.wait_for(lambda f: record_for(f, "web going").outcome == "cancelled", 3)  # type: ignore[union-attr]
    assert web.popen.wait(timeout=15) == 0
    job_id = only_job(stack.redis, "canceled")
    assert_nothing_lingers(stack.redis, job_id)


def test_concurrent_disconnects_leave_no_generation_running(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000, slots=4)
    start(stack, fake_ollama, slots=4)
    requests = [RawRequest(f"{stack.web_url}/llm", body(f"c{i}", stream=bool(i % 2))) for i in range(6)]
    assert fake_ollama.wait_for(lambda f: f.active_generations() == 4)
    threads = [threading.Thread(target=r.close) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake_ollama.wait_for(lambda f: f.active_generations() == 0, 2)
    wait_until(lambda: redis.llen(QUEUE_KEY) == 0, 2, "queue emptied")
    # Every job ended and the worker runs none: nothing can start a generation any more.
    job_ids = [k.decode().rsplit(":", 1)[1] for k in redis.scan_iter("rq:job:*") if k.count(b":") == 2]
    wait_until(lambda: {job_status(redis, j) for j in job_ids} == {"canceled"}, 5, "every job recorded canceled")
    wait_until(lambda: [w.get_state() for w in Worker.all(connection=redis)] == ["idle"], 5, "the worker idle")
    assert len(job_ids) == 6 and redis.llen(f"{QUEUE_KEY}:intermediate") == 0
    assert fake_ollama.active_generations() == 0


def test_ollama_going_away_is_a_500_and_the_worker_recovers_with_it(stack: Stack, redis: Redis) -> None:
    fake = FakeOllama().start()
    port = fake.port
    fake.set_behavior("*", reply_tokens=3)
    start(stack, fake)
    assert call("POST", f"{stack.web_url}/llm", json=body()).status_code == 200
    fake.stop()
    response = call("POST", f"{stack.web_url}/llm", json=body())
    assert response.status_code == 500 and "unreachable" in response.json()["detail"]["msg"]
    with FakeOllama(port=port).start() as back:
        back.set_behavior("*", reply_tokens=3)
        assert call("POST", f"{stack.web_url}/llm", json=body()).status_code == 200


def test_a_slow_first_token_is_waited_for_up_to_its_bound(stack: Stack, fake_ollama: FakeOllama) -> None:
    start(stack, fake_ollama, OLLAMA_FIRST_BYTE_TIMEOUT_S=1.5)
    fake_ollama.set_behavior("*", first_byte_delay=0.8, reply_tokens=3)
    assert call("POST", f"{stack.web_url}/llm", json=body()).status_code == 200
    fake_ollama.set_behavior("*", first_byte_delay=5)
    asked = time.monotonic()
    response = call("POST", f"{stack.web_url}/llm", json=body())
    assert 1.5 <= time.monotonic() - asked < 4
    assert response.status_code == 500 and "sent nothing for 1.5 s" in response.json()["detail"]["msg"]


def test_a_stall_between_tokens_ends_the_stream_with_an_error(stack: Stack, fake_ollama: FakeOllama) -> None:
    # MIGRATION_LIMIT=0: no continuation carries the stalled answer on (tests/test_e2e.py has those).
    start(stack, fake_ollama, web_env={"MIGRATION_LIMIT": 0}, OLLAMA_IDLE_TIMEOUT_S=0.5)
    fake_ollama.set_behavior("*", stall_after=2)
    request = RawRequest(f"{stack.web_url}/llm", body("stalling", stream=True))
    request.read_all(timeout=5)
    result = read_stream(request.body_lines())
    assert result.text == "stalling stalling " and result.finish_reason == "error" and result.saw_done_marker
    assert fake_ollama.wait_for(lambda f: record_for(f, "stalling").outcome == "cancelled")  # type: ignore[union-attr]
    fake_ollama.set_behavior("*", stall_after=None, reply_tokens=2)
    assert call("POST", f"{stack.web_url}/llm", json=body()).status_code == 200


def test_a_worker_started_before_redis_waits_and_stops_cleanly(stack: Stack, fake_ollama: FakeOllama) -> None:
    worker = stack.start_worker(wait_ready=False, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                                OLLAMA_URL=fake_ollama.url, VRAM_MB=8192)  # fmt: skip
    wait_until(lambda: "waiting for Redis" in worker.output(), 10, "the worker waiting for Redis")
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=10) == 0


def test_a_worker_started_before_ollama_serves_once_it_answers(stack: Stack, redis: Redis) -> None:
    port = free_port()
    stack.start_web()
    worker = stack.start_worker(wait_ready=False, OLLAMA_URL=f"http://127.0.0.1:{port}", VRAM_MB=8192)
    wait_until(lambda: "waiting for Ollama" in worker.output(), 10, "the worker waiting for Ollama")
    with FakeOllama(port=port).start() as late:
        late.set_behavior("*", reply_tokens=2)
        stack.wait_worker_ready(worker)
        assert call("POST", f"{stack.web_url}/llm", json=body()).status_code == 200


def test_a_stuck_worker_is_given_up_on_and_serves_again_when_it_resumes(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    worker = start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("frozen", stream=True))
    request.read_until(b"data: ")
    worker.signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        request.read_all(timeout=15)
        assert time.monotonic() - stopped < 10
        result = read_stream(request.body_lines())
        assert result.finish_reason == "error" and result.saw_done_marker
    finally:
        worker.signal(signal.SIGCONT)
    # Back, it hears that its job was given up on, stops that generation, and takes new jobs.
    assert fake_ollama.wait_for(lambda f: record_for(f, "frozen").outcome == "cancelled", 5)  # type: ignore[union-attr]
    fake_ollama.set_behavior("*", tokens_per_s=0, reply_tokens=2)
    wait_until(lambda: call("POST", f"{stack.web_url}/llm", json=body("thawed"), timeout=5).status_code == 200, 10,
               "the resumed worker serving")  # fmt: skip
