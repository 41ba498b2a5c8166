"""rq-dashboard, as the Procfile runs it, shows the runner's queues, workers and jobs."""

from __future__ import annotations

import shlex
import subprocess
import sys

import psutil
import pytest

from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.stack import REPO, Stack, free_port, wait_until

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


USER, PASSWORD = "operator", "dashboard-password"


def dashboard_argv() -> list[str]:
    """The Procfile's `dashboard:` line, run through this interpreter's `python -m ops`."""
    line = next(p for p in (REPO / "Procfile").read_text().splitlines() if p.startswith("dashboard: "))
    argv = shlex.split(line.removeprefix("dashboard: "))
    assert argv[0] == "llm-runner"
    return [sys.executable, "-m", "ops", *argv[1:]]


def test_dashboard_refuses_to_start_without_a_login(stack: Stack) -> None:
    for missing in ("RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD"):
        env = stack.env(RQ_DASHBOARD_USERNAME=USER, RQ_DASHBOARD_PASSWORD=PASSWORD, DASHBOARD_PORT=free_port())
        env[missing] = ""
        done = subprocess.run(dashboard_argv(), env=env, capture_output=True, text=True, timeout=30, cwd=REPO)
        assert done.returncode == 2
        assert "refusing to start rq-dashboard without a login" in done.stderr and missing in done.stderr


def test_dashboard_shows_queues_workers_and_jobs_behind_its_login(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", reply_tokens=2)
    stack.start_web()
    worker = stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=8192)
    answer = call("POST", f"{stack.web_url}/llm", json={"messages": [{"role": "user", "content": "hi"}]})
    job_id = answer.headers["X-Job-Id"]
    port = free_port()
    env = stack.env(RQ_DASHBOARD_USERNAME=USER, RQ_DASHBOARD_PASSWORD=PASSWORD, DASHBOARD_PORT=port)
    dashboard = stack.spawn("dashboard", dashboard_argv(), env)
    base = f"http://127.0.0.1:{port}"
    login = (USER, PASSWORD)
    queues = wait_until(lambda: call("GET", f"{base}/0/data/queues.json", auth=login, timeout=2).json(), 20, "up")
    assert f"llm:{LLAMA}" in [q["name"] for q in queues["queues"]]
    for path in ("/", "/0/data/queues.json", f"/0/data/job/{job_id}.json"):
        for wrong in (None, (USER, "wrong"), ("admin", PASSWORD)):
            refused = call("GET", f"{base}{path}", auth=wrong)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    workers = call("GET", f"{base}/0/data/workers.json", auth=login).json()["workers"]
    assert [w["name"] for w in workers] == [f"{worker_name(stack)}"]
    job = call("GET", f"{base}/0/data/job/{job_id}.json", auth=login).json()
    assert job["status"] == "finished" and job["description"].startswith(f"generate {LLAMA}")
    assert worker.popen.poll() is None
    assert stack.redis_url not in " ".join(psutil.Process(dashboard.pid).cmdline())


def worker_name(stack: Stack) -> str:
    from common.fleet import read_fleet

    (record,) = read_fleet(stack.redis)
    return record.name
