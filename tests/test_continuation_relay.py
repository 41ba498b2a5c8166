"""A request's lost generation carried on by a continuation job, driven event by event: a JobRelay
in the test process against a real Redis, the workers' events published as workers publish them
(tests/webjob.py). What the client would read is what the relay hands out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from common import keys
from common.events import Done, Failed, Started, Tokens
from common.jobs import GenerateJob
from tests.conftest import RedisServer
from tests.stack import free_port, wait_until
from tests.webjob import LLAMA, QUEUE_KEY, Client, ready_record, ready_worker, request, runtime, send_event
from web import metrics
from web.continuation import Sent, lost, next_job
from web.deadlines import Deafness
from web.liveness import PROBE_AFTER_S, PROBE_CONFIRM_S, ProcessWatch
from web.relay import Answer, JobRelay
from web.runtime import Runtime

PROMPT = "carry me on"


@pytest.fixture
def client() -> Iterator[Client]:
    made = Client()
    yield made
    made.close()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as made:
        yield made


def follow(rt: Runtime, client: Client, **fields: Any) -> JobRelay:
    relay = JobRelay(rt, request(rt, PROMPT, **fields), client.watch)
    relay.submit()
    return relay


def tokens(text: str) -> Tokens:
    return Tokens(f'"{text}"', 1)


def payload(redis: Redis, job_id: str) -> GenerateJob:
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    return GenerateJob.from_payload(job.args[0])


def placed_after(redis: Redis, job_id: str) -> str:
    """The id of the job placed to carry `job_id` on (first in the model's queue), once it is there."""

    def found() -> str | None:
        first = redis.lindex(QUEUE_KEY, 0)
        return first.decode() if first is not None and first.decode() != job_id else None

    placed: str = wait_until(found, 10, f"a job placed after {job_id}")
    return placed


def lose(redis: Redis, rt: Runtime, relay: JobRelay, sent: list[str], failure: Failed, seq: int = 1) -> int:
    """The followed job starts, sends `sent` one token an event, then fails; the next sequence number."""
    send_event(redis, rt, relay.job_id, seq, Started("w", "GPU-w"))
    for text in sent:
        seq += 1
        send_event(redis, rt, relay.job_id, seq, tokens(text))
    send_event(redis, rt, relay.job_id, seq + 1, failure)
    return seq + 2


def handed_out(relay: JobRelay, count: int) -> list[str]:
    events = [relay.next_event() for _ in range(count)]
    return [e.text if isinstance(e, Tokens) else type(e).__name__ for e in events]


def continuations(reason: str) -> float:
    return metrics.CONTINUATIONS.labels(reason)._value.get()  # type: ignore[attr-defined,no-any-return]


def test_a_lost_stream_goes_on_with_a_continuation_job_seamlessly(
    redis: Redis, redis_server: RedisServer, client: Client, pool: ThreadPoolExecutor
) -> None:
    rt = runtime(redis_server.url)
    ready_worker(redis, continuation=True)
    relay = follow(rt, client, stream=True)
    original = relay.job_id
    before = continuations("interrupted")
    cancels = redis.pubsub(ignore_subscribe_messages=True)
    cancels.subscribe(keys.cancel_channel())
    lose(redis, rt, relay, ["Hel", "lo"], Failed("cut", 500, "interrupted"))
    assert handed_out(relay, 2) == ["Hel", "lo"]
    waiting: Future[Answer] = pool.submit(relay.next_event)
    again = placed_after(redis, original)
    job = payload(redis, again)
    # The original messages, then what the client got as a trailing assistant message; the budget left.
    assert job.messages == [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "Hello"}]
    assert (job.continue_final, job.sent_tokens, job.attempt, job.max_tokens) == (True, 2, 1, 48)
    assert (job.temperature, job.top_p, job.top_k) == (relay.request.temperature, relay.request.top_p,
                                                       relay.request.top_k)  # fmt: skip
    rq_job = Job.fetch(again, connection=redis, serializer=JSONSerializer)
    assert rq_job.meta == {"continues": original, "cause": "interrupted"}
    assert relay.job_id == again and relay.trace.job_id == again
    # The old job is told to stop, wherever it runs.
    heard = wait_until(lambda: cancels.get_message(timeout=0.2), 5, "the cancel broadcast")
    assert heard["data"] == original.encode()
    cancels.close()
    # The continuation's events: only its new text; its Done counts only its own tokens.
    send_event(redis, rt, again, 1, Started("w2", "GPU-w2"))
    send_event(redis, rt, again, 2, tokens(" world"))
    send_event(redis, rt, again, 3, Done("stop", 9, 1))
    first = waiting.result(timeout=10)
    assert isinstance(first, Tokens) and first.text == " world"
    done = relay.next_event()
    # The client's usage: the original prompt's tokens, and every completion token it got.
    assert isinstance(done, Done) and (done.prompt_tokens, done.completion_tokens) == (9, 3)
    assert relay.trace.worker == "w2" and relay.trace.continuations == 1
    assert continuations("interrupted") == before + 1
    relay.close()


def test_events_lost_for_good_are_carried_on_from_what_the_client_got(
    redis: Redis, redis_server: RedisServer, client: Client, pool: ThreadPoolExecutor
) -> None:
    rt = runtime(redis_server.url)
    ready_worker(redis, continuation=True)
    relay = follow(rt, client, stream=True)
    original = relay.job_id
    send_event(redis, rt, original, 1, Started("w", "GPU-w"))
    send_event(redis, rt, original, 2, tokens("a"))
    assert handed_out(relay, 1) == ["a"]
    # Event 3 is in no backlog (a Redis failover lost it before a replica had it); 4 comes live.
    send_event(redis, rt, original, 4, tokens("c"))
    waiting: Future[Answer] = pool.submit(relay.next_event)
    again = placed_after(redis, original)
    job = payload(redis, again)
    assert (job.prefix, job.sent_tokens) == ("a", 1)
    assert Job.fetch(again, connection=redis, serializer=JSONSerializer).meta["cause"] == "events_lost"
    send_event(redis, rt, again, 1, Started("w", "GPU-w"))
    send_event(redis, rt, again, 2, tokens("bc"))
    send_event(redis, rt, again, 3, Done("stop", 9, 1))
    first = waiting.result(timeout=10)
    assert isinstance(first, Tokens) and first.text == "bc"
    done = relay.next_event()
    assert isinstance(done, Done) and done.completion_tokens == 2
    relay.close()


def test_nothing_sent_yet_places_the_original_job_again(
    redis: Redis, redis_server: RedisServer, client: Client, pool: ThreadPoolExecutor
) -> None:
    rt = runtime(redis_server.url)
    ready_worker(redis)  # no engine here continues an answer: none is needed for a retry
    relay = follow(rt, client)
    original = relay.job_id
    lose(redis, rt, relay, [], Failed("the engine's stream broke", 500, "stream_error"))
    waiting: Future[Answer] = pool.submit(relay.next_event)
    again = placed_after(redis, original)
    assert payload(redis, again) == replace(payload(redis, original), attempt=1)
    send_event(redis, rt, again, 1, Started("w", "GPU-w"))
    send_event(redis, rt, again, 2, tokens("whole"))
    send_event(redis, rt, again, 3, Done("stop", 9, 1))
    first = waiting.result(timeout=10)
    assert isinstance(first, Tokens) and first.text == "whole"
    done = relay.next_event()
    assert isinstance(done, Done) and done.completion_tokens == 1
    relay.close()


def test_migration_limit_reached_ends_as_today(redis: Redis, redis_server: RedisServer, client: Client,
                                               pool: ThreadPoolExecutor) -> None:  # fmt: skip
    rt = runtime(redis_server.url, migration_limit=1)
    ready_worker(redis, continuation=True)
    relay = follow(rt, client)
    original = relay.job_id
    lose(redis, rt, relay, ["a"], Failed("cut", 500, "truncated"))
    assert handed_out(relay, 1) == ["a"]
    waiting: Future[Answer] = pool.submit(relay.next_event)
    again = placed_after(redis, original)
    lose(redis, rt, relay, ["b"], Failed("cut again", 500, "truncated"))
    first = waiting.result(timeout=10)
    assert isinstance(first, Tokens) and first.text == "b"
    failed = relay.next_event()
    assert isinstance(failed, Failed) and (failed.reason, failed.msg) == ("truncated", "cut again")
    assert redis.lrange(QUEUE_KEY, 0, -1) == [again.encode(), original.encode()]  # nothing more placed
    relay.close()


@pytest.mark.parametrize(
    ("settings", "fields", "able"),
    [
        ({"migration_limit": 0}, {}, True),  # continuation turned off
        ({}, {}, False),  # no ready worker can continue an answer of the model
        ({}, {"tools": [{"type": "function", "function": {"name": "f"}}]}, True),  # guided decoding
        ({}, {"response_format": {"type": "json_object"}}, True),
    ],
    ids=["limit_0", "no_worker_can_continue", "tools", "response_format"],
)
def test_a_generation_that_must_not_be_carried_on_ends_as_today(
    redis: Redis, redis_server: RedisServer, client: Client, settings: dict[str, Any], fields: dict[str, Any],
    able: bool,
) -> None:  # fmt: skip
    rt = runtime(redis_server.url, **settings)
    ready_worker(redis, continuation=able)
    relay = JobRelay(rt, replace(request(rt, PROMPT), **fields), client.watch)
    relay.submit()
    lose(redis, rt, relay, ["a"], Failed("cut", 500, "interrupted"))
    assert handed_out(relay, 2) == ["a", "Failed"]
    assert redis.lrange(QUEUE_KEY, 0, -1) == [relay.job_id.encode()]
    relay.close()


def test_a_worker_whose_process_is_gone_is_lost_long_before_its_silence_deadline(
    redis: Redis, redis_server: RedisServer, client: Client
) -> None:
    # Nobody listens on the command channel of "w" (no process behind it): it is gone. The
    # silence deadline is far away; a Failed comes all the same, saying why.
    rt = runtime(redis_server.url, worker_silence_s=120.0, migration_limit=0)
    ready_worker(redis)
    relay = follow(rt, client)
    send_event(redis, rt, relay.job_id, 1, Started("w", "GPU-w"))
    asked = time.monotonic()
    failed = relay.next_event()
    assert isinstance(failed, Failed) and failed.reason == "worker_lost"
    assert "w stopped responding (its process is gone" in failed.msg and time.monotonic() - asked < 120
    job = Job.fetch(relay.job_id, connection=redis, serializer=JSONSerializer)
    assert job.get_status().value == "failed"  # recorded by the web, as for a silent worker
    relay.close()


def test_a_live_worker_process_is_waited_for_until_its_silence_deadline(
    redis: Redis, redis_server: RedisServer, client: Client
) -> None:
    rt = runtime(redis_server.url, worker_silence_s=2.5, migration_limit=0)
    ready_worker(redis)
    alive = redis.pubsub()
    alive.subscribe(keys.worker_commands("w"))  # the worker's process, listening
    wait_until(lambda: dict(redis.pubsub_numsub(keys.worker_commands("w")))[keys.worker_commands("w").encode()], 5,
               "the subscription")  # fmt: skip
    relay = follow(rt, client)
    send_event(redis, rt, relay.job_id, 1, Started("w", "GPU-w"))
    failed = relay.next_event()
    assert isinstance(failed, Failed) and failed.reason == "worker_lost"
    assert "silent for" in failed.msg and "process is gone" not in failed.msg
    alive.close()
    relay.close()


def test_a_lost_worker_is_carried_on_by_another_worker_only(
    redis: Redis, redis_server: RedisServer, client: Client, pool: ThreadPoolExecutor
) -> None:
    rt = runtime(redis_server.url, worker_silence_s=120.0)
    ready_worker(redis, "w", continuation=True)  # the one that dies
    relay = follow(rt, client)
    original = relay.job_id
    send_event(redis, rt, original, 1, Started("w", "GPU-w"))
    send_event(redis, rt, original, 2, tokens("a"))
    assert handed_out(relay, 1) == ["a"]
    failed = relay.next_event()  # "w" alone serves the model: nobody else to carry it on
    assert isinstance(failed, Failed) and failed.reason == "worker_lost"
    assert redis.lrange(QUEUE_KEY, 0, -1) == []
    relay.close()
    ready_worker(redis, "other", continuation=True)
    relay = follow(rt, client)
    original = relay.job_id
    send_event(redis, rt, original, 1, Started("w", "GPU-w"))
    send_event(redis, rt, original, 2, tokens("a"))
    assert handed_out(relay, 1) == ["a"]
    waiting: Future[Answer] = pool.submit(relay.next_event)
    again = placed_after(redis, original)
    assert payload(redis, again).prefix == "a"
    send_event(redis, rt, again, 1, Started("other", "GPU-o"))
    send_event(redis, rt, again, 2, Done("length", 9, 0))
    done = waiting.result(timeout=10)
    assert isinstance(done, Done) and done.completion_tokens == 1
    relay.close()


# ---- the pure parts: whether to carry on, and when a worker's process counts as gone


def test_what_stops_a_continuation_and_what_it_carries() -> None:
    fleet = [ready_record("a", continuation=True), ready_record("b", continuation=False)]
    original = GenerateJob(reply_to="c", model_id=LLAMA, tag="t", messages=[{"role": "user", "content": "q"}],
                           max_tokens=5, temperature=0.0, top_p=1.0, top_k=-1, stream=True)  # fmt: skip
    sent = Sent()
    for part in ('"H\\u00e9"', '"llo \\"x\\""'):
        sent.add(Tokens(part, 2))
    assert sent.text == 'Héllo "x"' and sent.tokens == 4
    job = next_job(original, sent, 1, 2, fleet)
    assert isinstance(job, GenerateJob) and job.prefix == 'Héllo "x"' and job.max_tokens == 1 and job.attempt == 2
    assert next_job(original, sent, 2, 2, fleet) == "it was carried on 2 time(s) already (MIGRATION_LIMIT=2)"
    assert next_job(original, sent, 0, 2, fleet, draining=True) == "the runner is shutting down"
    assert next_job(original, sent, 0, 2, None) == "the fleet registry could not be read"
    assert "can continue" in str(next_job(original, sent, 0, 2, fleet, lost_worker="a"))
    sent.add(Tokens('"!"', 1))
    assert next_job(original, sent, 0, 2, fleet) == "the client got all of its max_tokens"
    # A worker's failure that says nothing was lost (a bad request, no room) is never carried on;
    # an engine found unreachable is, when the job was itself carrying an answer on.
    assert lost(Failed("x", 500, "interrupted"), 0) and not lost(Failed("x", 400, "bad_request"), 0)
    assert not lost(Failed("x", 500, "unreachable"), 0) and lost(Failed("x", 500, "unreachable"), 1)


def test_a_process_counts_as_gone_after_two_empty_looks_of_one_silence() -> None:
    watch = ProcessWatch(Deafness())
    heard = 100.0
    assert not watch.due(False, heard, 0.0, 200.0)  # not started: nothing to look for
    assert not watch.due(True, heard, 0.0, heard + PROBE_AFTER_S - 0.01)  # not silent long enough
    assert not watch.due(True, heard, heard + 0.5, heard + 5)  # an outage since: its worker reconnects too
    now = heard + PROBE_AFTER_S
    assert watch.due(True, heard, 0.0, now) and not watch.seen(0, heard, now)
    assert not watch.due(True, heard, 0.0, now + 0.01)  # one look a tick
    assert watch.seen(0, heard, now + PROBE_CONFIRM_S)
    # A subscriber in between (the channel re-made), or a new silence, starts over.
    assert not watch.seen(0, heard, now) and not watch.seen(1, heard, now + 0.25)
    assert not watch.seen(0, heard, now + 0.5) and not watch.seen(0, heard + 1, now + 1)
    assert watch.seen(0, heard + 1, now + 1 + PROBE_CONFIRM_S)


def test_a_look_redis_does_not_answer_counts_as_time_this_process_heard_nobody() -> None:
    # Redis away (nothing listens on this port): the look fails; whatever silence the job had is
    # not the worker's: it counts again from the look's end, as after the web's resubscription.
    deaf = Deafness()
    watch = ProcessWatch(deaf)
    heard = time.monotonic() - 2.0
    nobody = Redis(port=free_port(), socket_connect_timeout=1)
    assert not watch.gone(nobody, "w", True, heard, 0.0, time.monotonic())
    assert deaf.until(True, time.monotonic()) > heard + 2.0
    assert not watch.due(True, heard, deaf.until(True, time.monotonic()), time.monotonic())  # not again
