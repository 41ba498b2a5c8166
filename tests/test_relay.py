"""A JobRelay in the test process against a real Redis: events missed live come from the backlog,
and a request can go on following another job (one placed to carry it on)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from common import keys
from common.events import Done, Started, Tokens, encode, sequenced
from tests.conftest import RedisServer
from tests.webjob import Client, ready_worker, request, runtime, send_event
from web.relay import JobRelay


@pytest.fixture
def relay(redis: Redis, redis_server: RedisServer) -> Iterator[JobRelay]:
    rt = runtime(redis_server.url)
    ready_worker(redis)
    client = Client()
    made = JobRelay(rt, request(rt, "follow me"), client.watch)
    made.submit()
    yield made
    made.close()
    client.close()


def texts(relay: JobRelay, count: int) -> list[str]:
    events = [relay.next_event() for _ in range(count)]
    return [e.text if isinstance(e, Tokens) else type(e).__name__ for e in events]


def test_an_event_missed_live_is_replayed_in_order(relay: JobRelay, redis: Redis) -> None:
    rt, job_id = relay.rt, relay.job_id
    send_event(redis, rt, job_id, 1, Started("w", "GPU-w"))
    send_event(redis, rt, job_id, 2, Tokens('"a"', 1))
    # Event 3 reaches the backlog only (the web's subscription was down when it was published).
    missed = sequenced(encode(job_id, Tokens('"b"', 1)), 3)
    redis.xadd(keys.job_backlog(job_id), {"m": missed}, id="3-0")
    send_event(redis, rt, job_id, 4, Tokens('"c"', 1))
    send_event(redis, rt, job_id, 5, Done("stop", 1, 3))
    assert texts(relay, 4) == ["a", "b", "c", "Done"]


def test_a_relay_follows_another_job_from_its_first_event(relay: JobRelay, redis: Redis) -> None:
    rt, first = relay.rt, relay.job_id
    send_event(redis, rt, first, 1, Started("w", "GPU-w"))
    send_event(redis, rt, first, 2, Tokens('"a"', 1))
    assert texts(relay, 1) == ["a"]
    second = uuid.uuid4().hex
    relay.follow(second)
    assert relay.job_id == second
    send_event(redis, rt, first, 3, Tokens('"stale"', 1))  # the first job's: not this request's any more
    send_event(redis, rt, second, 1, Started("w2", "GPU-w2"))
    send_event(redis, rt, second, 2, Tokens('"b"', 1))
    send_event(redis, rt, second, 3, Done("stop", 1, 2))
    assert texts(relay, 2) == ["b", "Done"]
    assert relay.trace.worker == "w2"
