"""rq-dashboard, as the Procfile runs it, shows the runner's queues, workers and jobs."""

from __future__ import annotations

import shlex
import shutil

import pytest

from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.stack import REPO, Stack, free_port, wait_until

pytestmark = pytest.mark.e2e

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def test_dashboard_shows_queues_workers_and_jobs(stack: Stack, fake_ollama: FakeOllama) -> None:
    fake_ollama.set_behavior("*", reply_tokens=2)
    stack.start_web()
    worker = stack.start_worker(OLLAMA_URL=fake_ollama.url, VRAM_MB=8192)
    answer = call("POST", f"{stack.web_url}/llm", json={"messages": [{"role": "user", "content": "hi"}]})
    job_id = answer.headers["X-Job-Id"]
    port = free_port()
    line = next(p for p in (REPO / "Procfile").read_text().splitlines() if p.startswith("dashboard: "))
    argv = shlex.split(line.removeprefix("dashboard: ").replace('"${REDIS_URL:-redis://localhost:6379/0}"',
                                                                stack.redis_url).replace('"${DASHBOARD_PORT:-9181}"',
                                                                                          str(port)))  # fmt: skip
    argv[0] = shutil.which(argv[0]) or argv[0]
    stack.spawn("dashboard", argv, stack.env())
    base = f"http://127.0.0.1:{port}"
    queues = wait_until(lambda: call("GET", f"{base}/0/data/queues.json", timeout=2).json(), 20, "dashboard up")
    assert f"llm:{LLAMA}" in [q["name"] for q in queues["queues"]]
    workers = call("GET", f"{base}/0/data/workers.json").json()["workers"]
    assert [w["name"] for w in workers] == [f"{worker_name(stack)}"]
    job = call("GET", f"{base}/0/data/job/{job_id}.json").json()
    assert job["status"] == "finished" and job["description"].startswith(f"generate {LLAMA}")
    assert worker.popen.poll() is None


def worker_name(stack: Stack) -> str:
    from common.fleet import read_fleet

    (record,) = read_fleet(stack.redis)
    return record.name
