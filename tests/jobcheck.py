"""What Redis shows about one job after its end, checked the way RQ's own API reads it."""

from __future__ import annotations

from redis import Redis
from rq.job import Job
from rq.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.serializers import JSONSerializer

from common import keys
from tests.stack import wait_until

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
REGISTRY = {
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
    "stopped": FailedJobRegistry,
    "canceled": CanceledJobRegistry,
}


def fetch(redis: Redis, job_id: str) -> Job:
    """The job as RQ reads it."""
    return Job.fetch(job_id, connection=redis, serializer=JSONSerializer)


def assert_recorded(redis: Redis, job_id: str, status: str, queue: str = keys.queue_name(LLAMA)) -> Job:
    """The job ended in `status` (waits a little: the answer may leave before the record is
    written), sits in that status's registry only, and every key of it expires."""
    wait_until(lambda: fetch(redis, job_id).get_status().value == status, 5, f"job {job_id} {status}")
    job = fetch(redis, job_id)
    registry: BaseRegistry = REGISTRY[status](queue, connection=redis, serializer=JSONSerializer)
    assert job_id in registry.get_job_ids(cleanup=False), f"{job_id} not in the {status} registry"
    for other in {FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry} - {REGISTRY[status]}:
        assert job_id not in other(queue, connection=redis).get_job_ids(cleanup=False)
    started = StartedJobRegistry(queue, connection=redis)
    assert not any(j == job_id for j, _ in started.get_job_and_execution_ids(cleanup=False))
    if status in ("failed", "stopped"):
        result = job.latest_result()
        assert result is not None and result.type == Result.Type.FAILED and result.exc_string, result
    found = list(redis.scan_iter(f"*{job_id}*"))
    assert found, "no key names the job"
    for key in found:
        assert redis.ttl(key) > 0, f"{key!r} never expires"
    return job
