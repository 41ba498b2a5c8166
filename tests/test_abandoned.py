"""No GPU time for nobody: a generation whose reader is gone is stopped, and a stale job is refused."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import psutil
import pytest
from redis import Redis

from common import keys
from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.jobcheck import LLAMA, assert_recorded, fetch
from tests.rawclient import RawRequest
from tests.stack import Stack, wait_until
from tests.test_faults import body, only_job, record_for, start
from worker.readers import NO_READER_S

pytestmark = pytest.mark.e2e

# Nobody reads for NO_READER_S, then the next ping (every second) stops the job.
STOP_DEADLINE_S = NO_READER_S + 3


def records_for(fake: FakeOllama, prompt: str) -> list[str]:
    return [
        r.outcome for r in fake.chat_records() if r.body.get("messages") and r.body["messages"][-1]["content"] == prompt
    ]


def requeue_failed(stack: Stack) -> None:
    rq = shutil.which("rq") or "rq"
    subprocess.run([rq, "requeue", "--all", "--queue", keys.queue_name(LLAMA), "-u", stack.redis_url,
                    "-S", "json"], check=True, capture_output=True, timeout=30)  # fmt: skip


def test_a_killed_web_process_stops_its_generations(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("orphaned", stream=True))
    request.read_until(b"data: ")
    job_id = only_job(redis, "started")
    (child,) = psutil.Process(stack.processes[0].pid).children()  # gunicorn's worker: it holds the stream
    child.send_signal(signal.SIGKILL)
    assert fake_ollama.wait_for(lambda f: record_for(f, "orphaned").outcome == "cancelled", STOP_DEADLINE_S)  # type: ignore[union-attr]
    assert record_for(fake_ollama, "orphaned").tokens_sent < 20 * (STOP_DEADLINE_S + 1)  # type: ignore[union-attr]
    wait_until(lambda: fetch(redis, job_id).get_status().value == "canceled", 3, "the job recorded canceled")
    assert_recorded(redis, job_id, "canceled")


def test_a_requeued_job_nobody_waits_for_is_stopped(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    """An operator requeues a failed job: the web process is alive, but its client left long ago."""
    start(stack, fake_ollama)
    fake_ollama.set_behavior("*", status=500, error="llama runner process has terminated")
    answer = call("POST", f"{stack.web_url}/llm", json=body("again"))
    assert answer.status_code == 500
    job_id = answer.headers["X-Job-Id"]
    wait_until(lambda: fetch(redis, job_id).get_status().value == "failed", 5, "the job recorded failed")
    fake_ollama.set_behavior("*", status=None, error=None, tokens_per_s=20, reply_tokens=1000)
    requeue_failed(stack)
    assert fake_ollama.wait_for(lambda f: records_for(f, "again") == ["error", "cancelled"], 5)
    wait_until(lambda: fetch(redis, job_id).get_status().value == "canceled", 3, "the rerun recorded canceled")
    assert_recorded(redis, job_id, "canceled")


def test_a_job_older_than_the_queue_timeout_is_refused(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    start(stack, fake_ollama, web_env={"QUEUE_TIMEOUT_S": 1}, QUEUE_TIMEOUT_S=1)
    fake_ollama.set_behavior("*", status=500, error="llama runner process has terminated")
    answer = call("POST", f"{stack.web_url}/llm", json=body("stale"))
    job_id = answer.headers["X-Job-Id"]
    wait_until(lambda: fetch(redis, job_id).get_status().value == "failed", 5, "the job recorded failed")
    fake_ollama.set_behavior("*", status=None, error=None, reply_tokens=3)
    time.sleep(1.5)  # older than QUEUE_TIMEOUT_S now: its client was answered long ago
    requeue_failed(stack)
    wait_until(lambda: redis.llen(f"rq:queue:{keys.queue_name(LLAMA)}") == 0, 5, "the worker taking it")
    wait_until(lambda: "refused" in (fetch(redis, job_id).latest_result().exc_string or ""), 5, "the refusal")  # type: ignore[union-attr]
    assert_recorded(redis, job_id, "failed")
    assert records_for(fake_ollama, "stale") == ["error"]  # never sent to Ollama again


def test_a_lost_cancel_still_stops_the_generation(stack: Stack, fake_ollama: FakeOllama, redis: Redis) -> None:
    """The worker's subscription is down when the client leaves: the web's cancel reaches nobody."""
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    start(stack, fake_ollama)
    request = RawRequest(f"{stack.web_url}/llm", body("cancel lost", stream=True))
    request.read_until(b"data: ")
    job_id = only_job(redis, "started")
    # Keep dropping the worker's subscription (its RQ command channel + the cancel channel) from
    # before the client leaves until well after the web has published its cancel.
    until = time.monotonic() + 2.5
    closed = False
    while time.monotonic() < until:
        for client in redis.client_list(_type="pubsub"):
            if int(client.get("sub", 0)) == 2:
                redis.client_kill_filter(_id=client["id"])
        if not closed:
            request.close()
            closed = True
    assert fake_ollama.wait_for(lambda f: record_for(f, "cancel lost").outcome == "cancelled", STOP_DEADLINE_S)  # type: ignore[union-attr]
    wait_until(lambda: fetch(redis, job_id).get_status().value == "canceled", 3, "the job recorded canceled")
    assert_recorded(redis, job_id, "canceled")
