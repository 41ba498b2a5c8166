"""Writes acknowledged by a replica (common.acks): WAIT in the same round trip, and a pause when
no replica answers, against real redis-servers."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from common.acks import Acks
from tests.sentinel_cluster import SentinelCluster
from web.placement import PLACE_SCRIPT

pytestmark = pytest.mark.e2e


def place(acks: Acks, redis: Redis) -> str:
    """Place a job with the web's own script through `acks`; the job hash's key."""
    job = uuid.uuid4().hex
    keys = ["rq:queue:q", "rq:wip:q", f"rq:job:{job}", "rq:queues"]
    assert acks.script(redis.register_script(PLACE_SCRIPT), keys, [-1, 60, job, 0, "status", "queued"])[0] == 1
    return keys[2]


def waits(redis: Redis) -> int:
    return int(redis.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Redis, Redis]]:
    cluster = SentinelCluster(Path(tmp_path_factory.mktemp("pair")))
    try:
        master, replica = cluster.start_nodes()
        yield cluster.node_client(master.port), cluster.node_client(replica.port)
    finally:
        cluster.stop()


def test_a_placement_is_on_the_replica_when_it_returns(pair: tuple[Redis, Redis]) -> None:
    master, replica = pair
    acks = Acks(1, 1000)
    place(acks, master)  # the script gets cached (its first EVALSHA is answered NOSCRIPT, then sent again)
    before = waits(master)
    for _ in range(20):
        key = place(acks, master)
        assert replica.exists(key), "WAIT returned before the replica had the job"
    assert waits(master) == before + 20 and acks.active


def test_without_replicas_to_wait_for_there_is_no_wait(redis: Redis) -> None:
    redis.config_resetstat()
    place(Acks(0, 1000), redis)
    assert waits(redis) == 0


def test_no_replica_answering_pauses_waiting(redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    redis.script_load(PLACE_SCRIPT)
    redis.config_resetstat()
    acks = Acks(1, 20)  # the session's Redis has no replica: the first WAIT times out
    with caplog.at_level(logging.WARNING, logger="common.acks"):
        place(acks, redis)
        place(acks, redis)
    assert waits(redis) == 1, "after a WAIT that timed out, the next write does not wait"
    assert not acks.active
    assert "0 of 1 replica(s) acknowledged within 20 ms" in caplog.text


def test_the_wait_cost_benchmark_measures_placements_with_and_without_a_replica(redis_server: object) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.wait_cost", "--n", "20"], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "with WAIT 1" in done.stdout and "no WAIT timed out" in done.stdout, done.stdout
