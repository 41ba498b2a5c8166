"""Every way the web ends a job it placed: the record RQ shows, the prompt kept no longer than
PROMPT_RETENTION_S, and end records that are safe to write twice (a retried write)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from redis import Redis
from rq.job import Job
from rq.registry import CanceledJobRegistry, FailedJobRegistry
from rq.serializers import JSONSerializer

from common import keys
from common.events import Failed, Started
from tests.conftest import RedisServer
from tests.replydrop import ReplyDropper
from tests.test_retention import everything_in
from tests.webjob import QUEUE_KEY, Client, ready_worker, request, runtime, send_event
from web.relay import ClientGone, JobRelay
from web.runtime import Runtime
from worker.retention import PromptRetention

MARKER = "quokka-5531-prompt-marker"
RETENTION_S = 60.0


@pytest.fixture
def dropper(redis_server: RedisServer) -> Iterator[ReplyDropper]:
    proxy = ReplyDropper(redis_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def client() -> Iterator[Client]:
    made = Client()
    yield made
    made.close()


def queued_job(rt: Runtime, client: Client) -> JobRelay:
    relay = JobRelay(rt, request(rt, f"tell me about {MARKER}"), client.watch)
    relay.submit()
    return relay


def ended_by_queue_timeout(rt: Runtime, redis: Redis, client: Client) -> JobRelay:
    relay = queued_job(rt, client)
    failed = relay.next_event()
    assert isinstance(failed, Failed) and failed.reason == "queue_timeout"
    return relay


def ended_by_client_leaving(rt: Runtime, redis: Redis, client: Client) -> JobRelay:
    relay = queued_job(rt, client)
    client.leave()
    with pytest.raises(ClientGone):
        relay.next_event()
    return relay


def ended_by_shutdown(rt: Runtime, redis: Redis, client: Client) -> JobRelay:
    relay = queued_job(rt, client)
    rt.drain()
    failed = relay.next_event()
    assert isinstance(failed, Failed) and failed.reason == "shutdown"
    return relay


def ended_by_a_silent_worker(rt: Runtime, redis: Redis, client: Client) -> JobRelay:
    """A worker sent Started (it does so before it records the start) and then went silent."""
    relay = queued_job(rt, client)
    send_event(redis, rt, relay.job_id, 1, Started("w", "GPU-w"))
    failed = relay.next_event()
    assert isinstance(failed, Failed) and failed.reason == "worker_lost"
    return relay


ENDINGS: dict[str, tuple[Callable[[Runtime, Redis, Client], JobRelay], str]] = {
    "queue_timeout": (ended_by_queue_timeout, "canceled"),
    "client_gone": (ended_by_client_leaving, "canceled"),
    "shutdown": (ended_by_shutdown, "canceled"),
    "worker_lost": (ended_by_a_silent_worker, "failed"),
}


@pytest.mark.parametrize("drop_at_start", [False, True], ids=["retention", "drop_at_start"])
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_job_the_web_ends_keeps_its_prompt_no_longer_than_the_retention(
    redis: Redis, redis_server: RedisServer, client: Client, ending: str, drop_at_start: bool
) -> None:
    end, status = ENDINGS[ending]
    rt = runtime(redis_server.url, queue_timeout_s=0.5, worker_silence_s=1.0, shutdown_grace_s=0.0,
                 prompt_retention_s=RETENTION_S, drop_prompts_at_start=drop_at_start)  # fmt: skip
    ready_worker(redis)
    relay = end(rt, redis, client)
    relay.close()
    job = Job.fetch(relay.job_id, connection=redis, serializer=JSONSerializer)
    assert job.get_status().value == status and redis.llen(QUEUE_KEY) == 0
    sweep = PromptRetention(redis, RETENTION_S, drop_at_start)
    if not drop_at_start:
        sweep.sweep(redis, time.time())  # a sweep now: the prompt is kept for the retention
        assert MARKER.encode() in everything_in(redis)
    sweep.sweep(redis, now=time.time() + (1 if drop_at_start else RETENTION_S + 1))
    assert MARKER.encode() not in everything_in(redis)
    assert redis.zscore(keys.prompt_retention(), relay.job_id) is None  # swept, not left behind


def test_a_cancel_whose_answer_was_lost_is_recorded_once_and_tells_no_worker(
    dropper: ReplyDropper, redis: Redis, client: Client
) -> None:
    rt = runtime(dropper.url, queue_timeout_s=0.5)
    ready_worker(redis)
    cancels = redis.pubsub(ignore_subscribe_messages=True)
    cancels.subscribe(keys.cancel_channel())
    relay = JobRelay(rt, request(rt, "cancel once"), client.watch)
    dropper.drop(b"LREM", relay.job_id.encode(), b"canceled")  # the transition queued → canceled
    relay.submit()
    failed = relay.next_event()
    assert isinstance(failed, Failed) and failed.reason == "queue_timeout"
    relay.close()
    assert len(dropper.dropped) == 1
    job = Job.fetch(relay.job_id, connection=redis, serializer=JSONSerializer)
    assert job.get_status().value == "canceled" and redis.llen(QUEUE_KEY) == 0
    assert CanceledJobRegistry(job.origin, connection=redis).get_job_ids(cleanup=False) == [relay.job_id]
    # No worker held it: nothing was broadcast (read up to a message sent after the relay ended).
    redis.publish(keys.cancel_channel(), b"end-of-test")
    heard, deadline = [], time.monotonic() + 5
    while not heard or heard[-1] != b"end-of-test":
        assert time.monotonic() < deadline, heard
        message = cancels.get_message(timeout=1)
        if message is not None:
            heard.append(message["data"])
    assert heard == [b"end-of-test"]
    cancels.close()


def test_failing_an_abandoned_job_whose_answer_was_lost_is_recorded_once(
    dropper: ReplyDropper, redis: Redis, client: Client
) -> None:
    rt = runtime(dropper.url, worker_silence_s=1.0)
    ready_worker(redis)
    relay = JobRelay(rt, request(rt, "failed once"), client.watch)
    dropper.drop(b"rq:failed:", relay.job_id.encode())  # the transition to failed
    relay.submit()
    send_event(redis, rt, relay.job_id, 1, Started("w", "GPU-w"))
    failed = relay.next_event()
    assert isinstance(failed, Failed) and failed.reason == "worker_lost"
    relay.close()
    assert len(dropper.dropped) == 1
    job = Job.fetch(relay.job_id, connection=redis, serializer=JSONSerializer)
    assert job.get_status().value == "failed"
    assert FailedJobRegistry(job.origin, connection=redis).get_job_ids(cleanup=False) == [relay.job_id]
    assert len(job.results()) == 1
