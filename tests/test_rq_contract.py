"""RQ's promises, kept by the runner's worker: one suite, run on a stock RQ worker and on ours.

Each scenario drives real worker processes against a real Redis, then reads what an operator
would see through RQ's own API, `rq info` and rq-dashboard's JSON. The two views must be equal,
and equal to what the scenario expects.

"ours" is the configuration that ships: `python -m worker` as the Procfile runs it (SlotWorker,
RunnerJob and its job guard, production's `on_taken`), on the runner's queue of a model, running
the runner's own job (`worker.jobs.generate`, a GenerateJob payload as the web writes it) against
a fake Ollama whose behaviour gives each outcome (an answer, an engine error, a long generation).
"rq" is RQ's own worker (`rq worker`: SimpleWorker, or the forking Worker where a job is stopped:
a SimpleWorker has no work horse to stop, rq/worker/base.py kill_horse is a no-op there). It
cannot run the runner's job (that runs only inside a runner worker process, on its engine), so
it runs stand-ins with the same outcomes (tests/rq_jobs.py). What differs by nature, the job
function's own return value and error, is checked per kind, then compared in kind.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.suspension import resume
from rq.utils import now
from rq.worker import Worker

from common import keys
from common.jobs import GenerateJob
from common.keys import GENERATE_JOB
from tests.client import call
from tests.conftest import RedisServer
from tests.fake_ollama import FakeOllama
from tests.redisproxy import RedisProxy
from tests.rq_jobs import add, boom, flaky, hold
from tests.stack import Process, Stack, free_port, wait_until
from tests.test_dashboard import dashboard_argv
from worker.runs import STOPPED_FAILURE

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
QUEUE = keys.queue_name(LLAMA)
LOGIN = ("operator", "contract-password")
KINDS = ("rq", "ours")
# The fake engine's pace: a job of the runner runs max_tokens / TOKENS_PER_S seconds.
TOKENS_PER_S = 20
# What RQ writes as a failure whatever the job function (ours writes the same).
RQ_FAILURES = {STOPPED_FAILURE, "Job was stuck in intermediate queue."}
RESULT, RAISED = "<the job function's result>", "<the job function's error>"
# What the fake engine answers where a stand-in fails (ours then fails the job with it).
ENGINE_ERROR = "contract: the engine fails this job"
# Where the runner's jobs publish their events (the channel of the web process that placed them).
REPLY_TO = "llmrunner:events:contract"


@dataclass
class Run:
    """One scenario on one kind of worker: its Redis, its queue, its engine, its worker processes."""

    kind: str
    stack: Stack
    redis: Redis
    queue: Queue
    engine: FakeOllama
    workers: list[Process] = field(default_factory=list)

    def start_worker(self, *, forking: bool = False, redis_url: str = "") -> Process:
        """Start a worker of this run's kind on the queue and wait until RQ lists it."""
        before = {w.name for w in Worker.all(connection=self.redis)}
        if self.kind == "ours":
            proc = self.stack.start_worker(REDIS_URL=redis_url or self.stack.redis_url, OLLAMA_URL=self.engine.url,
                                           VRAM_MB=24576)  # fmt: skip
        else:
            worker_class = "rq.worker.Worker" if forking else "rq.worker.SimpleWorker"
            # --worker-ttl 16: RQ then waits 1 s per dequeue (worker_ttl - 15), as SlotWorker does,
            # so both notice `rq suspend` as fast (rq/worker/base.py, dequeue_timeout).
            argv = [shutil.which("rq") or "rq", "worker", "-u", self.stack.redis_url, "-S", "json", "-w",
                    worker_class, "--worker-ttl", "16", QUEUE]  # fmt: skip
            proc = self.stack.spawn(f"{self.kind}-worker", argv, self.stack.env())
        wait_until(lambda: {w.name for w in Worker.all(connection=self.redis)} - before, 20, "the worker registered")
        self.workers.append(proc)
        return proc

    def job(self, func: Callable[..., Any], *args: Any, seconds: float = 0.1) -> Job:
        """A job (not saved) with the outcome of `func`, a stand-in: `func` itself for RQ's worker;
        for ours the runner's job, generating for `seconds`, failed by the engine where `func` fails."""
        if self.kind == "rq":
            return self.queue.create_job(func, args=args, result_ttl=300, failure_ttl=3600)
        if func in (boom, flaky):
            self.engine.set_behavior("*", status=500, error=ENGINE_ERROR)
        messages = [{"role": "user", "content": f"contract {func.__name__}"}]
        spec = GenerateJob(REPLY_TO, LLAMA, "llama3.1:8b", messages,
                           max(1, round(seconds * TOKENS_PER_S)), 0.7, 0.9, 40, False)  # fmt: skip
        return self.queue.create_job(GENERATE_JOB, args=(spec.to_payload(),), description=spec.describe(),
                                     timeout=-1, result_ttl=300, failure_ttl=3600)  # fmt: skip

    def enqueue(self, func: Callable[..., Any], *args: Any, seconds: float = 0.1) -> Job:
        """Enqueue it as RQ's API does."""
        return self.queue.enqueue_job(self.job(func, *args, seconds=seconds))

    def engine_recovers(self) -> None:
        """A failing stand-in's next run succeeds (`flaky` sees to it itself; ours: the engine answers again)."""
        if self.kind == "ours":
            self.engine.set_behavior("*", status=None, error=None)

    def status(self, job: Job) -> str:
        """The job's status now."""
        return job.get_status(refresh=True).value

    def wait_status(self, job: Job, status: str, timeout: float = 15) -> None:
        """Wait until the job is in `status`."""
        wait_until(lambda: self.status(job) == status, timeout, f"job {job.id} {status}")

    def wait_stoppable(self, job: Job, worker: Process) -> None:
        """Wait until the worker running `job` acts on a stop-job command: it listens on its command
        channel, and RQ's forking worker knows its work horse (it says so in its process title,
        rq/worker/worker_classes.py fork_work_horse, right after it keeps the horse's pid: before,
        a stop would kill the worker's own process group)."""
        name = Job.fetch(job.id, connection=self.redis, serializer=JSONSerializer).worker_name
        channel = f"rq:pubsub:{name}"
        wait_until(lambda: self.redis.pubsub_numsub(channel)[0][1] >= 1, 10, "the worker listening for commands")
        if self.kind == "rq":
            wait_until(lambda: ": Forked " in " ".join(psutil.Process(worker.pid).cmdline()), 10,
                       "the worker's work horse forked (in its process title: is setproctitle installed?)")  # fmt: skip


# --- scenarios: each returns the jobs it made, by label; the expected status of each label follows


def finished(run: Run) -> dict[str, Job]:
    run.start_worker()
    job = run.enqueue(add, 2, 3)
    run.wait_status(job, "finished")
    return {"add": job}


def failed(run: Run) -> dict[str, Job]:
    run.start_worker()
    job = run.enqueue(boom)
    run.wait_status(job, "failed")
    return {"boom": job}


def canceled(run: Run) -> dict[str, Job]:
    job = run.enqueue(add, 1, 1)
    job.cancel()
    run.start_worker()
    sentinel = run.enqueue(add, 0, 0)
    run.wait_status(sentinel, "finished")
    return {"canceled": job, "after": sentinel}


def stopped(run: Run) -> dict[str, Job]:
    worker = run.start_worker(forking=True)
    job = run.enqueue(hold, 30, seconds=30)
    run.wait_status(job, "started")
    run.wait_stoppable(job, worker)
    send_stop_job_command(run.redis, job.id, serializer=JSONSerializer)
    run.wait_status(job, "stopped")
    return {"stopped": job}


def suspended(run: Run) -> dict[str, Job]:
    """Suspended while busy: the running job finishes, the next one waits for `rq resume`.

    (A stock worker idle in its blocking dequeue takes one more job before it notices a
    suspension, rq/worker/base.py dequeue_job_and_maintain_ttl; SlotWorker notices within a
    second. The suite compares what both promise.)
    """
    run.start_worker()
    busy = run.enqueue(hold, 6, seconds=6)
    run.wait_status(busy, "started")
    assert subprocess.run(rq_cli("suspend", run), capture_output=True, timeout=30).returncode == 0
    job = run.enqueue(add, 4, 4)
    assert run.status(busy) == "started", "the scenario needs the worker busy when suspended"
    run.wait_status(busy, "finished")
    wait_until(lambda: [w.get_state() for w in Worker.all(connection=run.redis)] == ["suspended"], 5, "suspended")
    resumed_at = datetime.fromtimestamp(run.redis.time()[0], UTC)
    assert subprocess.run(rq_cli("resume", run), capture_output=True, timeout=30).returncode == 0
    run.wait_status(job, "finished")
    started = Job.fetch(job.id, connection=run.redis, serializer=JSONSerializer).started_at
    assert started is not None and started >= resumed_at, f"a suspended worker ({run.kind}) took a job"
    return {"busy": busy, "after-resume": job}


def killed_before_start(run: Run) -> dict[str, Job]:
    """The worker dies after taking the job off the queue and before recording its start."""
    if run.kind == "ours":
        first, proxy = _ours_stalled_at_start(run)
    else:
        first, proxy = _rq_paused_at_start(run), None
    try:
        job_id = run.redis.lrange(IntermediateQueue.get_intermediate_queue_key(run.queue.key), 0, -1)
        assert len(job_id) == 1 and run.redis.llen(run.queue.key) == 0, "the worker did not take the job"
        first.signal(9)
        first.popen.wait(10)
    finally:
        run.redis.execute_command("CLIENT", "UNPAUSE")
        if proxy is not None:
            proxy.close()
    job = Job.fetch(job_id[0].decode(), connection=run.redis, serializer=JSONSerializer)
    assert run.status(job) == "queued"
    # RQ gives a taken job a minute to start; then another worker's maintenance finds it.
    intermediate = IntermediateQueue(run.queue.key, run.redis)
    run.redis.set(intermediate.get_first_seen_key(job.id), now().timestamp() - 120)
    for dead in Worker.all(connection=run.redis):
        run.redis.srem("rq:workers", dead.key)
        run.redis.srem(f"rq:workers:{QUEUE}", dead.key)
        run.redis.delete(dead.key)
    run.start_worker()
    run.wait_status(job, "failed", 20)
    return {"recovered": job}


def _rq_paused_at_start(run: Run) -> Process:
    """RQ's worker, its start bookkeeping held back by a write pause right after its dequeue."""
    first = run.start_worker()
    wait_until(lambda: _blocked_clients(run.redis) >= 1, 10, "the worker waiting in its blocking dequeue")
    job = run.job(hold, 0.1)
    job.save()
    # Redis hands the id to the waiting worker as soon as it is pushed; the pause that follows in
    # the same batch holds the worker's next write (its start bookkeeping) while it is killed.
    with run.redis.pipeline(transaction=False) as pipe:
        run.queue.push_job_id(job.id, pipeline=pipe)
        pipe.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        pipe.execute()
    return first


def _ours_stalled_at_start(run: Run) -> tuple[Process, RedisProxy]:
    """Our worker through a proxy that holds its start bookkeeping (the script's first command
    takes the job off the intermediate list) once the take has moved the job there."""
    proxy = RedisProxy(int(run.stack.redis_url.rsplit(":", 1)[1].split("/")[0]))
    stalled = proxy.stall(b"LREM")
    first = run.start_worker(redis_url=proxy.url)
    job = run.job(hold, 0.1)
    job.save()
    run.queue.push_job_id(job.id)
    assert stalled.hit.wait(10), "the worker never started the job's bookkeeping"
    return first, proxy


def _blocked_clients(redis: Redis) -> int:
    return int(redis.info("clients")["blocked_clients"])


def emptied(run: Run) -> dict[str, Job]:
    jobs = {f"waiting-{i}": run.enqueue(add, i, i) for i in range(3)}
    result = subprocess.run([*rq_cli("empty", run), QUEUE], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    run.start_worker()
    sentinel = run.enqueue(add, 5, 5)
    run.wait_status(sentinel, "finished")
    return {**jobs, "after": sentinel}


def requeued(run: Run) -> dict[str, Job]:
    run.start_worker()
    job = run.enqueue(flaky, f"flaky:{run.kind}")
    run.wait_status(job, "failed")
    run.engine_recovers()
    result = subprocess.run([*rq_cli("requeue", run), "--queue", QUEUE, "--all"], capture_output=True, timeout=30)
    assert result.returncode == 0
    run.wait_status(job, "finished")
    return {"flaky": job}


SCENARIOS: dict[str, tuple[Callable[[Run], dict[str, Job]], dict[str, str]]] = {
    "finished": (finished, {"add": "finished"}),
    "failed": (failed, {"boom": "failed"}),
    "canceled": (canceled, {"canceled": "canceled", "after": "finished"}),
    "stopped": (stopped, {"stopped": "stopped"}),
    "suspend-resume": (suspended, {"busy": "finished", "after-resume": "finished"}),
    "killed-between-take-and-start": (killed_before_start, {"recovered": "failed"}),
    "rq-empty": (emptied, {"waiting-0": "gone", "waiting-1": "gone", "waiting-2": "gone", "after": "finished"}),
    "requeue": (requeued, {"flaky": "finished"}),
}


def rq_cli(command: str, run: Run) -> list[str]:
    return [shutil.which("rq") or "rq", command, "-u", run.stack.redis_url, "-S", "json"]


# --- what an operator sees


def registry_of(redis: Redis, job_id: str) -> str:
    for name, cls in (("finished", FinishedJobRegistry), ("failed", FailedJobRegistry),
                      ("canceled", CanceledJobRegistry), ("started", StartedJobRegistry)):  # fmt: skip
        if job_id in cls(QUEUE, connection=redis).get_job_ids(cleanup=False):
            return name
    return "none"


def api_view(redis: Redis, jobs: dict[str, Job]) -> dict[str, Any]:
    """Per job, what RQ's API says: status, registry, result or failure, whether its key expires."""
    view: dict[str, Any] = {}
    for label, job in jobs.items():
        if not redis.exists(job.key):
            view[label] = {"status": "gone"}
            continue
        fresh = Job.fetch(job.id, connection=redis, serializer=JSONSerializer)
        latest = fresh.latest_result()
        view[label] = {
            "status": fresh.get_status().value,
            "registry": registry_of(redis, job.id),
            "result": fresh.return_value(),
            "failure": (latest.exc_string or "").strip().splitlines()[-1] if latest and latest.exc_string else None,
            "expires": redis.ttl(job.key) > 0,
        }
    return view


def info_view(stack: Stack) -> list[str]:
    """`rq info --raw` on the queue, with each worker's name, host and pid left out."""
    result = subprocess.run([shutil.which("rq") or "rq", "info", "--raw", "-u", stack.redis_url, "-S", "json", QUEUE],
                            capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return sorted(re.sub(r"^worker .*\) ", "worker ", line) for line in result.stdout.splitlines())


def dashboard_view(base: str, jobs: dict[str, Job]) -> dict[str, Any]:
    """rq-dashboard's JSON: the queue's counts and each job's status and failure."""
    queues = call("GET", f"{base}/0/data/queues.json", auth=LOGIN, timeout=10).json()["queues"]
    view: dict[str, Any] = {"queue": [q for q in queues if q["name"] == QUEUE]}
    for label, job in jobs.items():
        answer = call("GET", f"{base}/0/data/job/{job.id}.json", auth=LOGIN, timeout=10)
        if answer.status_code != 200:
            view[label] = answer.status_code
            continue
        data = answer.json()
        view[label] = {"status": data["status"], "result": data["result"], "failed": bool(data["exc_info"])}
    for item in view["queue"]:
        item.pop("url", None)
    return view


def in_kind(kind: str, view: dict[str, Any]) -> dict[str, Any]:
    """The view with each job function's own result and error checked for this kind, then replaced
    by what they are (RQ's own failure texts stay: both kinds must write them alike)."""
    own_error = ENGINE_ERROR if kind == "ours" else "RuntimeError: "
    for job in [*view["api"].values(), *view["dashboard"].values()]:
        if not isinstance(job, dict) or "result" not in job:
            continue
        if job["result"] is not None:
            assert own_result(kind, job["result"]), f"{kind}: {job['result']!r} is not its job function's result"
            job["result"] = RESULT
        if job.get("failure") is not None and job["failure"] not in RQ_FAILURES:
            assert own_error in job["failure"], f"{kind}: {job['failure']!r} is not its job function's error"
            job["failure"] = RAISED
    return view


def own_result(kind: str, result: Any) -> bool:
    """Whether `result` is what this kind's job function returns: the runner's job summary, or a
    stand-in's value."""
    if kind == "ours":
        return isinstance(result, dict) and result.get("finish_reason") in ("stop", "length")
    return result in (2 + 3, 0 + 0, 4 + 4, 5 + 5, "held", "second run")


@pytest.fixture(scope="module")
def dashboard(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """rq-dashboard as the Procfile runs it (behind its login), on the session's Redis."""
    stack = Stack(str(tmp_path_factory.mktemp("dashboard")), redis_server.url)
    port = free_port()
    env = stack.env(RQ_DASHBOARD_USERNAME=LOGIN[0], RQ_DASHBOARD_PASSWORD=LOGIN[1], DASHBOARD_PORT=port)
    stack.spawn("dashboard", dashboard_argv(), env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: call("GET", f"{base}/0/data/queues.json", auth=LOGIN, timeout=2).status_code == 200, 20,
               "dashboard up")  # fmt: skip
    yield base
    stack.stop()


def observe(
    kind: str, scenario: Callable[[Run], dict[str, Job]], tmp: str, redis_url: str, base: str
) -> dict[str, Any]:
    redis = Redis.from_url(redis_url)
    redis.flushall()
    Path(tmp).mkdir(parents=True, exist_ok=True)
    stack = Stack(tmp, redis_url)
    engine = FakeOllama(tokens_per_s=TOKENS_PER_S).start()
    engine.set_behavior("*", reply_tokens=100_000)  # each job's max_tokens says how long it runs
    run = Run(kind, stack, redis, Queue(QUEUE, connection=redis, serializer=JSONSerializer), engine)
    # The web process that placed the runner's jobs reads their events (a worker stops a job
    # nobody reads: worker.readers).
    reader = redis.pubsub()
    reader.subscribe(**{REPLY_TO: lambda message: None})
    reading = reader.run_in_thread(sleep_time=0.05, daemon=True)
    try:
        jobs = scenario(run)
        # The worker's last state change after the job's end.
        wait_until(lambda: all(w.get_state() in ("idle", "suspended") for w in Worker.all(connection=redis)), 5,
                   "the workers idle")  # fmt: skip
        view = {"api": api_view(redis, jobs), "rq info": info_view(stack), "dashboard": dashboard_view(base, jobs)}
        return in_kind(kind, view)
    except AssertionError as exc:
        raise AssertionError(f"{kind}: {exc}\n{stack.logs()}") from None
    finally:
        stack.stop()
        engine.stop()
        reading.stop()
        reader.close()
        resume(redis)
        redis.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_slot_worker_shows_what_a_stock_rq_worker_shows(
    name: str, dashboard: str, redis_server: RedisServer, tmp_path: Any
) -> None:
    scenario, expected = SCENARIOS[name]
    views = {kind: observe(kind, scenario, str(tmp_path / kind), redis_server.url, dashboard) for kind in KINDS}
    assert {label: job["status"] for label, job in views["rq"]["api"].items()} == expected
    assert views["ours"] == views["rq"]
