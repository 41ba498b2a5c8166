"""The one-round-trip guarded bookkeeping every job start and end goes through, on a real Redis."""

from __future__ import annotations

from redis import Redis
from redis.client import Pipeline

from common.job_state import MISSING, Guarded, commands, run_guarded, transition


def _job(redis: Redis, key: str, status: str) -> None:
    redis.hset(key, mapping={"status": status, "data": "x"})


def test_commands_record_what_a_writer_issues_and_send_nothing(redis: Redis) -> None:
    def write(pipe: Pipeline) -> None:
        pipe.hset("rq:job:a", mapping={"status": "started", "worker_name": "w"})
        pipe.expire("rq:job:a", 60)

    recorded = commands(redis, write)
    assert [c[0] for c in recorded] == ["HSET", "EXPIRE"]
    assert not redis.exists("rq:job:a")


def test_each_block_runs_only_for_a_job_in_an_expected_status(redis: Redis) -> None:
    _job(redis, "rq:job:queued", "queued")
    _job(redis, "rq:job:canceled", "canceled")
    found = run_guarded(
        redis,
        [
            Guarded("rq:job:queued", {"queued"}, [("HSET", "rq:job:queued", "status", "started")]),
            Guarded("rq:job:canceled", {"queued"}, [("HSET", "rq:job:canceled", "status", "started")]),
            Guarded("rq:job:gone", {"queued"}, [("HSET", "rq:job:gone", "status", "started")]),
        ],
        first=[("RPUSH", "before", "1")],
        last=[("RPUSH", "after", "1")],
    )
    assert found == [None, "canceled", MISSING]
    assert redis.hget("rq:job:queued", "status") == b"started"
    assert redis.hget("rq:job:canceled", "status") == b"canceled"
    assert not redis.exists("rq:job:gone"), "a job that is gone is not brought back"
    assert redis.llen("before") == 1 and redis.llen("after") == 1


def test_a_transition_writes_once_and_the_second_writer_sees_the_first_ones_end(redis: Redis) -> None:
    _job(redis, "rq:job:j", "started")

    def finish(pipe: Pipeline) -> None:
        pipe.hset("rq:job:j", "status", "finished")

    def fail(pipe: Pipeline) -> None:
        pipe.hset("rq:job:j", "status", "failed")

    assert transition(redis, "rq:job:j", {"started"}, finish) is None
    assert transition(redis, "rq:job:j", {"started"}, fail) == "finished"
    assert redis.hget("rq:job:j", "status") == b"finished"


def test_a_restarted_redis_without_the_script_gets_it_again(redis: Redis) -> None:
    _job(redis, "rq:job:k", "queued")
    redis.script_flush()
    found = run_guarded(redis, [Guarded("rq:job:k", {"queued"}, [("HSET", "rq:job:k", "status", "started")])])
    assert found == [None]
    assert redis.hget("rq:job:k", "status") == b"started"
