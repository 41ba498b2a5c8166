"""Every way a job can end, on real processes: what the client saw, what RQ records, what expires.

Each end is recorded once, as RQ's own worker records it (status, registry, result or failure,
TTL on every key), and whoever records a job's end first wins: the other side leaves it alone.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest
from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.serializers import JSONSerializer

from common import keys
from common.events import Done, Started, Tokens, decode
from common.jobs import GenerateJob
from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.jobcheck import LLAMA, assert_recorded, fetch
from tests.rawclient import RawRequest
from tests.stack import Stack, wait_until
from tests.test_faults import body, only_job, record_for, start

pytestmark = pytest.mark.e2e


def test_a_finished_job_is_recorded_finished_and_expires(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", reply_tokens=3)
    start(stack, fake_ollama)
    answer = call("POST", f"{stack.web_url}/llm", json=body())
    assert answer.status_code == 200
    job = assert_recorded(stack.redis, answer.headers["X-Job-Id"], "finished")
    assert job.return_value()["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("behavior", "worker_env", "says"),
    [
        ({"status": 500, "error": "llama runner process has terminated"}, {}, "terminated"),
        ({"first_byte_delay": 5}, {"OLLAMA_FIRST_BYTE_TIMEOUT_S": 0.5}, "sent nothing"),
        ({"stall_after": 2}, {"OLLAMA_IDLE_TIMEOUT_S": 0.5}, "stalled"),
    ],
    ids=["ollama-error", "first-byte-timeout", "stall"],
)
def test_a_job_failed_in_the_worker_reaches_rqs_failed_registry_and_expires(
    stack: Stack, fake_ollama: FakeOllama, behavior: dict[str, object], worker_env: dict[str, object], says: str
) -> None:
    start(stack, fake_ollama, **worker_env)
    fake_ollama.set_behavior("*", **behavior)
    answer = call("POST", f"{stack.web_url}/llm", json=body(stream=False))
    assert answer.status_code == 500 and says in answer.json()["detail"]["msg"]
    job_id = answer.headers["X-Job-Id"]  # error answers name their job too
    wait_until(lambda: fetch(stack.redis, job_id).get_status().value == "failed", 5, "the job recorded failed")
    job = assert_recorded(stack.redis, job_id, "failed")
    assert says in (job.latest_result().exc_string or "")  # type: ignore[union-attr]


def test_a_slow_engines_job_is_started_and_announced_before_its_first_token(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    """The worker sends the request first, then announces the job and records its start while the
    engine works: neither waits for the first token."""
    fake_ollama.set_behavior("*", first_byte_delay=3, reply_tokens=3)
    start(stack, fake_ollama)
    sent = time.monotonic()
    request = RawRequest(f"{stack.web_url}/llm", body("slow start", stream=True))
    job_id = only_job(redis, "started")
    backlog = wait_until(lambda: redis.xrange(keys.job_backlog(job_id)), 2, "the job's first event")
    assert time.monotonic() - sent < 2.5, "announced only once the engine answered"
    assert [type(decode(fields[b"m"])[1]) for _, fields in backlog] == [Started]
    assert fetch(redis, job_id).worker_name, "RQ names the worker that started it"
    request.read_all(timeout=10)
    assert read_stream(request.body_lines()).finish_reason == "stop"
    kinds = [type(decode(fields[b"m"])[1]) for _, fields in redis.xrange(keys.job_backlog(job_id))]
    assert kinds[0] is Started and kinds[-1] is Done and set(kinds[1:-1]) == {Tokens}


def test_a_job_whose_client_left_is_recorded_canceled_and_expires(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("leaving", stream=True))
    request.read_until(b"data: ")
    job_id = only_job(redis, "started")
    request.close()
    wait_until(lambda: fetch(redis, job_id).get_status().value == "canceled", 3, "the job recorded canceled")
    assert_recorded(redis, job_id, "canceled")


def test_a_job_stopped_by_an_operator_is_recorded_stopped_as_rq_records_it(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("operator stops me", stream=True))
    request.read_until(b"data: ")
    job_id = only_job(redis, "started")
    send_stop_job_command(redis, job_id, serializer=JSONSerializer)
    request.read_all(timeout=10)
    assert read_stream(request.body_lines()).finish_reason == "error"
    assert fake_ollama.wait_for(lambda f: record_for(f, "operator stops me").outcome == "cancelled")  # type: ignore[union-attr]
    wait_until(lambda: fetch(redis, job_id).get_status().value == "stopped", 3, "the job recorded stopped")
    assert_recorded(redis, job_id, "stopped")


def test_a_lost_workers_job_is_recorded_failed_and_expires(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    worker = start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("lost", stream=True))
    request.read_until(b"data: ")
    job_id = only_job(redis, "started")
    worker.signal(signal.SIGKILL)
    request.read_all(timeout=15)
    assert read_stream(request.body_lines()).finish_reason == "error"
    assert_recorded(redis, job_id, "failed")


def test_a_resumed_worker_does_not_overwrite_the_failure_the_web_recorded(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    worker = start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("frozen", stream=True))
    request.read_until(b"data: ")
    job_id = only_job(redis, "started")
    worker.signal(signal.SIGSTOP)
    try:
        request.read_all(timeout=15)
        wait_until(lambda: fetch(redis, job_id).get_status().value == "failed", 5, "the web recording it failed")
        assert list(redis.scan_iter(f"rq:execution:{job_id}:*")), "the frozen worker's execution record"
    finally:
        worker.signal(signal.SIGCONT)
    # The resumed worker hears the cancel, stops generating, drops its execution, and leaves the
    # job failed.
    assert fake_ollama.wait_for(lambda f: record_for(f, "frozen").outcome == "cancelled", 5)  # type: ignore[union-attr]
    wait_until(lambda: not list(redis.scan_iter(f"rq:execution:{job_id}:*")), 5, "the worker dropping its execution")
    assert_recorded(redis, job_id, "failed")


def test_a_job_canceled_while_a_worker_takes_it_is_never_started(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    """The web's cancel lands between a worker taking the job and recording its start."""
    fake_ollama.set_behavior("*", reply_tokens=3)
    start(stack, fake_ollama)
    queue = Queue(keys.queue_name(LLAMA), connection=redis, serializer=JSONSerializer)
    spec = GenerateJob("llmrunner:events:nobody", LLAMA, "llama3.1:8b", [{"role": "user", "content": "raced"}],
                       5, 0.7, 0.9, 40, False)  # fmt: skip
    job = queue.create_job(keys.GENERATE_JOB, args=(spec.to_payload(),), job_id=uuid.uuid4().hex, timeout=-1)
    job.save()
    job.cancel()  # the web's cancel found the job queued (its id already taken off the list)
    redis.rpush(queue.key, job.id)  # ...by a worker that now pops it
    wait_until(lambda: redis.llen(queue.key) == 0, 5, "the worker taking the id")
    time.sleep(0.5)
    assert fetch(redis, job.id).get_status().value == "canceled"
    assert record_for(fake_ollama, "raced") is None
    assert redis.llen(f"{queue.key}:intermediate") == 0


def test_a_job_given_up_on_while_queued_is_recorded_canceled_and_expires(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama, web_env={"QUEUE_TIMEOUT_S": 1})
    running = RawRequest(f"{stack.web_url}/llm", body("hog", stream=True))
    running.read_until(b"data: ")
    answer = call("POST", f"{stack.web_url}/llm", json=body("waits too long"))
    assert answer.status_code == 500 and "no slot" in answer.json()["detail"]["msg"]
    assert_recorded(redis, answer.headers["X-Job-Id"], "canceled")
    running.close()
    assert record_for(fake_ollama, "waits too long") is None
