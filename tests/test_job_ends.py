"""Every way a job can end, on real processes: what the client saw, what RQ records, what expires.

Each end is recorded once, as RQ's own worker records it (status, registry, result or failure,
TTL on every key), and whoever records a job's end first wins: the other side leaves it alone.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from redis import Redis
from rq.command import send_stop_job_command
from rq.serializers import JSONSerializer

from common import keys
from common.events import Done, Started, Tokens, decode
from tests.client import call
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.jobcheck import assert_recorded, fetch
from tests.rawclient import RawRequest
from tests.redisproxy import Fault, RedisProxy
from tests.stack import Stack, wait_until
from tests.test_faults import CANCEL_DEADLINE_S, QUEUE_KEY, body, only_job, record_for, start

pytestmark = pytest.mark.e2e

# Every try of the start within the worker's outage window (common.outage) meets the fault.
TRIES = 1000
# The start script (an EVALSHA, or an EVAL once Redis lost its scripts cache), which begins by taking
# the job off the intermediate list; nothing else the worker sends carries both.
START = (b"EVAL", b"LREM")


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
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, redis_server: RedisServer
) -> None:
    """The web's cancel lands between a worker taking the job and recording its start.

    The worker reaches Redis through a proxy that holds its start bookkeeping and the job's
    Started event (so the web has not heard of the worker): the client leaves, the web finds the
    job still queued and records it canceled (its id sits in the worker's intermediate list).
    Released, the start finds the job canceled: the engine call the worker began when it took
    the job is stopped, and nothing records the job started.
    """
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    proxy = RedisProxy(redis_server.port)
    try:
        start(stack, fake_ollama, REDIS_URL=proxy.url)
        announced = proxy.hold(b"|1|s")  # the job's first event (Started), published by the worker
        recording = proxy.hold(START)
        request = RawRequest(f"{stack.web_url}/llm", body("raced", stream=True))
        assert recording.hit.wait(10) and announced.hit.wait(10), "the worker never took the job"
        job_id = only_job(redis, "queued")
        assert redis.lrange(f"{QUEUE_KEY}:intermediate", 0, -1) == [job_id.encode()]
        assert fake_ollama.wait_for(lambda f: record_for(f, "raced") is not None), "begun when taken"
        request.close()
        wait_until(lambda: fetch(redis, job_id).get_status().value == "canceled", 5, "the web canceling it")
        recording.release()
        announced.release()
        assert fake_ollama.wait_for(lambda f: record_for(f, "raced").outcome == "cancelled", CANCEL_DEADLINE_S)  # type: ignore[union-attr]
        worker = stack.processes[-1]
        wait_until(lambda: f"job {job_id}: ended elsewhere before it started (canceled)" in worker.output(), 5,
                   "the worker finding it canceled")  # fmt: skip
    finally:
        proxy.close()
    job = assert_recorded(redis, job_id, "canceled")
    assert job.started_at is None and not job.worker_name, "recorded started"
    assert not list(redis.scan_iter(f"rq:execution:{job_id}:*"))
    assert redis.llen(f"{QUEUE_KEY}:intermediate") == 0


def cut(proxy: RedisProxy) -> Fault:
    """Neither the start nor any retry reaches Redis: the job is still queued."""
    return proxy.cut(START, times=TRIES)


def answers_lost(proxy: RedisProxy) -> Fault:
    """The start runs in Redis (each retry finds its own execution), every answer is lost."""
    return proxy.drop_reply(START, reply=b"*1\r\n", times=TRIES)


def stalled(proxy: RedisProxy) -> Fault:
    """Redis never answers the start, nor its retries: command timeouts."""
    return proxy.stall(START, times=TRIES)


@pytest.mark.parametrize("fault", [cut, answers_lost, stalled], ids=lambda f: f.__name__)
def test_a_start_that_cannot_be_recorded_stops_the_job_and_says_why(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, redis_server: RedisServer,
    fault: Callable[[RedisProxy], Fault],
) -> None:  # fmt: skip
    """The worker began the engine call when it took the job; its start bookkeeping then cannot be
    recorded for the whole outage window. The generation is stopped, the client is told why at
    once, the job ends once (failed, saying why) and leaves RQ's intermediate list, and the worker
    goes on serving."""
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    proxy = RedisProxy(redis_server.port)
    try:
        start(stack, fake_ollama, REDIS_URL=proxy.url)
        planted = fault(proxy)
        answer = call("POST", f"{stack.web_url}/llm", json=body("unrecorded"), timeout=40)
        planted.end()
        assert answer.status_code == 500, answer.text
        assert "could not record its start" in answer.json()["detail"]["msg"]
        assert fake_ollama.wait_for(lambda f: record_for(f, "unrecorded").outcome == "cancelled", 2)  # type: ignore[union-attr]
        job = assert_recorded(redis, answer.headers["X-Job-Id"], "failed")
        assert "could not record its start" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]
        assert redis.llen(f"{QUEUE_KEY}:intermediate") == 0 and redis.llen(QUEUE_KEY) == 0
        fake_ollama.set_behavior("*", tokens_per_s=0, reply_tokens=3)
        assert call("POST", f"{stack.web_url}/llm", json=body("after")).status_code == 200
    finally:
        proxy.close()


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
