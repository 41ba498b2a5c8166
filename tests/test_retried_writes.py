"""A write whose reply is lost runs twice (the Redis client retries it): the worker's writes must not care.

Real processes; the worker reaches Redis through a proxy that forwards one chosen command, lets
Redis run it, and closes the connection instead of delivering the answer. The Redis client
reconnects and sends the command again. Whatever the command (the blocking wait for work, the
take, the start bookkeeping), the client gets its whole answer, exactly once, from one engine
request, and nothing is left in RQ's intermediate list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from redis import Redis

from tests.client import call
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.jobcheck import assert_recorded
from tests.rawclient import RawRequest
from tests.redisproxy import RedisProxy
from tests.stack import Stack, wait_until
from tests.test_faults import QUEUE_KEY, body, only_job, start

pytestmark = pytest.mark.e2e

# The fake echoes the prompt's words (tests/fake_ollama.py, _plan): the answer is 7 tokens of it.
PROMPT = "alpha bravo charlie"


def take_script_sha() -> bytes:
    """The take script's SHA1, which every take sends (EVALSHA)."""
    from worker.dequeue import _TAKE

    return hashlib.sha1(_TAKE.encode()).hexdigest().encode()


def blocking_wait(proxy: RedisProxy, stack: Stack, redis: Redis) -> None:
    """The worker waits for work in a blocking command; the answer that wakes it is lost."""
    proxy.drop_reply(b"BLMOVE", reply=b"$32\r\n")  # answered with a job id (32 hex digits)
    wait_until(lambda: any(c["cmd"] == "blmove" for c in redis.client_list()), 10, "the worker waiting for work")


def take(proxy: RedisProxy, stack: Stack, redis: Redis) -> None:
    """The worker takes a job that was waiting for it; the take's answer is lost."""
    busy = RawRequest(f"{stack.web_url}/llm", body("keep the slot busy", stream=True, max_tokens=20))
    busy.read_until(b"data: ")
    only_job(redis, "started")
    # Answers of takes that moved a job name its queue; empty takes answer only Redis's TIME.
    proxy.drop_reply(take_script_sha(), reply=b"rq:queue:")
    busy.read_all(timeout=15)


def start_bookkeeping(proxy: RedisProxy, stack: Stack, redis: Redis) -> None:
    """The start script's answer is lost (it begins by taking the job off the intermediate list)."""
    proxy.drop_reply(b"LREM")


def start_bookkeeping_through_an_outage(proxy: RedisProxy, stack: Stack, redis: Redis) -> None:
    """The start script's answers are lost three times: the client's own retry, then the worker's
    tries through an outage (common.outage) send it again; each must find the start it made."""
    proxy.drop_reply((b"EVAL", b"LREM"), reply=b"*1\r\n", times=3)


@pytest.mark.parametrize(
    "lost", [blocking_wait, take, start_bookkeeping, start_bookkeeping_through_an_outage], ids=lambda f: f.__name__
)
def test_a_lost_reply_costs_nothing_one_job_one_engine_request_exact_text(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, redis_server: RedisServer,
    lost: Callable[[RedisProxy, Stack, Redis], None],
) -> None:  # fmt: skip
    fake_ollama.set_behavior("*", reply_tokens=7, tokens_per_s=20)
    proxy = RedisProxy(redis_server.port)
    try:
        start(stack, fake_ollama, REDIS_URL=proxy.url, web_env={"QUEUE_TIMEOUT_S": 10})
        for attempt in range(5):  # the fault needs its moment (a wait under way): try until it hit
            prompt = f"{PROMPT} {attempt}"
            lost(proxy, stack, redis)
            answer = call("POST", f"{stack.web_url}/llm", json=body(prompt, max_tokens=7))
            assert answer.status_code == 200, answer.text
            words = prompt.split()
            assert answer.json()["choices"][0]["message"]["content"] == "".join(f"{words[i % 4]} " for i in range(7))
            asked = [r for r in fake_ollama.chat_records() if r.body.get("messages")
                     and r.body["messages"][-1]["content"] == prompt]  # fmt: skip
            assert len(asked) == 1, "one engine request per job"
            assert redis.llen(f"{QUEUE_KEY}:intermediate") == 0 and redis.llen(QUEUE_KEY) == 0
            assert_recorded(redis, answer.headers["X-Job-Id"], "finished")
            if proxy._faults[-1].hit.is_set():
                break
        else:
            raise AssertionError("the fault never happened: the test proved nothing")
    finally:
        proxy.close()
