"""A job on a runner queue that names any other function is failed by the worker, never run."""

from __future__ import annotations

import os
from pathlib import Path

from redis import Redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from common.keys import GENERATE_JOB, queue_name
from common.models import DEFAULT_MODELS, parse_models
from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.stack import Stack, wait_until
from worker.active import ActiveJobs
from worker.slots import SlotWorker

MODEL = parse_models(DEFAULT_MODELS)[0].model_id


def failed_with(redis: Redis, job: Job) -> str:
    """The failure text RQ recorded for a job, once it is in its queue's FailedJobRegistry."""
    registry = FailedJobRegistry(job.origin, connection=redis, serializer=job.serializer)
    wait_until(lambda: job.id in registry.get_job_ids(), 20, f"job {job.id} in the failed registry")
    fetched = Job.fetch(job.id, connection=redis, serializer=job.serializer)
    assert fetched.get_status() == JobStatus.FAILED
    result = fetched.latest_result()
    assert result is not None and result.exc_string is not None
    return result.exc_string


def test_jobs_naming_other_functions_are_failed_not_run(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, tmp_path: Path
) -> None:
    imported = tmp_path / "imported"
    worker = stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=24576, CANARY_IMPORTED=imported)
    json_queue = Queue(queue_name(MODEL), connection=redis, serializer=JSONSerializer)
    pickle_queue = Queue(queue_name(MODEL), connection=redis)  # RQ's default serializer: pickle
    marks = [tmp_path / f"ran-{i}" for i in range(5)]

    by_name = json_queue.enqueue("os.system", f"touch {marks[0]}")
    by_pickle = pickle_queue.enqueue(os.system, f"touch {marks[1]}")
    # The runner's own function, with a callback RQ would import and call after it.
    with_callback = json_queue.enqueue(
        GENERATE_JOB, {"not": "a job"}, on_failure=Callback("os.system"), on_success=Callback("os.system")
    )
    by_kwargs = json_queue.enqueue("subprocess.run", args=([f"touch {marks[3]}"],), kwargs={"shell": True})
    importable = json_queue.enqueue("tests.canary.mark", str(marks[4]))  # on the worker's path

    assert "this worker runs only worker.jobs.generate" in failed_with(redis, by_name)
    assert "'os.system'" in failed_with(redis, by_name)
    assert "not the runner's JSON job format" in failed_with(redis, Job.fetch(by_pickle.id, connection=redis))
    assert "callbacks (os.system, os.system)" in failed_with(redis, with_callback)
    assert "'subprocess.run'" in failed_with(redis, by_kwargs)
    assert "'tests.canary.mark'" in failed_with(redis, importable)
    assert not any(mark.exists() for mark in marks) and not imported.exists()
    log = worker.output()
    for job in (by_name, by_pickle, with_callback, by_kwargs, importable):
        assert f"job {job.id} on {queue_name(MODEL)} refused, not run" in log

    # The worker still serves the runner's own jobs.
    stack.start_web(OLLAMA_URL=fake_ollama.url)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    answer = call("POST", f"{stack.web_url}/llm", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]


def test_registry_cleanup_never_calls_a_planted_jobs_callback(redis: Redis, tmp_path: Path) -> None:
    """RQ's maintenance calls the failure callback of each abandoned job it finds; ours calls none."""
    mark = tmp_path / "callback-ran"
    queue = Queue(queue_name(MODEL), connection=redis, serializer=JSONSerializer)
    planted = queue.enqueue(GENERATE_JOB, {}, description=str(mark), on_failure=Callback("tests.canary.mark"))
    queue.remove(planted)
    planted.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queue.name, connection=redis, serializer=JSONSerializer)
    redis.zadd(registry.key, {f"{planted.id}:planted": 1})  # its execution expired long ago
    worker = SlotWorker([queue.name], connection=redis, name="guard-test", slots=1, active=ActiveJobs(), grace_s=1)
    worker.run_maintenance_tasks()  # type: ignore[no-untyped-call]
    assert Job.fetch(planted.id, connection=redis, serializer=JSONSerializer).get_status() == JobStatus.FAILED
    assert not mark.exists()
    # Plain RQ would have run it: the test plants a callback RQ does call.
    tests_canary_mark = Job.fetch(planted.id, connection=redis, serializer=JSONSerializer).failure_callback
    assert tests_canary_mark is not None
    tests_canary_mark(planted, redis)
    assert mark.read_text() == "ran"
