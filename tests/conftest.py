"""Shared fixtures: a real redis-server on a free port, a fake Ollama, the runner as processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from redis import Redis

from ops.supervise import redis_server_binary
from tests.fake_ollama import FakeOllama
from tests.stack import RUNNING, Stack, free_port


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the runner processes' logs to a failing test's report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and RUNNING:
        for stack in RUNNING:
            report.sections.append(("runner processes", stack.logs()))


class RedisServer:
    """A private redis-server process, restartable on the same port (for fault tests)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="test-redis-")
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start it and wait for 'Ready to accept connections'."""
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:
            seen.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server did not start:\n" + "".join(seen))
        # Keep draining its output so it never blocks on a full pipe.
        import threading

        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Kill it abruptly."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session (skipped locally if missing, fatal under CI)."""
    binary = redis_server_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required under CI (install the redis-server package)")
        pytest.skip("redis-server not installed")
    server = RedisServer(binary)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[Redis]:
    """A client on an empty database."""
    if redis_server.proc is None:
        redis_server.start()
    client = Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    """A fake Ollama with every well-known model installed, one slot, unpaced."""
    with FakeOllama().start() as fake:
        yield fake


@pytest.fixture
def stack(tmp_path: object, redis_server: RedisServer, redis: Redis) -> Iterator[Stack]:
    """Runner processes (web, workers) against the session's Redis; stopped and logged after."""
    s = Stack(str(tmp_path), redis_server.url)
    yield s
    s.stop()
