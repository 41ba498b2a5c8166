"""The stack under test: a private Redis, the fake Ollama, the web and one worker, as the Procfile runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from redis import Redis

from bench.procs import Child, StartError, spawn, stop_all, wait_until
from common.fleet import READY, read_fleet
from common.redis_client import make_redis
from common.settings import Settings
from ops.supervise import free_port, web_command, worker_command
from tests.sentinel_cluster import SentinelCluster

REPO = Path(__file__).resolve().parent.parent
FAKE_NVML = REPO / "tests" / "fake_nvml"
# A context that holds the relay's longest answer (generation stops when the context is full),
# and a fake GPU big enough for the default model's KV cache at that NUM_CTX × the bench's slots.
NUM_CTX = 32768
VRAM_MB = 1 << 24


class Stack:
    """Starts the processes, knows their pids and logs, stops them all (also on failure)."""

    def __init__(self, workdir: Path, slots: int, *, sentinel: bool = False) -> None:
        self.workdir = workdir
        self.slots = slots
        self.sentinel = sentinel
        self.cluster: SentinelCluster | None = None
        self.children: list[Child] = []
        self.redis_url = ""
        self.fake_url = ""
        self.web_url = ""
        self.web_port = 0
        self.env: dict[str, str] = {}
        self.redis: Redis | None = None

    # ---- processes
    def start(self) -> None:
        """Start everything and wait until each part is ready (no fixed sleeps)."""
        self._start_redis()
        self._start_fake()
        self.env = self._runner_env()
        web, worker = self._start_web(), self._start_worker()
        wait_until(web, self._web_health, "web /health to answer")
        wait_until(worker, lambda: self._worker_ready(worker.pid), f"worker {worker.pid} ready in the fleet")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], **kw: object) -> Child:
        child = spawn(name, argv, env, self.workdir, REPO, **kw)
        self.children.append(child)
        return child

    def _start_redis(self) -> None:
        if self.sentinel:
            self._start_sentinel()
            return
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]  # fmt: skip
        child = self._spawn("redis", argv, dict(os.environ))
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.redis = Redis.from_url(self.redis_url)
        wait_until(child, self.redis.ping, "redis-server to answer PING")

    def _start_sentinel(self) -> None:
        """A master, its replica and three sentinels (tests/sentinel_cluster.py), as an operator's HA Redis."""
        directory = self.workdir / "redis"
        directory.mkdir()
        self.cluster = SentinelCluster(directory).start()
        self.redis_url = f"{self.cluster.url} via sentinels {self.cluster.env()['REDIS_SENTINELS']}"
        self.redis = make_redis(self.cluster.target(), max_connections=4)

    def _start_fake(self) -> None:
        argv = [sys.executable, "-m", "bench.fake", "--slots", str(max(self.slots, 1024))]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        child = self._spawn("fake-ollama", argv, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.popen.stdout is not None
        line = child.popen.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "READY":
            raise StartError(f"fake Ollama did not print READY <port> (got {line!r})")
        self.fake_url = f"http://127.0.0.1:{line[1]}"

    def _runner_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("FAKE_NVML_GPUS", "AUTH_TOKEN", "MODELS", "PORT")}
        env.update(
            **(self.cluster.env() if self.cluster else {"REDIS_URL": self.redis_url}),
            OLLAMA_URL=self.fake_url,
            OLLAMA_NUM_PARALLEL=str(self.slots),
            MAX_QUEUE="100000",
            MAX_TOKENS="1000000",
            NUM_CTX=str(NUM_CTX),
            VRAM_MB=str(VRAM_MB),
            PYTHONPATH=os.pathsep.join([str(FAKE_NVML), str(REPO)]),
            PYTHONUNBUFFERED="1",
        )
        return env

    def _start_web(self) -> Child:
        self.web_port = free_port()
        argv = web_command()
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        return self._spawn("web", argv, {**self.env, "PORT": str(self.web_port)})

    def _start_worker(self) -> Child:
        argv = worker_command()
        argv[0] = sys.executable
        return self._spawn("worker", argv, self.env)

    def _web_health(self) -> bool:
        with urllib.request.urlopen(f"{self.web_url}/health", timeout=1) as resp:
            return "status" in json.loads(resp.read())

    def _worker_ready(self, pid: int) -> bool:
        assert self.redis is not None
        return any(r.pid == pid and r.state == READY for r in read_fleet(self.redis))

    # ---- control and introspection
    def pace(self, **knobs: object) -> None:
        """Set fake Ollama behaviour knobs for the requests that follow (e.g. tokens_per_s)."""
        child = self.child("fake-ollama")
        assert child.popen.stdin is not None and child.popen.stdout is not None
        child.popen.stdin.write(json.dumps(knobs).encode() + b"\n")
        child.popen.stdin.flush()
        answer = child.popen.stdout.readline().decode().strip()
        if answer != "OK":
            raise StartError(f"fake Ollama refused {knobs}: {answer!r}")

    def arrivals(self) -> dict[str, float]:
        """When the fake Ollama received each chat request, by stream label (time.monotonic(), seconds)."""
        child = self.child("fake-ollama")
        assert child.popen.stdin is not None and child.popen.stdout is not None
        child.popen.stdin.write(b'{"records": true}\n')
        child.popen.stdin.flush()
        kind, _, payload = child.popen.stdout.readline().decode().partition(" ")
        if kind != "RECORDS":
            raise StartError(f"fake Ollama answered {kind!r} to a records request")
        records: dict[str, float] = json.loads(payload)
        return records

    def child(self, name: str) -> Child:
        """The started process called `name`."""
        return next(c for c in self.children if c.name == name)

    def redis_pids(self) -> list[int]:
        """The Redis processes: the one redis-server, or the Sentinel deployment's nodes and sentinels."""
        if self.cluster is not None:
            return [node.proc.pid for node in self.cluster.nodes]
        return [self.child("redis").pid]

    def settings(self) -> Settings:
        """The settings the worker runs with (for the direct path's body)."""
        return Settings.from_env(self.env)

    def logs(self) -> str:
        """Every process's log tail."""
        return "\n".join(f"----- {c.name} (pid {c.pid}) -----\n{c.output()}" for c in self.children)

    def check_alive(self) -> None:
        """StartError if a process has died."""
        for child in self.children:
            if not child.alive():
                raise StartError(f"{child.name} exited with status {child.popen.returncode}")

    def stop(self) -> None:
        """Stop everything: terminate, wait, kill."""
        if self.redis is not None:
            self.redis.close()
        stop_all(self.children)
        if self.cluster is not None:
            self.cluster.stop()
