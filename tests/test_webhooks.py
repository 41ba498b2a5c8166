"""RQ 3's job webhooks: a Redis writer must not make a GPU host send HTTP, nor stall its job taking.

RQ sends a job's `webhooks` (rq/webhook.py Webhook.send, through Job.send_webhooks) from
StartedJobRegistry.cleanup (abandoned jobs, rq/registry.py), from the worker's failure, retry and
success handlers (rq/worker/base.py handle_job_failure, handle_job_retry, perform_job) and from
Queue.run_sync (not a worker path). A runner worker must send none on any of them: a job that
carries webhooks is refused like a foreign function; a planted abandoned job and a job stuck in
the intermediate list are recorded failed by RQ's maintenance without a request. The sink
accepts requests and never answers, as a hostile one would: a request would also stall its sender.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.webhook import Webhook

from common.jobs import GenerateJob
from common.keys import GENERATE_JOB, queue_name
from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.stack import Stack, free_port, wait_until
from tests.test_faults import LLAMA, body, record_for, start
from tests.test_jobguard import failed_with

pytestmark = pytest.mark.e2e


class Sink:
    """A local HTTP listener that records every connection's bytes and never answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._held.append(conn)
            with contextlib.suppress(OSError):
                self.received.append(conn.recv(65536))

    def close(self) -> None:
        """Stop listening and drop what it holds."""
        self._server.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A webhook sink that must see nothing."""
    listener = Sink()
    yield listener
    listener.close()


def runner_job(queue: Queue, prompt: str, hooks: list[Webhook]) -> Job:
    """A well-formed runner job (the web's payload) carrying webhooks, saved but not queued."""
    spec = GenerateJob("llmrunner:events:nobody", LLAMA, "llama3.1:8b", [{"role": "user", "content": prompt}],
                       5, 0.7, 0.9, 40, False)  # fmt: skip
    job = queue.create_job(GENERATE_JOB, args=(spec.to_payload(),), job_id=uuid.uuid4().hex, timeout=-1,
                           webhooks=hooks, failure_ttl=3600)  # fmt: skip
    job.save()
    return job


def test_no_path_sends_a_webhook_nor_stalls_job_taking(
    stack: Stack, fake_ollama: FakeOllama, redis: Redis, sink: Sink
) -> None:
    hooks = [Webhook(sink.url, "failed", method="POST", timeout=60), Webhook(sink.url, "finished", timeout=60)]
    queue = Queue(queue_name(LLAMA), connection=redis, serializer=JSONSerializer)
    # Abandoned: STARTED, its execution expired long ago (StartedJobRegistry.cleanup fails it).
    abandoned = runner_job(queue, "abandoned", hooks)
    abandoned.set_status(JobStatus.STARTED)
    redis.zadd(StartedJobRegistry(queue.name, connection=redis).key, {f"{abandoned.id}:planted": 1})
    # Stuck between take and start for two minutes (IntermediateQueue.cleanup → handle_job_failure).
    stuck = runner_job(queue, "stuck", hooks)
    intermediate = IntermediateQueue(queue.key, redis)
    redis.rpush(intermediate.key, stuck.id)
    redis.set(intermediate.get_first_seen_key(stuck.id), now().timestamp() - 120)

    start(stack, fake_ollama, web_env={"QUEUE_TIMEOUT_S": 10})
    # Queued with webhooks: refused like a foreign function, never run.
    carrying = runner_job(queue, "carrying webhooks", hooks)
    queue.push_job_id(carrying.id)
    assert "it names webhooks" in failed_with(redis, carrying)
    assert record_for(fake_ollama, "carrying webhooks") is None

    wait_until(lambda: Job.fetch(abandoned.id, connection=redis, serializer=JSONSerializer).get_status()
               == JobStatus.FAILED, 20, "the abandoned job failed by RQ's cleanup")  # fmt: skip
    wait_until(lambda: Job.fetch(stuck.id, connection=redis, serializer=JSONSerializer).get_status()
               == JobStatus.FAILED, 20, "the stuck job failed by RQ's cleanup")  # fmt: skip
    # The maintenance pass is over once RQ released its lock (after both cleanups, and after any
    # webhook it would have sent: Webhook.send is synchronous).
    wait_until(lambda: not redis.exists(queue.registry_cleaning_key), 20, "RQ's maintenance finished")
    # Job taking went on meanwhile, and goes on.
    answer = call("POST", f"{stack.web_url}/llm", json=body("still served", max_tokens=3))
    assert answer.status_code == 200, answer.text
    assert sink.received == []


def test_a_stalled_maintenance_never_stalls_job_taking(redis: Redis) -> None:
    """In-process: RQ's maintenance hangs (a webhook that never answers, a huge registry); jobs are
    still taken (here a foreign job, taken and refused: proof it left the queue)."""
    from worker.active import ActiveJobs
    from worker.slots import SlotWorker

    queue = Queue(queue_name(LLAMA), connection=redis, serializer=JSONSerializer)
    worker = SlotWorker([queue.name], connection=redis, name="stall-test", slots=1, active=ActiveJobs(), grace_s=1)
    inside, release = threading.Event(), threading.Event()

    def hangs() -> None:
        inside.set()
        release.wait(30)

    worker.run_maintenance_tasks = hangs  # type: ignore[method-assign]
    worker.register()
    worker.set_queue_order([queue.name])
    worker.maintenance.start()
    try:
        assert inside.wait(10), "the maintenance never ran"
        job = queue.enqueue("os.getcwd")
        taker = threading.Thread(target=worker._fill, args=(1,), daemon=True)
        taker.start()
        assert "this worker runs only" in failed_with(redis, job)
    finally:
        release.set()
        worker.maintenance.stop()
