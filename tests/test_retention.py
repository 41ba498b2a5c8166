"""Prompts leave Redis PROMPT_RETENTION_S after their job ends, or (DROP_PROMPTS_AT_START) once it starts."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now
from rq.utils import utcformat
from rq.webhook import Webhook

from common import keys
from common.jobs import GenerateJob
from common.models import parse_models
from common.settings import Settings
from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.stack import Stack, wait_until
from web import admission
from web.runtime import Runtime
from worker.retention import PromptRetention

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
SECRET = "zebra-7741-secret-prompt"


def messages() -> list[dict[str, str]]:
    """A conversation holding SECRET; the last user turn (which the fake Ollama echoes) does not."""
    return [
        {"role": "system", "content": f"system {SECRET}"},
        {"role": "user", "content": f"earlier {SECRET}"},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "go on"},
    ]


def values_of(redis: Redis, key: bytes) -> list[Any]:
    """The values stored under one key, whatever its type."""
    kind = redis.type(key).decode()
    if kind == "string":
        return [redis.get(key)]
    if kind == "hash":
        return list(redis.hgetall(key).values())
    if kind == "list":
        return list(redis.lrange(key, 0, -1))
    if kind in ("set", "zset"):
        return list(redis.smembers(key) if kind == "set" else redis.zrange(key, 0, -1))
    if kind == "stream":
        return [v for _, fields in redis.xrange(key) for v in fields.values()]
    return []


def everything_in(redis: Redis) -> bytes:
    """Every value of every key, raw and (where it is zlib data, as RQ stores job data) decompressed."""
    found: list[bytes] = []
    for key in redis.scan_iter(count=1000):
        for value in values_of(redis, key):
            if isinstance(value, bytes):
                found.append(value)
                with contextlib.suppress(zlib.error):
                    found.append(zlib.decompress(value))
    return b"\n".join(found)


def contents(redis: Redis, job_id: str) -> list[str]:
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    return [m["content"] for m in job.args[0]["messages"]]


def place(redis: Redis, job_id: str) -> None:
    """Place the job as the web does."""
    job = GenerateJob("reply", LLAMA, "llama3.1:8b", messages(), 8, 0.7, 1.0, 40, False)
    rt = Runtime(Settings(models=parse_models(LLAMA)), redis)
    admission.place(rt, rt.queue(LLAMA), job_id, job, admission.Room(admission.NO_LIMIT, 1, 0))


def end(redis: Redis, job_id: str, status: JobStatus, ended_at: float) -> None:
    """Record the job as ended, as RQ does (status, ended_at)."""
    when = datetime.fromtimestamp(ended_at, UTC)
    redis.hset(Job.key_for(job_id), mapping={"status": status.value, "ended_at": utcformat(when)})


def test_the_sweep_blanks_ended_jobs_after_the_retention_only(redis: Redis) -> None:
    retention = PromptRetention(redis, 60, drop_at_start=False)
    ids = ["finished", "failed", "canceled", "running", "gone", "fresh"]
    for job_id in ids:
        place(redis, job_id)
    started = time.time() - 100
    with redis.pipeline() as pipe:
        retention.on_start([Job.fetch(i, connection=redis, serializer=JSONSerializer) for i in ids], pipe, started)
        pipe.execute()
    redis.zadd(keys.prompt_retention(), dict.fromkeys(ids, started))
    end(redis, "finished", JobStatus.FINISHED, started + 10)
    end(redis, "failed", JobStatus.FAILED, started + 10)
    end(redis, "canceled", JobStatus.CANCELED, started + 10)
    redis.hset(Job.key_for("running"), "status", JobStatus.STARTED.value)
    end(redis, "fresh", JobStatus.FINISHED, time.time() - 5)  # ended 5 s ago: kept 55 s more
    redis.expire(Job.key_for("finished"), 500)
    redis.delete(Job.key_for("gone"))

    assert retention.sweep(redis, time.time()) == 3
    for job_id in ("finished", "failed", "canceled"):
        assert contents(redis, job_id) == ["", "", "", ""]
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        assert job.args[0]["model_id"] == LLAMA and job.args[0]["messages"][0]["role"] == "system"
        assert job.description.startswith(f"generate {LLAMA}")
    assert 400 < redis.ttl(Job.key_for("finished")) <= 500, "blanking keeps the record's lifetime"
    assert contents(redis, "running")[0] == f"system {SECRET}"
    assert contents(redis, "fresh")[0] == f"system {SECRET}"
    assert not redis.exists(Job.key_for("gone")), "a record that expired is not recreated"
    assert {m.decode() for m in redis.zrange(keys.prompt_retention(), 0, -1)} == {"running", "fresh"}
    assert retention.sweep(redis, now=time.time() + 60) == 1
    assert contents(redis, "fresh") == ["", "", "", ""]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": LLAMA, "messages": messages(), "max_tokens": 8, **fields}


@pytest.mark.e2e
def test_prompts_are_blanked_retention_seconds_after_the_job(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", reply_tokens=3)
    stack.start_web(OLLAMA_URL=fake_ollama.url)
    stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=8192, PROMPT_RETENTION_S=2)
    answer = call("POST", f"{stack.web_url}/llm", json=body())
    assert answer.status_code == 200
    job_id = answer.headers["X-Job-Id"]
    ended = time.monotonic()
    assert contents(stack.redis, job_id)[0] == f"system {SECRET}", "kept for PROMPT_RETENTION_S"
    wait_until(lambda: contents(stack.redis, job_id) == ["", "", "", ""], 15, "prompt blanked")
    assert time.monotonic() - ended >= 1.5
    job = Job.fetch(job_id, connection=stack.redis, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED and job.latest_result() is not None
    assert SECRET.encode() not in everything_in(stack.redis)


@pytest.mark.e2e
def test_drop_prompts_at_start_leaves_no_prompt_text_in_redis(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", reply_tokens=40, tokens_per_s=20)
    stack.start_web(OLLAMA_URL=fake_ollama.url)
    stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=8192, DROP_PROMPTS_AT_START="true")
    answers: list[Any] = []
    request = threading.Thread(target=lambda: answers.append(call("POST", f"{stack.web_url}/llm", json=body())))
    request.start()
    try:

        def running_job() -> str | None:
            for job_id in stack.redis.zrange(f"rq:wip:{keys.queue_name(LLAMA)}", 0, -1):
                return job_id.decode().split(":")[0]
            return None

        job_id = wait_until(running_job, 15, "a running job")
        assert Job.fetch(job_id, connection=stack.redis, serializer=JSONSerializer).get_status() == JobStatus.STARTED
        assert SECRET.encode() not in everything_in(stack.redis)
        assert contents(stack.redis, job_id) == ["", "", "", ""]
    finally:
        request.join(30)
    assert answers[0].status_code == 200 and answers[0].json()["choices"][0]["message"]["content"]
    assert SECRET.encode() not in everything_in(stack.redis)


def planted(queue: Queue, **fields: Any) -> Job:
    """A runner job holding SECRET, saved as the web saves one (not queued)."""
    spec = GenerateJob("llmrunner:events:nobody", LLAMA, "llama3.1:8b", messages(), 5, 0.7, 0.9, 40, False)
    job = queue.create_job(keys.GENERATE_JOB, args=(spec.to_payload(),), job_id=uuid.uuid4().hex, timeout=-1,
                           failure_ttl=86400, **fields)  # fmt: skip
    job.save()
    return job


@pytest.mark.e2e
def test_jobs_that_never_started_keep_their_prompt_no_longer_than_the_retention(
    stack: Stack, fake_ollama: FakeOllama
) -> None:
    """Refused as stale, failed by RQ's intermediate-queue cleanup, refused for its webhooks: each
    ended without starting, and each prompt leaves Redis PROMPT_RETENTION_S after (not 24 h)."""
    redis = stack.redis
    queue = Queue(keys.queue_name(LLAMA), connection=redis, serializer=JSONSerializer)
    stuck = planted(queue)
    intermediate = IntermediateQueue(queue.key, redis)
    redis.rpush(intermediate.key, stuck.id)
    redis.set(intermediate.get_first_seen_key(stuck.id), rq_now().timestamp() - 120)
    stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=8192, PROMPT_RETENTION_S=1, QUEUE_TIMEOUT_S=5)
    stale = planted(queue)
    redis.hset(stale.key, "created_at", utcformat(rq_now() - timedelta(hours=1)))
    hooked = planted(queue, webhooks=[Webhook("http://127.0.0.1:9/hook", "failed")])
    for job in (stale, hooked):
        queue.push_job_id(job.id)
    for job in (stale, stuck, hooked):
        wait_until(lambda job=job: Job.fetch(job.id, connection=redis, serializer=JSONSerializer).get_status()
                   == JobStatus.FAILED, 20, f"job {job.id} failed")  # fmt: skip
    wait_until(lambda: SECRET.encode() not in everything_in(redis), 20, "every prompt blanked")
    for job in (stale, stuck, hooked):
        assert contents(redis, job.id) == ["", "", "", ""], "the record stays, its prompt blanked"
