"""Placing a job: safe to run twice (a retried write whose first answer was lost), and stamped
with Redis's clock, not the web host's."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import rq.utils
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from common.errors import CapacityError
from common.events import Done, Tokens
from tests.client import call
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.replydrop import ReplyDropper
from tests.stack import Stack, wait_until
from tests.webjob import LLAMA, QUEUE_KEY, Client, ready_worker, request, runtime
from web import placement
from web.relay import JobRelay

WORDS = [f"p{i} " for i in range(12)]
CLIENT = Client()  # a client that stays for every job of these tests


@pytest.fixture
def dropper(redis_server: RedisServer) -> Iterator[ReplyDropper]:
    proxy = ReplyDropper(redis_server.port)
    yield proxy
    proxy.close()


def test_a_placement_whose_answer_was_lost_queues_the_job_once(dropper: ReplyDropper, redis: Redis) -> None:
    rt = runtime(dropper.url)
    ready_worker(redis)
    relay = JobRelay(rt, request(rt, "placed once"), CLIENT.watch)
    dropper.drop(b"EVALSHA", relay.job_id.encode())
    relay.submit()
    assert len(dropper.dropped) == 1  # Redis ran it, the answer was lost, redis-py ran it again
    assert redis.lrange(QUEUE_KEY, 0, -1) == [relay.job_id.encode()]
    job = Job.fetch(relay.job_id, connection=redis, serializer=JSONSerializer)
    assert job.get_status().value == "queued"
    relay.close()
    assert redis.llen(QUEUE_KEY) == 0 and job.get_status().value == "canceled"


def test_a_retried_placement_is_one_job_one_engine_request_and_the_exact_text(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, dropper: ReplyDropper
) -> None:
    fake_ollama.set_behavior("*", tokens=WORDS, tokens_per_s=40, slots=2)
    stack.start_web(OLLAMA_URL=fake_ollama.url, REDIS_URL=dropper.url)
    stack.start_worker(OLLAMA_URL=fake_ollama.url, OLLAMA_NUM_PARALLEL=2, VRAM_MB=24576)
    # The placement's description names max_tokens: only this request's placement carries it.
    dropper.drop(b"EVALSHA", b"max_tokens=4321")
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "once"}], "max_tokens": 4321}
    answer = call("POST", f"{stack.web_url}/llm", json=body, timeout=30)
    assert len(dropper.dropped) == 1
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "".join(WORDS)
    job_id = answer.headers["X-Job-Id"]
    # Nothing of the job is left to be taken (positive: the queues are empty, the job finished).
    intermediate = f"rq:intermediate:{QUEUE_KEY.removeprefix('rq:queue:')}"
    wait_until(lambda: redis.llen(QUEUE_KEY) == 0 and redis.llen(intermediate) == 0, 5, "the queues emptied")
    wait_until(lambda: redis.hget(f"rq:job:{job_id}", "status") == b"finished", 5, "the job finished")
    chats = [r for r in fake_ollama.chat_records() if r.body.get("messages") == body["messages"]]
    assert [r.outcome for r in chats] == ["done"]


# --- one clock: Redis's -----------------------------------------------------------------------------


def redis_now(redis: Redis) -> datetime:
    seconds, micros = redis.time()
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)


@pytest.fixture
def web_clock_behind(monkeypatch: pytest.MonkeyPatch) -> timedelta:
    """The web's clock an hour behind Redis's: every `now` RQ and the web read, in this process."""
    skew, real_now = timedelta(hours=1), rq.utils.now

    def behind() -> datetime:
        return real_now() - skew

    for name, module in list(sys.modules.items()):
        if (name == "rq" or name.startswith(("rq.", "web."))) and getattr(module, "now", None) is real_now:
            monkeypatch.setattr(module, "now", behind)
    assert rq.utils.now() < real_now() - skew / 2
    return skew


def test_a_job_is_stamped_with_redis_time_whatever_the_web_clock(
    redis: Redis, redis_server: RedisServer, web_clock_behind: timedelta
) -> None:
    rt = runtime(redis_server.url)
    ready_worker(redis)
    relay = JobRelay(rt, request(rt, "when"), CLIENT.watch)
    relay.submit()
    job = Job.fetch(relay.job_id, connection=redis, serializer=JSONSerializer)
    now = redis_now(redis)
    assert job.created_at is not None and job.enqueued_at is not None
    assert abs(job.created_at.replace(tzinfo=UTC) - now) < timedelta(seconds=2), (job.created_at, now)
    assert abs(job.enqueued_at.replace(tzinfo=UTC) - now) < timedelta(seconds=2), (job.enqueued_at, now)
    relay.close()


def test_a_fresh_job_from_a_web_whose_clock_is_behind_is_served(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, redis_server: RedisServer, web_clock_behind: timedelta
) -> None:
    fake_ollama.set_behavior("*", tokens=WORDS)
    stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=24576, QUEUE_TIMEOUT_S=30)
    rt = runtime(redis_server.url, queue_timeout_s=30)
    relay = JobRelay(rt, request(rt, "skewed"), CLIENT.watch)
    relay.submit()
    try:
        events = [relay.next_event()]
        while isinstance(events[-1], Tokens):
            events.append(relay.next_event())
    finally:
        relay.close()
    assert isinstance(events[-1], Done), events[-1]
    assert "".join(e.text for e in events if isinstance(e, Tokens)) == "".join(WORDS)


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(0, 2**32), micros=st.integers(0, 999_999))
def test_the_placement_script_writes_times_as_rq_does(redis_server: RedisServer, seconds: int, micros: int) -> None:
    """The script's UTC formatting (Redis's Lua has no date functions) matches RQ's utcformat."""
    with Redis.from_url(redis_server.url) as client:
        written = client.eval(placement.UTC_LUA + "return utc(ARGV[1], ARGV[2])", 0, seconds, micros)
    expected = utcformat(datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros))
    assert written.decode() == expected


def test_a_refused_placement_retried_is_still_refused_and_writes_nothing(dropper: ReplyDropper, redis: Redis) -> None:
    rt = runtime(dropper.url, max_queue=0)
    ready_worker(redis, slots=1)
    first = JobRelay(rt, request(rt, "fills the room"), CLIENT.watch)
    first.submit()
    before = sorted(redis.keys("*"))
    second = JobRelay(rt, request(rt, "one too many"), CLIENT.watch)
    dropper.drop(b"EVALSHA", second.job_id.encode())
    with pytest.raises(CapacityError):
        second.submit()
    assert len(dropper.dropped) == 1 and sorted(redis.keys("*")) == before
    first.close()
