"""Redis Sentinel failover under live traffic, with real processes: the master is SIGKILLed while
20 streams run and new requests keep arriving.

What a client may see for a stream in flight: its exact text. Events replication lost (the old
master took them and never passed them on) leave a hole the web finds when it replays the job's
backlog from the new master, or a silence: the web then carries the answer on with a continuation
job from where its client's text stopped (web.continuation; the fake's llama3.1 template leaves
the answer open, so it can be continued), and the text is exact all the same. The error ending
(a final chunk with finish_reason "error") is a failure here: never a gap nor a repeat.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, Worker
from rq.intermediate_queue import IntermediateQueue
from rq.registry import StartedJobRegistry

from common import keys
from common.fleet import READY, read_fleet
from common.redis_client import make_redis
from tests.client import call
from tests.continuation_stack import chain, links
from tests.failover_traffic import LLAMA, Outcome, Traffic, describe, expected_text
from tests.fake_ollama import FakeOllama
from tests.sentinel_cluster import MASTER_NAME, Certs, SentinelCluster
from tests.stack import REPO, Stack, free_port, wait_until
from tests.test_dashboard import PASSWORD as DASHBOARD_PASSWORD
from tests.test_dashboard import USER, dashboard_argv

# Each test starts a Sentinel deployment, the runner and 150 requests: about 35 s on 2 busy cores.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STREAMS = 20
STREAM_TOKENS = 90
TOKENS_PER_S = 15.0
# Streams of 2 to 6 s: some end while Redis has no master, the others after the promotion.
STREAM_LENGTHS = [30 + 3 * i for i in range(STREAMS)]
STEADY_EVERY_S = 0.1
STEADY_TOKENS = 4
SLOTS = 16  # per worker: the 20 streams and the steady requests all find a slot
# New requests are served again this soon after Sentinel's promotion (+switch-master).
RECOVERY_S = 5.0
PASSWORD = "node-Pass_word-1"
SENTINEL_PASSWORD = "sentinel-Pass_word-2"


@pytest.fixture
def fakes() -> Iterator[list[FakeOllama]]:
    """One engine per worker, as one Ollama per GPU."""
    with FakeOllama(slots=SLOTS).start() as one, FakeOllama(slots=SLOTS).start() as two:
        for fake in (one, two):
            fake.set_behavior("*", tokens_per_s=TOKENS_PER_S, reply_tokens=STREAM_TOKENS)
        yield [one, two]


def start_runner(tmp_path: Path, cluster: SentinelCluster, fakes: list[FakeOllama]) -> Stack:
    """Web (gunicorn) and two workers, configured only through the Sentinel variables."""
    stack = Stack(str(tmp_path), cluster.url)
    stack.redis = make_redis(cluster.target(), max_connections=8)
    env = cluster.env()
    stack.start_web(OLLAMA_URL=fakes[0].url, **env)
    for fake in fakes:
        stack.start_worker(OLLAMA_URL=fake.url, OLLAMA_NUM_PARALLEL=SLOTS, VRAM_MB=65536, **env)
    return stack


def check_text(outcome: Outcome) -> str | None:
    """What is wrong with an answer's text, or None: a 200 is the exact text, whatever the failover
    lost of its events (a continuation carries the answer on)."""
    tokens = STREAM_TOKENS if outcome.max_tokens > STREAM_TOKENS else outcome.max_tokens
    expected = expected_text(outcome.prompt, tokens)
    if outcome.status != 200:
        return None
    if outcome.finish_reason == "error":
        return f"{outcome.tag}: the error ending after {outcome.text!r}: not carried on by a continuation"
    return None if outcome.text == expected else f"{outcome.tag}: {outcome.text!r} != {expected!r}"


def nothing_lingers(redis: Redis) -> bool:
    """No job waits in the model's queue or its intermediate list, and none counts as started."""
    queue = Queue(keys.queue_name(LLAMA), connection=redis)
    started = StartedJobRegistry(queue.name, connection=redis)
    intermediate = IntermediateQueue.get_intermediate_queue_key(queue.key)
    return redis.llen(queue.key) == 0 and redis.llen(intermediate) == 0 and started.count == 0


def rq_info_workers(stack: Stack, cluster: SentinelCluster) -> set[str]:
    """The workers RQ's own `rq info` lists, configured by ops/rq_settings.py from the runner's variables."""
    argv = [sys.executable, "-m", "rq.cli", "info", "-c", "ops.rq_settings", "--only-workers", "--raw"]
    done = subprocess.run(argv, env=stack.env(**cluster.env()), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return {line.split()[1] for line in done.stdout.splitlines() if line.startswith("worker ")}


def run_doctor(stack: Stack, cluster: SentinelCluster, fake: FakeOllama) -> str:
    """What `llm-runner doctor` prints, configured only through the Sentinel variables."""
    argv = [sys.executable, "-m", "ops", "doctor"]
    env = stack.env(**cluster.env(), OLLAMA_URL=fake.url)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=REPO).stdout


def dashboard_workers(stack: Stack, cluster: SentinelCluster) -> set[str]:
    """The workers `llm-runner dashboard` (rq-dashboard itself) shows."""
    port = free_port()
    env = stack.env(**cluster.env(), RQ_DASHBOARD_USERNAME=USER, RQ_DASHBOARD_PASSWORD=DASHBOARD_PASSWORD,
                    DASHBOARD_PORT=port)  # fmt: skip
    stack.spawn("dashboard", dashboard_argv(), env)
    url = f"http://127.0.0.1:{port}/0/data/workers.json"
    found = wait_until(lambda: call("GET", url, auth=(USER, DASHBOARD_PASSWORD), timeout=5).json(), 30, "dashboard")
    return {worker["name"] for worker in found["workers"]}


def failover_under_traffic(tmp_path: Path, cluster: SentinelCluster, fakes: list[FakeOllama]) -> None:
    """Kill the master during 20 streams and a steady rate of requests; assert what item 2 promises."""
    stack = start_runner(tmp_path, cluster, fakes)
    traffic = Traffic(stack.web_url)
    try:
        streams = [traffic.send("stream", stream=True, max_tokens=n) for n in STREAM_LENGTHS]
        for outcome in streams:  # all in flight: each has had a token
            assert outcome.tokens.wait(30), f"{outcome.tag} got no token: {outcome.error}\n{stack.logs()}"
        traffic.start_steady(STEADY_EVERY_S, STEADY_TOKENS)
        killed_at, old_port = cluster.kill_master()
        switched_at, new_port = cluster.wait_switch()
        assert new_port != old_port
        # Requests keep coming for a while after the promotion.
        time.sleep(max(0.0, switched_at + RECOVERY_S + 2.0 - time.monotonic()))
        traffic.stop_steady()
        traffic.wait_all(60)
        origin = switched_at
        report = describe(traffic.outcomes, origin)
        print(f"master killed at {killed_at - origin:+.2f} s, +switch-master at 0")
        print(report)

        unanswered = [o for o in traffic.outcomes if not o.answered()]
        assert not unanswered, f"unanswered:\n{describe(unanswered, origin)}\n{stack.logs()}"
        wrong = [why for o in traffic.outcomes if (why := check_text(o)) is not None]
        assert not wrong, "\n".join(wrong) + f"\n{report}"
        # A request that came while Redis had no master waited for the new one; at worst (a failover
        # slower than the runner waits) it was told "insufficient capacity", which go-livepeer's
        # gateway takes as no room here and retries elsewhere, keeping this orchestrator.
        refused = [o for o in traffic.outcomes if o.status != 200]
        assert all(o.status == 500 and o.error.startswith("insufficient capacity") for o in refused), describe(
            refused, origin
        )
        late = [o for o in traffic.of("steady") if o.sent_at >= switched_at + RECOVERY_S]
        assert late, "no request was sent after the recovery deadline"
        failed_late = [o for o in late if o.status != 200 or o.finish_reason == "error"]
        assert not failed_late, f"not served {RECOVERY_S:g} s after the promotion:\n{describe(failed_late, origin)}"
        master = cluster.master()
        linked = links(master)
        chains = {o.tag: chain(master, o.job_id, linked) for o in traffic.outcomes if o.status == 200}
        kinds = Counter("continued" if len(chains[o.tag]) > 1 else "exact" for o in streams)
        print(f"streams in flight: {dict(kinds)}")

        pids = {p.pid for p in stack.processes if p.name == "worker"}

        def reregistered() -> bool:
            fleet = [r for r in read_fleet(master) if r.pid in pids and r.state == READY]
            rq_workers = {w.name for w in Worker.all(connection=master)}
            return len(fleet) == 2 and all(r.name in rq_workers for r in fleet)

        wait_until(reregistered, 20, "both workers announced and registered with RQ on the new master")
        names = sorted(r.name for r in read_fleet(master) if r.pid in pids)
        assert rq_info_workers(stack, cluster) >= set(names), "`rq info -c ops.rq_settings` on the new master"
        assert dashboard_workers(stack, cluster) >= set(names), "rq-dashboard on the new master"
        doctor = run_doctor(stack, cluster, fakes[0])
        assert f"[ ok ] Redis at the master {MASTER_NAME!r} of the sentinels at" in doctor
        assert "[warn] Redis master has 0 replica(s) connected; 1 must acknowledge each job" in doctor, doctor
        wait_until(lambda: nothing_lingers(master), 10, "no job left queued or started without its worker")
        # Each answered job has one final state, the one its client saw: the job that ended its
        # answer, finished (one a continuation carried on ended as it did, once).
        served = [o for o in traffic.outcomes if o.status == 200]

        def recorded() -> list[str]:
            return [o.tag for o in served if master.hget(f"rq:job:{chains[o.tag][-1].id}", "status") != b"finished"]

        try:
            wait_until(lambda: not recorded(), 10, "every answered job recorded finished")
        except AssertionError:
            raise AssertionError(f"not recorded finished: {recorded()}\n{stack.logs()}") from None
        # None ran twice: one engine request per prompt, across both engines.
        records = [r for f in fakes for r in f.chat_records() if r.body.get("messages")]
        counts = Counter(r.body["messages"][-1]["content"] for r in records)
        assert all(n == 1 for n in counts.values()), [p for p, n in counts.items() if n > 1]
        assert len(served) <= len(counts)
    finally:
        traffic.stop_steady()
        stack.stop()


def test_failover_under_traffic(tmp_path: Path, fakes: list[FakeOllama]) -> None:
    cluster = SentinelCluster(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    try:
        failover_under_traffic(tmp_path, cluster.start(), fakes)
    finally:
        cluster.stop()


def test_failover_with_passwords(tmp_path: Path, fakes: list[FakeOllama]) -> None:
    (tmp_path / "redis").mkdir()
    cluster = SentinelCluster(tmp_path / "redis", password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    try:
        failover_under_traffic(tmp_path, cluster.start(), fakes)
    finally:
        cluster.stop()


def test_failover_over_tls(tmp_path: Path, fakes: list[FakeOllama], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "redis").mkdir()
    certs = Certs.make(tmp_path / "redis")
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))  # this process's checks trust the test CA too
    cluster = SentinelCluster(tmp_path / "redis", password=PASSWORD, certs=certs)
    try:
        failover_under_traffic(tmp_path, cluster.start(), fakes)
    finally:
        cluster.stop()
