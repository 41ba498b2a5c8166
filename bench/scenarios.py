"""The measurements: added TTFT, relay cost per token, N concurrent paced streams (with memory)."""

from __future__ import annotations

import asyncio
import collections
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.client import Detector, Reply, ndjson_token, openai_token, sse_token, stream
from bench.params import Params
from bench.sample import Meter, PeakRss
from bench.stack import Stack
from bench.workload import Ask, check_direct, check_openai, check_runner, direct_body, openai_body, runner_body

HOST = "127.0.0.1"
LOUD_LIMIT = 20  # wrong streams printed one by one; all are counted


@dataclass
class Path:
    """One way to the fake Ollama: straight to /api/chat, or through the runner's /llm or /v1/chat/completions."""

    name: str
    port: int
    route: str
    body: Callable[[Ask], bytes]
    detect: Detector
    check: Callable[[Reply, Ask], list[str]]

    async def run(self, ask: Ask) -> Reply:
        """One streamed request."""
        return await stream(HOST, self.port, self.route, self.body(ask), self.detect)


def paths(stack: Stack) -> tuple[Path, Path, Path]:
    """(direct, runner, openai) for this stack: straight to the fake Ollama with the body the worker
    would send, through go-livepeer's /llm, and through the OpenAI API (/v1/chat/completions)."""
    settings = stack.settings()
    model_id = settings.default_model.model_id
    fake_port = int(stack.fake_url.rsplit(":", 1)[1])
    direct = Path("direct", fake_port, "/api/chat", lambda a: direct_body(a, settings), ndjson_token, check_direct)
    runner = Path("runner", stack.web_port, "/llm", lambda a: runner_body(a, model_id), sse_token, check_runner)
    openai = Path("openai", stack.web_port, "/v1/chat/completions", lambda a: openai_body(a, model_id), openai_token,
                  check_openai)  # fmt: skip
    return direct, runner, openai


def rotation(ways: list[Path], i: int) -> list[Path]:
    """The paths in round i's order: each takes every place in turn, to cancel drift."""
    k = i % len(ways)
    return ways[k:] + ways[:k]


@dataclass
class Verifier:
    """Checks every stream; prints a wrong one loudly at once."""

    checked: int = 0
    failures: list[str] = field(default_factory=list)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)

    def check(self, path: Path, ask: Ask, reply: Reply) -> bool:
        """Check one stream; False (and a loud message) if it is wrong."""
        self.checked += 1
        problems = path.check(reply, ask)
        if problems:
            msg = f"WRONG STREAM {path.name} {ask.label}: " + "; ".join(problems[:2])[:300]
            self.failures.append(msg)
            scenario = re.sub(r"^(c\d+|wb|[wtr]).*$", r"\1", ask.label)
            kind = re.sub(r"[0-9a-f]{32}|\d+(\.\d+)?", "#", problems[0])[:140]
            self.kinds[f"{path.name}, scenario `{scenario}`: {kind}"] += 1
            if len(self.failures) <= LOUD_LIMIT:
                print(f"\n!!!!! {msg}\n", file=sys.stderr, flush=True)
            elif len(self.failures) == LOUD_LIMIT + 1:
                print("\n!!!!! more wrong streams; the total is printed at the end\n", file=sys.stderr, flush=True)
        return not problems


@dataclass
class ConcRow:
    """One N of the concurrency scenario, for one path."""

    n: int
    path: str
    wall_ms: float
    stream_p50_ms: float
    ttft_p50_ms: float
    ttft_max_ms: float
    ok: int
    cpu: dict[str, float]


@dataclass
class Results:
    """Everything measured in one run."""

    ttft: dict[str, list[float]] = field(default_factory=dict)
    to_ollama: dict[str, list[float]] = field(default_factory=dict)  # TTFT runs: send → Ollama has the request
    from_ollama: dict[str, list[float]] = field(default_factory=dict)  # Ollama has it → first token at client
    relay_ms: dict[str, list[float]] = field(default_factory=dict)
    relay_cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    conc: list[ConcRow] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)
    ttft_cpu: dict[str, float] = field(default_factory=dict)
    ttft_log_span: tuple[int, int] = (0, 0)  # byte offsets of the web log around the TTFT scenario


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))
    return ordered[k]


async def warm_up(ways: list[Path], p: Params, v: Verifier) -> None:
    """Sequential, then one burst of max N short streams on each path (threads, pools, caches)."""
    for i in range(p.warmup):
        for path in ways:
            ask = Ask(f"w{i}{path.name[0]}", p.ttft_tokens)
            v.check(path, ask, await path.run(ask))
    for path in ways:
        asks = [Ask(f"wb{k}{path.name[0]}", p.ttft_tokens) for k in range(max(p.ns))]
        replies = await asyncio.gather(*(path.run(a) for a in asks))
        for ask, reply in zip(asks, replies, strict=True):
            v.check(path, ask, reply)


async def ttft(stack: Stack, ways: list[Path], p: Params, v: Verifier, res: Results) -> None:
    """Sequential warm requests, alternating paths (order rotated each round) to cancel drift.

    The fake's arrival times (same CLOCK_MONOTONIC as perf_counter) split each TTFT into
    send → Ollama has the request, and Ollama has it → first token at the client.
    """
    res.ttft = {path.name: [] for path in ways}
    sent: list[tuple[str, str, Reply]] = []
    for i in range(p.ttft_n):
        for path in rotation(ways, i):
            ask = Ask(f"t{i}{path.name[0]}", p.ttft_tokens)
            reply = await path.run(ask)
            if v.check(path, ask, reply):
                res.ttft[path.name].append(reply.ttft_ms)
                sent.append((path.name, ask.label, reply))
            await asyncio.sleep(p.gap_s)  # let the previous job's bookkeeping settle
    arrived = stack.arrivals()
    res.to_ollama, res.from_ollama = {path.name: [] for path in ways}, {path.name: [] for path in ways}
    for name, label, reply in sent:
        if label in arrived:
            res.to_ollama[name].append(arrived[label] * 1e3 - reply.t_send / 1e6)
            res.from_ollama[name].append(reply.t_first / 1e6 - arrived[label] * 1e3)


async def relay(direct: Path, runner: Path, p: Params, v: Verifier, res: Results, meter: Meter) -> None:
    """One long unpaced stream per path per repeat; wall time send → last byte."""
    res.relay_ms = {"direct": [], "runner": []}
    res.relay_cpu = {"direct": {}, "runner": {}}
    for rep in range(p.relay_repeats):
        for path in (direct, runner) if rep % 2 == 0 else (runner, direct):
            ask = Ask(f"r{rep}{path.name[0]}", p.relay_tokens)
            cpu: dict[str, float] = {}
            with meter.cpu_delta(cpu):
                reply = await path.run(ask)
            total = res.relay_cpu[path.name]
            for group, secs in cpu.items():
                total[group] = total.get(group, 0.0) + secs
            if v.check(path, ask, reply):
                res.relay_ms[path.name].append(reply.total_ms)
            await asyncio.sleep(p.gap_s)


async def _burst(path: Path, n: int, p: Params, v: Verifier, meter: Meter) -> tuple[ConcRow, list[Reply]]:
    asks = [Ask(f"c{n}x{k}{path.name[0]}", p.conc_tokens) for k in range(n)]
    cpu: dict[str, float] = {}
    with meter.cpu_delta(cpu):
        replies = await asyncio.gather(*(path.run(a) for a in asks))
    ok = sum(v.check(path, a, r) for a, r in zip(asks, replies, strict=True))
    wall = (max(r.t_end for r in replies) - min(r.t_send for r in replies)) / 1e6
    ttfts = [r.ttft_ms for r in replies if r.t_first]
    row = ConcRow(
        n, path.name, wall, statistics.median(r.total_ms for r in replies),
        statistics.median(ttfts) if ttfts else float("nan"), max(ttfts, default=float("nan")), ok, cpu,
    )  # fmt: skip
    return row, replies


async def concurrency(ways: list[Path], p: Params, v: Verifier, res: Results, meter: Meter) -> None:
    """N paced streams at once per path; the /llm path's largest-N run also samples peak RSS."""
    for i, n in enumerate(p.ns):
        for path in rotation(ways, i):
            if path.name == "runner" and n == max(p.ns):
                with PeakRss(meter) as peak:
                    row, _ = await _burst(path, n, p, v, meter)
                res.rss["web_peak"], res.rss["worker_peak"] = peak.peak["web"], peak.peak["worker"]
            else:
                row, _ = await _burst(path, n, p, v, meter)
            res.conc.append(row)
            print(f"  N={n:<4} {path.name:<6} wall {row.wall_ms:8.1f} ms  ok {row.ok}/{n}", flush=True)
            await asyncio.sleep(p.gap_s)


async def run_all(stack: Stack, p: Params, v: Verifier, res: Results) -> None:
    """Warm up, then every scenario in turn, on one stack."""
    meter = Meter(stack)
    direct, runner, openai = paths(stack)
    ways = [direct, runner, openai]
    res.rss["web_cold"], res.rss["worker_cold"] = meter.rss("web"), meter.rss("worker")
    stack.pace(tokens_per_s=0)
    print("warming up…", flush=True)
    await warm_up(ways, p, v)
    res.rss["web_rest"], res.rss["worker_rest"] = meter.rss("web"), meter.rss("worker")
    print(f"TTFT: {p.ttft_n} sequential requests per path…", flush=True)
    web_log = stack.child("web").log
    start = web_log.stat().st_size
    with meter.cpu_delta(res.ttft_cpu):
        await ttft(stack, ways, p, v, res)
    res.ttft_log_span = (start, web_log.stat().st_size)
    print(f"relay: {p.relay_repeats} × {p.relay_tokens}-token stream per path…", flush=True)
    await relay(direct, runner, p, v, res, meter)
    stack.pace(tokens_per_s=p.conc_rate)
    print(f"concurrency: N={p.ns}, {p.conc_tokens} tokens at {p.conc_rate:g} tokens/s per stream…", flush=True)
    await concurrency(ways, p, v, res, meter)
    stack.check_alive()
