"""The runner as real processes for end-to-end tests: gunicorn (as the Procfile runs it) and workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from redis import Redis

from common.fleet import READY, read_fleet
from ops.supervise import worker_command

REPO = Path(__file__).resolve().parent.parent
FAKE_NVML = REPO / "tests" / "fake_nvml"
T = TypeVar("T")
# Stacks still running, whose logs a failing test's report shows (see conftest).
RUNNING: list[Stack] = []


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # not ready yet (connection refused, ...)
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Process:
    """A started process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.popen.pid

    def signal(self, sig: int) -> None:
        """Send a signal if it still runs."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def output(self) -> str:
        """Everything it logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Stack:
    """Starts and stops the runner's processes against one Redis; keeps their logs."""

    def __init__(self, tmpdir: str, redis_url: str) -> None:
        self.tmpdir = Path(tmpdir)
        self.redis_url = redis_url
        self.redis = Redis.from_url(redis_url)
        self.processes: list[Process] = []
        self.web_url = ""
        RUNNING.append(self)

    def env(self, **overrides: Any) -> dict[str, str]:
        """The environment for a runner process: this Redis, the fake pynvml first on the path."""
        env = {k: v for k, v in os.environ.items() if k not in ("FAKE_NVML_GPUS", "AUTH_TOKEN", "MODELS")}
        env.update(
            REDIS_URL=self.redis_url,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join([str(FAKE_NVML), str(REPO)]),
            LOG_LEVEL="INFO",
        )
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            elif key == "FAKE_NVML_GPUS" and not isinstance(value, str):
                env[key] = json.dumps(value)
            else:
                env[key] = str(value)
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        """Start any process with its output in a log file."""
        log = self.tmpdir / f"{name}-{len(self.processes)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
        proc = Process(name, popen, log)
        self.processes.append(proc)
        return proc

    def start_web(self, *, port: int | None = None, **env: Any) -> Process:
        """The Procfile's `llm-runner web` on `port` (default: a free one); waits until /health answers."""
        port = port or free_port()
        argv = [sys.executable, "-m", "ops", "web"]
        proc = self.spawn("web", argv, self.env(PORT=port, **env))
        self.web_url = f"http://127.0.0.1:{port}"
        self._wait(proc, lambda: requests.get(f"{self.web_url}/health", timeout=1).json(), "web /health")
        return proc

    def start_worker(self, *, wait_ready: bool = True, **env: Any) -> Process:
        """`python -m worker`; waits until it announces itself ready in the fleet registry."""
        argv = worker_command()
        argv[0] = sys.executable
        proc = self.spawn("worker", argv, self.env(**env))
        if wait_ready:
            self.wait_worker_ready(proc)
        return proc

    def wait_worker_ready(self, proc: Process, timeout: float = 20.0) -> None:
        """Wait until this worker process is READY in the fleet registry."""

        def ready() -> bool:
            return any(r.pid == proc.pid and r.state == READY for r in read_fleet(self.redis))

        self._wait(proc, ready, f"worker {proc.pid} ready", timeout)

    def _wait(self, proc: Process, predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
        def alive_and(pred: Callable[[], object]) -> object:
            if proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}")
            return pred()

        try:
            wait_until(lambda: alive_and(predicate), timeout, what)
        except AssertionError:
            raise AssertionError(f"{what} failed; logs:\n{self.logs()}") from None

    def logs(self) -> str:
        """All processes' logs, for a failing test's report."""
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.output()[-20000:]}" for p in self.processes)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process, then SIGKILL whatever is still running after `timeout`."""
        for proc in self.processes:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self.redis.close()
        if self in RUNNING:
            RUNNING.remove(self)
