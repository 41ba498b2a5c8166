"""RQ 3's job webhooks: a Redis writer must not make a GPU host send HTTP, nor stall its job taking.

RQ sends a job's `webhooks` (rq/webhook.py Webhook.send, through Job.send_webhooks) from
StartedJobRegistry.cleanup (abandoned jobs, rq/registry.py), from the worker's failure, retry and
success handlers (rq/worker/base.py handle_job_failure, handle_job_retry, perform_job) and from
Queue.run_sync (not a worker path). A runner worker must send none on any of them: a job that
carries webhooks is refused like a foreign function; a planted abandoned job and a job stuck in
the intermediate list are recorded failed by RQ's maintenance without a request. The sink
accepts requests and never answers, as a hostile one would: a request would also stall its sender.

RQ's registry cleanup also runs where jobs are only looked at, with RQ's plain Job: `rq info`
(and rq-dashboard before 0.9). Those of the runner's processes turn RQ's job hooks off
(ops.job_hooks): the dashboard always, `rq info` through the runner's settings module for it
(`-c ops.rq_settings`). There the sink
answers, after it recorded the request: a request sent is recorded before its sender goes on.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from redis import Redis
from rq import Callback, Queue
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
from tests.stack import REPO, Stack, free_port, wait_until
from tests.test_dashboard import PASSWORD, USER, dashboard_argv
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


class AnsweringSink:
    """A local HTTP server that records each request, then answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        requests = self.requests

        class Record(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._record()

            def do_POST(self) -> None:
                self._record()

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                requests.append((self.command, self.path, self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


HOOKED = "hooks"  # a queue name rq-dashboard's routes take as one path segment


def plant_abandoned(redis: Redis, sink_url: str, tmp_path: Path) -> Job:
    """A STARTED job whose execution expired long ago, naming webhooks and a failure callback that
    leaves a file behind if it is ever imported or called (tests/canary.py)."""
    queue = Queue(HOOKED, connection=redis, serializer=JSONSerializer)
    job = queue.create_job(GENERATE_JOB, args=({"any": "payload"},), job_id=uuid.uuid4().hex,
                           description=str(tmp_path / "called"), on_failure=Callback("tests.canary.mark"),
                           webhooks=[Webhook(sink_url, "failed", timeout=5)])  # fmt: skip
    job.save()
    job.set_status(JobStatus.STARTED)
    redis.zadd(StartedJobRegistry(HOOKED, connection=redis).key, {f"{job.id}:planted": 1})
    return job


def test_the_dashboard_never_sends_a_webhook_nor_calls_a_callback(stack: Stack, redis: Redis, tmp_path: Path) -> None:
    """rq-dashboard as the Procfile runs it, browsed everywhere an abandoned job shows; each page's
    answer comes after any webhook it sent (the sink records before it answers). rq-dashboard 0.8
    (in the range the runner accepts) cleans the registries it counts and lists, and sent it
    before the dashboard turned RQ's job hooks off; 0.9 no longer cleans while browsing."""
    sink = AnsweringSink()
    try:
        job = plant_abandoned(redis, sink.url, tmp_path)
        port = free_port()
        env = stack.env(RQ_DASHBOARD_USERNAME=USER, RQ_DASHBOARD_PASSWORD=PASSWORD, DASHBOARD_PORT=port,
                        CANARY_IMPORTED=tmp_path / "imported")  # fmt: skip
        stack.spawn("dashboard", dashboard_argv(), env)
        base, login = f"http://127.0.0.1:{port}", (USER, PASSWORD)
        wait_until(lambda: call("GET", f"{base}/0/data/queues.json", auth=login, timeout=2).status_code == 200, 20,
                   "dashboard up")  # fmt: skip
        pages = ["/", "/0/view/workers", f"/0/view/job/{job.id}", f"/0/data/job/{job.id}.json",
                 "/0/data/queues.json", "/0/data/workers.json"]  # fmt: skip
        for registry in ("queued", "started", "failed", "finished", "canceled", "deferred", "scheduled"):
            pages += [f"/0/view/jobs/{HOOKED}/{registry}/8/asc/1", f"/0/data/jobs/{HOOKED}/{registry}/8/asc/1.json"]
        for page in pages:
            assert call("GET", f"{base}{page}", auth=login, timeout=30).status_code == 200, page
        assert sink.requests == []
        assert not (tmp_path / "imported").exists() and not (tmp_path / "called").exists()
    finally:
        sink.close()


@pytest.mark.parametrize("settings", [False, True], ids=["rq-alone", "with-the-switch"])
def test_rq_info_sends_a_planted_jobs_webhook_unless_its_settings_turn_them_off(
    stack: Stack, redis: Redis, tmp_path: Path, settings: bool
) -> None:
    """`rq info` cleans every queue's registries first (rq/cli/cli.py info): alone, RQ sends the
    abandoned job's webhook and calls its callback (why the switch exists); given the settings
    module, ops.rq_settings (`-c`, and no `-u`: RQ's CLI would not import it), the job is failed
    just the same, and nothing is sent nor called."""
    sink = AnsweringSink()
    try:
        job = plant_abandoned(redis, sink.url, tmp_path)
        env = stack.env(CANARY_IMPORTED=tmp_path / "imported")
        where = ["-c", "ops.rq_settings"] if settings else ["-u", stack.redis_url]
        argv = [shutil.which("rq") or "rq", "info", *where, "-S", "json", HOOKED]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 0, done.stderr
        fetched = Job.fetch(job.id, connection=redis, serializer=JSONSerializer)
        assert fetched.get_status() == JobStatus.FAILED, "RQ's cleanup did not run: the test proved nothing"
        if settings:
            assert sink.requests == []
            assert not (tmp_path / "imported").exists() and not (tmp_path / "called").exists()
        else:
            assert [(method, path) for method, path, _ in sink.requests] == [("GET", "/hook")]
            assert (tmp_path / "called").read_text() == "ran"
    finally:
        sink.close()
