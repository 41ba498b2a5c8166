"""The worker-death section: time from a worker's SIGKILL to the next token at the client.

A private stack of its own (bench.stack.Stack with a second worker: two workers with one slot
each, both on the fake Ollama): a stream paced at RATE tokens/s runs on one worker while the other
is free. The moment a token reaches the client, the worker serving it is SIGKILLed; the figure is
the time from the kill to the next token the client reads: the web finding the worker gone (its
process left its command channel: web.liveness), placing the continuation, the free worker taking
it, the fake's first token. Tokens the dead worker had already sent may still arrive within
TRANSIT_S of the kill; they are not the next one. Each stream is checked (the exact text, one
final chunk, `[DONE]`); a fresh worker replaces the killed one before the next run.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rq.job import Job
from rq.serializers import JSONSerializer

from bench.procs import Child, StartError, wait_until
from bench.stack import Stack
from common.fleet import read_fleet
from ops.supervise import worker_command
from tests.golivepeer import read_stream

RATE = 20.0  # tokens/s: a token every 50 ms, a realistic GPU's pace
TOKENS = 80  # a 4 s answer
KILL_AFTER = 10  # tokens at the client before the kill
TRANSIT_S = 0.1  # tokens arriving this soon after the kill were sent before it
TARGET_S = 2.0


@dataclass
class KillResults:
    """Seconds from each SIGKILL to the next token at the client, and the streams that were wrong."""

    gaps: list[float] = field(default_factory=list)
    checked: int = 0
    wrong: list[str] = field(default_factory=list)


class KillStack(Stack):
    """The bench stack (one slot per worker) with a second worker, and fresh ones on demand."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, slots=1)
        self._workers = 1

    def start(self) -> None:
        """Everything, then the second worker."""
        super().start()
        self.add_worker()

    def add_worker(self) -> Child:
        """One more worker, ready in the fleet."""
        self._workers += 1
        argv = worker_command()
        argv[0] = sys.executable
        child = self._spawn(f"worker{self._workers}", argv, self.env)
        wait_until(child, lambda: self._worker_ready(child.pid), f"worker {child.pid} ready in the fleet")
        return child


class _Reader:
    """One /llm stream read in a thread: every line, and when each content chunk arrived."""

    def __init__(self, url: str, prompt: str) -> None:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": TOKENS, "stream": True}
        self.request = urllib.request.Request(f"{url}/llm", json.dumps(body).encode(),
                                              {"Content-Type": "application/json"})  # fmt: skip
        self.lines: list[bytes] = []
        self.arrivals: list[float] = []
        self.job_id = ""
        self.token = threading.Condition()
        self.error = ""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            with urllib.request.urlopen(self.request, timeout=120) as response:
                self.job_id = response.headers.get("X-Job-Id", "")
                for raw in response:
                    line = raw.rstrip(b"\r\n")
                    now = time.perf_counter()
                    with self.token:
                        self.lines.append(line)
                        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                            self.arrivals.append(now)
                            self.token.notify_all()
        except Exception as exc:
            self.error = repr(exc)
        with self.token:
            self.token.notify_all()


def _serving_pid(stack: KillStack, job_id: str) -> int:
    assert stack.redis is not None
    redis = stack.redis
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    return next(r.pid for r in read_fleet(redis) if r.name == job.worker_name)


def _one(stack: KillStack, i: int, res: KillResults) -> None:
    prompt = f"kill{i} alpha bravo"
    reader = _Reader(stack.web_url, prompt)
    with reader.token:
        if not reader.token.wait_for(lambda: len(reader.arrivals) >= KILL_AFTER or bool(reader.error), 60):
            raise StartError(f"kill run {i}: no {KILL_AFTER} tokens within 60 s")
    pid = _serving_pid(stack, reader.job_id)
    with reader.token:  # kill the moment a token arrives: the worker has just sent it
        seen = len(reader.arrivals)
        reader.token.wait_for(lambda: len(reader.arrivals) > seen, 10)
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
    reader.thread.join(120)
    after = [t for t in reader.arrivals if t > killed + TRANSIT_S]
    words = prompt.split()
    expected = "".join(words[k % len(words)] + " " for k in range(TOKENS))
    got = read_stream(reader.lines)
    finals = [c for c in got.chunks if c["choices"][0].get("finish_reason")]
    res.checked += 1
    if reader.error or got.text != expected or len(finals) != 1 or not got.saw_done_marker or not after:
        res.wrong.append(f"kill run {i}: {reader.error or ''} finish {got.finish_reason!r}, {len(finals)} final "
                         f"chunk(s), text {'exact' if got.text == expected else repr(got.text[-60:])}")  # fmt: skip
        return
    res.gaps.append(after[0] - killed)
    print(f"  kill {i}: next token {after[0] - killed:.3f} s after the SIGKILL", flush=True)


def run_kill(workdir: Path, n: int) -> KillResults:
    """`n` SIGKILLs of the serving worker, each in its own stream; always stops the stack."""
    stack = KillStack(workdir)
    res = KillResults()
    try:
        stack.start()
        stack.pace(tokens_per_s=RATE)
        for i in range(n):
            _one(stack, i, res)
            stack.add_worker()  # the killed one's replacement: a free slot again
    finally:
        stack.stop()
    return res


def render_kill(res: KillResults, n: int) -> list[str]:
    """The report's section."""
    gaps = res.gaps or [float("nan")]
    verdict = "ok" if max(gaps) <= TARGET_S else "MISS"
    return ["", "## A worker SIGKILLed mid-stream: time to the next token at the client", "",
            f"{n} streams of {TOKENS} tokens at {RATE:g} tokens/s on the fake Ollama, two workers of one slot "
            f"each; after {KILL_AFTER} tokens the serving worker is SIGKILLed the moment a token reaches the "
            "client. Time from the kill to the next token the client reads (worker-death detection, the "
            "continuation's placement, its first token on the free worker):", "",
            "| runs | p50 s | max s | target |", "|---|---|---|---|",
            f"| {len(res.gaps)} | {statistics.median(gaps):.3f} | {max(gaps):.3f} | ≤ {TARGET_S:g} s: {verdict} |",
            "", f"Worker-death streams checked (exact text, one final chunk, [DONE]): {res.checked}, "
            f"wrong: {len(res.wrong)}."] + [
            f"- WRONG: {w}" for w in res.wrong[:10]]  # fmt: skip
