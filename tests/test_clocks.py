"""A worker whose host clock is wrong judges ages and writes RQ's registry scores on Redis's clock.

The worker runs under libfaketime (its whole process sees a clock 10 minutes ahead; monotonic
time is left alone), the web and Redis on the true clock. The web stamps and counts with Redis
TIME; a worker comparing its own clock would refuse every fresh job as stale and write expiry
scores ten minutes late (its running jobs would look alive long after a crash).
"""

from __future__ import annotations

import pytest
from redis import Redis

from common.keys import queue_name
from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.rawclient import RawRequest
from tests.stack import Stack, wait_until
from tests.test_faults import LLAMA, body, start
from worker.starts import EXECUTION_TTL_S

pytestmark = pytest.mark.e2e
libfaketime = pytest.importorskip("libfaketime")

SKEW_S = 600


def skewed_env() -> dict[str, str]:
    """The environment that runs a process on a clock SKEW_S ahead (libfaketime's LD_PRELOAD)."""
    _, env = libfaketime.get_reload_information()
    return {**env, "FAKETIME": f"+{SKEW_S}"}


def test_a_worker_with_a_fast_clock_serves_fresh_jobs_and_scores_on_redis_time(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis
) -> None:
    fake_ollama.set_behavior("*", tokens_per_s=20, reply_tokens=60)
    start(stack, fake_ollama, QUEUE_TIMEOUT_S=30, **skewed_env())
    answer = call("POST", f"{stack.web_url}/llm", json=body("fresh", max_tokens=3))
    assert answer.status_code == 200, answer.text
    request = RawRequest(f"{stack.web_url}/llm", body("scored", stream=True))
    request.read_until(b"data: ")
    registry = f"rq:wip:{queue_name(LLAMA)}"
    # The start is recorded once Started (sent with the first tokens) is in Redis: wait for it.
    entries = wait_until(lambda: redis.zrange(registry, 0, -1, withscores=True), 10, "the job's execution")
    ((_, score),) = entries
    redis_now = redis.time()[0]
    assert redis_now < score <= redis_now + EXECUTION_TTL_S + 2, f"expiry {score - redis_now:+.0f} s from Redis's now"
    request.read_all(timeout=15)
    assert read_stream(request.body_lines()).finish_reason == "stop"
