"""A request whose events cannot be replayed (Redis unreachable right after the web's subscription
came back) still ends by its deadlines: the worker's silence, the shutdown's grace, its client
leaving."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from common.outage import OUTAGE_S
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.rawclient import RawRequest
from tests.redisproxy import RedisProxy
from tests.stack import Stack, wait_until
from tests.test_faults import body

pytestmark = pytest.mark.e2e

GRACE_S = 1.0
SILENCE_S = 2.0
# What ending a stream may take beyond its deadline: the next tick, a replay attempt that fails
# fast (connections are refused), the cancel's attempt, the final chunk.
MARGIN_S = 3.0


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisProxy]:
    made = RedisProxy(redis_server.port)
    yield made
    made.close()


@pytest.mark.parametrize("deadline", ["shutdown", "worker_silence", "client_gone"])
def test_a_request_whose_replay_fails_ends_by_its_deadline(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, proxy: RedisProxy, deadline: str
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=1000)
    silence = 60.0 if deadline == "shutdown" else SILENCE_S
    web = stack.start_web(OLLAMA_URL=fake_ollama.url, REDIS_URL=proxy.url, SHUTDOWN_GRACE_S=GRACE_S,
                          WORKER_SILENCE_S=silence)  # fmt: skip
    stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=24576)  # straight to Redis: it goes on
    stream = RawRequest(f"{stack.web_url}/llm", body("outage", stream=True))
    stream.read_until(b"data: ")
    # The web can no longer read a job's backlog; then its subscription is cut and comes back, so
    # it must replay what it missed, and cannot.
    proxy.refuse((b"XRANGE",))
    assert redis.client_kill_filter(_type="pubsub") >= 1
    wait_until(lambda: "cannot replay its events yet" in web.output(), 10, "a replay that failed")
    proxy.refuse((b"",))  # now Redis is unreachable from the web altogether
    if deadline == "client_gone":
        stream.close()
        cut = time.monotonic()
        # Noticed, and its end recorded (the cancel itself cannot reach Redis): the job's log line.
        wait_until(lambda: "outcome=cancelled reason=client_gone" in web.output(), MARGIN_S, "the job's end")
        assert time.monotonic() - cut < MARGIN_S
        return
    if deadline == "shutdown":
        web.signal(signal.SIGTERM)
    cut = time.monotonic()
    stream.read_all(timeout=20)
    took = time.monotonic() - cut
    result = read_stream(stream.body_lines())
    assert result.finish_reason == "error" and result.saw_done_marker, stream.received[-300:]
    # A web that hears nobody (its subscription is down too) does not blame the worker for the
    # first OUTAGE_S (a restart or failover of Redis, which the worker's publisher rides out).
    allowed = GRACE_S if deadline == "shutdown" else OUTAGE_S + silence
    assert took < allowed + MARGIN_S, f"ended {took:.1f} s after the cut"
    if deadline == "shutdown":
        web.popen.wait(timeout=10)  # and the web stopped within its grace
