"""`llm-runner up`, the README's start command: Redis, web and a worker from one command, stopped by one signal."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import redis.exceptions
from redis import Redis

from ops.cli import main
from ops.supervise import EMBEDDED_MODEL_ID, Proc, Supervisor, ollama_answers, redis_server_binary
from tests.client import call
from tests.fake_ollama import FakeOllama
from tests.golivepeer import read_stream
from tests.rawclient import RawRequest
from tests.stack import FAKE_NVML, REPO, free_port, wait_until

pytestmark = pytest.mark.e2e


def readme_curl(port: int) -> str:
    """The README's first request, on this port."""
    return f"""curl -N localhost:{port}/llm -d '{{"messages":[{{"role":"user","content":"Hi"}}],"stream":true}}'"""


def remove_state_dir(log: Path) -> None:
    """Remove the private directory `up` kept its embedded services' files in (it keeps them for the operator)."""
    found = re.search(r"started redis .*its output goes to (\S+)/redis\.log$", log.read_text(), re.M)
    if found:
        shutil.rmtree(found.group(1), ignore_errors=True)


def printed(log: Path, line: str, timeout: float = 10.0) -> str:
    """What `up` has printed once `line` is among it."""
    return wait_until(lambda: text if line in (text := log.read_text()) else None, timeout, repr(line))


def test_up_runs_the_whole_stack_and_stops_it(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    if redis_server_binary() is None:
        pytest.skip("no redis-server for the embedded Redis")
    fake_ollama.set_behavior("*", reply_tokens=4)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MODELS", "AUTH_TOKEN")}
    env.update(PORT=str(port), OLLAMA_URL=fake_ollama.url, VRAM_MB="8192", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(FAKE_NVML), str(REPO)]))  # fmt: skip
    redis_port = free_port()
    argv = [shutil.which("llm-runner") or "llm-runner", "up", "--gpus", "1", "--redis-port", str(redis_port)]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        # Its own process group, as a shell gives a command: Ctrl-C below signals that whole group.
        up = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                              start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: call("GET", f"{url}/health", timeout=1).json() == {"status": "OK"}, 30, "health OK")
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 3  # redis, gunicorn (+ its worker), python -m worker
        # The terminal shows one line per process started and, once it answers, the request to try;
        # Redis's own banner goes to its log file.
        terminal = printed(log, readme_curl(port))
        started = re.findall(r"started (\S+) \(pid \d+\)", terminal)
        assert sorted(started) == ["redis", "web", "worker-gpu0"], terminal
        assert "Ready to accept connections" not in terminal
        redis_log = Path(re.search(r"started redis .*its output goes to (\S+)$", terminal, re.M).group(1))
        assert "Ready to accept connections" in redis_log.read_text()
        answer = call("POST", f"{url}/llm", json={"messages": [{"role": "user", "content": "up and running"}]})
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "up and running up "
        # The embedded Redis demands a password, which neither its command line nor the log shows.
        with pytest.raises(redis.exceptions.AuthenticationError):
            Redis(port=redis_port).ping()
        (server,) = [c for c in children if "redis-server" in c.name()]
        assert "requirepass" not in " ".join(server.cmdline())
        assert f"redis://:***@127.0.0.1:{redis_port}/0" in log.read_text()
        # Stopped mid-stream: the web and the worker drain while Redis, which they need to finish
        # it, stays up until they have exited.
        fake_ollama.set_behavior("*", tokens_per_s=10, reply_tokens=15)
        draining = {"messages": [{"role": "user", "content": "drain me please"}], "stream": True}
        stream = RawRequest(f"{url}/llm", draining)
        stream.read_until(b"data: ")
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C in the terminal: every process of the group gets it
        stream.read_all(timeout=30)
        answer_read = read_stream(stream.body_lines())
        assert answer_read.finish_reason == "stop" and answer_read.text == "drain me please " * 5
    except BaseException:
        print(log.read_text())
        raise
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=40)
        remove_state_dir(log)
    assert code == 0, log.read_text()
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert "could not deregister" not in log.read_text(), "the worker outlived its Redis"


def test_up_without_an_engine_serves_real_tokens_from_the_embedded_one(tmp_path: Path) -> None:
    if redis_server_binary() is None:
        pytest.skip("no redis-server for the embedded Redis")
    assert not ollama_answers(), "something answers on Ollama's default port: `up` would (rightly) use it"
    port = free_port()
    drop = ("REDIS_URL", "MODELS", "AUTH_TOKEN", "OLLAMA_URL", "OPENAI_BASE_URL", "BACKEND", "SLOTS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PORT=str(port), PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    argv = [shutil.which("llm-runner") or "llm-runner", "up", "--redis-port", str(free_port())]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    children: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: call("GET", f"{url}/health", timeout=1).json() == {"status": "OK"}, 120, "health OK")
        children = psutil.Process(up.pid).children(recursive=True)
        assert any("llama_cpp.server" in " ".join(c.cmdline()) for c in children)
        # llama.cpp's model-loader dump goes to the engine's log file, not between the runner's lines.
        terminal = printed(log, readme_curl(port))
        assert sorted(re.findall(r"started (\S+) \(pid \d+\)", terminal)) == ["engine", "redis", "web", "worker-gpu0"]
        assert "llama_model_loader" not in terminal
        # Nor any other line of llama.cpp's (the worker reads the model's chat template with it).
        assert not re.findall(r"^llama_\w+:.*$", terminal, re.M)
        engine_log = Path(re.search(r"started engine .*its output goes to (\S+)$", terminal, re.M).group(1))
        assert "llama_model_loader" in engine_log.read_text()
        # The README's curl: the default model is the embedded one, and a real model answers.
        answer = call("POST", f"{url}/llm", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16},
                      timeout=120)  # fmt: skip
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == EMBEDDED_MODEL_ID
        assert body["choices"][0]["message"]["content"].strip()
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert 0 < body["usage"]["completion_tokens"] <= 16
        fleet = call("GET", f"{url}/fleet").json()
        assert [w["backend"] for w in fleet["workers"]] == ["openai"] and fleet["workers"][0]["slots"] == 1
    except BaseException:
        print(log.read_text())
        raise
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
        remove_state_dir(log)
    assert code == 0, log.read_text()
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_up_keeps_what_the_embedded_services_print_in_files_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    if redis_server_binary() is None:
        pytest.skip("no redis-server for the embedded Redis")
    started: list[list[Proc]] = []
    monkeypatch.setattr(Supervisor, "run", lambda self: started.append(self.procs) or 0)
    monkeypatch.setattr("ops.cli.ollama_answers", lambda: False)
    for name in ("REDIS_URL", "OLLAMA_URL", "OPENAI_BASE_URL", "BACKEND", "MODELS", "SLOTS", "AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORT", str(free_port()))
    assert main(["up", "--redis-port", str(free_port())]) == 0
    assert main(["up", "-v", "--redis-port", str(free_port())]) == 0
    quiet, verbose = ({p.name: p for p in procs} for procs in started)
    state = Path(quiet["redis"].argv[-1]).parent  # the embedded Redis works in <state>/redis
    try:
        assert quiet["redis"].log == state / "redis.log" and quiet["engine"].log == state / "engine.log"
        assert quiet["web"].log is None and quiet["worker-gpu0"].log is None  # the runner's own lines stay in view
        assert all(proc.log is None for proc in verbose.values())
    finally:
        for procs in (quiet, verbose):
            shutil.rmtree(Path(procs["redis"].argv[-1]).parent, ignore_errors=True)
