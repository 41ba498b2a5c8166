"""The `python -m bench` command: start the stack, run the scenarios, report, always stop everything."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from bench.kill import render_kill, run_kill
from bench.params import Params, parse_args
from bench.plot import plot
from bench.procs import StartError
from bench.real import available, render_real, run_real
from bench.report import render
from bench.scenarios import Results, Verifier, run_all
from bench.stack import NUM_CTX, VRAM_MB, Stack


def machine() -> str:
    """nproc, CPU model, Python version and OS, in one line."""
    model = "unknown CPU"
    try:
        info = Path("/proc/cpuinfo").read_text()
        fields = {
            k: re.search(rf"^{k}\s*:\s*(.+)$", info, re.M) for k in ("model name", "cpu family", "model", "cpu MHz")
        }
        got = {k: m.group(1).strip() for k, m in fields.items() if m}
        model = got.get("model name", model)
        if "cpu family" in got:
            model += (
                f" (family {got['cpu family']} model {got.get('model', '?')}, {float(got.get('cpu MHz', 0)):.0f} MHz)"
            )
        if re.search(r"^flags\s*:.*\bhypervisor\b", info, re.M):
            model += ", virtual machine"
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"nproc {nproc}, {model}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def web_breakdown(stack: Stack, span: tuple[int, int]) -> str:
    """Median web-side timings of the runner's TTFT jobs, from the web's one line per job."""
    try:
        with open(stack.child("web").log, "rb") as f:
            f.seek(span[0])
            text = f.read(span[1] - span[0]).decode(errors="replace")
    except OSError:
        return ""
    found = re.findall(r"queue_ms=([\d.]+) ttft_ms=([\d.]+) total_ms=([\d.]+)", text)
    if not found:
        return ""
    q, t, total = (statistics.median(float(x[i]) for x in found) for i in range(3))
    return (f"web log, {len(found)} TTFT jobs, medians: submit → worker Started {q:.2f} ms, "
            f"submit → first token at the web {t:.2f} ms, submit → end {total:.2f} ms")  # fmt: skip


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def execute(p: Params) -> int:
    """Run the whole benchmark with parameters `p`; the exit status."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (background jobs)
    workdir = Path(tempfile.mkdtemp(prefix="llm-bench-"))
    stack = Stack(workdir, slots=max(p.ns), sentinel=p.sentinel)
    verifier, res = Verifier(), Results()
    started, ok = time.time(), False
    try:
        print(f"starting the stack (logs in {workdir})…", flush=True)
        stack.start()
        print(f"  redis {stack.redis_url}, fake Ollama {stack.fake_url}, web {stack.web_url}, 1 worker", flush=True)
        asyncio.run(run_all(stack, p, verifier, res))
        evidence = web_breakdown(stack, res.ttft_log_span)
        ok = True
    except StartError as exc:
        print(f"\nFAILED: {exc}\n{stack.logs()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except Exception:
        print(f"\nFAILED; process logs:\n{stack.logs()}", file=sys.stderr)
        raise
    finally:
        stack.stop()
        if ok and not verifier.failures:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"(process logs kept in {workdir})", file=sys.stderr)
    meta = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "duration": f"{time.time() - started:.0f} s",
        "stack": (
            "Redis through Sentinel (master, replica and 3 sentinels on loopback, REDIS_WAIT_REPLICAS="
            f"{os.environ.get('REDIS_WAIT_REPLICAS') or '1 (default)'})"
            if p.sentinel
            else "redis-server"
        )
        + ", fake Ollama (tests.fake_ollama in its own process), web = gunicorn as "
        "web_command() (1 gevent worker process), 1 worker as worker_command() with "
        f"OLLAMA_NUM_PARALLEL={max(p.ns)}; client = asyncio raw sockets in the bench process, "
        "sharing the same cores",
        "parameters": ", ".join(f"{k}={v}" for k, v in p.describe().items() if k != "out"),
        "notes": "the client's CPU competes with the servers on the same cores (see the CPU table); "
        "TTFT = before connecting → first content token parsed; the fake's listen backlog is raised to "
        f"somaxconn as Go's (real Ollama's) is; the worker gets NUM_CTX={NUM_CTX} (the relay's answer "
        f"must fit the context) and VRAM_MB={VRAM_MB} (its KV estimate for {max(p.ns)} slots × that "
        "context must fit), MAX_TOKENS and MAX_QUEUE raised so nothing is refused",
    }
    if evidence:
        meta["TTFT breakdown"] = evidence
    text, all_ok = render(res, p, verifier, meta)
    real_wrong = 0
    if p.real_n:
        why_not = available()
        if why_not:
            text += f"\n## Real model\n\nNot run: {why_not}.\n"
        else:
            print(f"real model: {p.real_n} requests per path on SmolLM2 (llama.cpp, CPU)…", flush=True)
            real_dir = Path(tempfile.mkdtemp(prefix="llm-bench-real-"))
            try:
                real = run_real(real_dir, p.real_n, p.real_tokens)
            except StartError as exc:
                print(f"\nFAILED (real model): {exc}", file=sys.stderr)
                return 2
            shutil.rmtree(real_dir, ignore_errors=True)
            text += "\n".join(render_real(real, p.real_n, p.real_tokens)) + "\n"
            real_wrong = len(real.wrong)
    kill_wrong = 0
    if p.kill_n:
        print(f"worker deaths: {p.kill_n} streams whose serving worker is SIGKILLed…", flush=True)
        kill_dir = Path(tempfile.mkdtemp(prefix="llm-bench-kill-"))
        try:
            killed = run_kill(kill_dir, p.kill_n)
        except StartError as exc:
            print(f"\nFAILED (worker deaths): {exc}; logs in {kill_dir}", file=sys.stderr)
            return 2
        if not killed.wrong:
            shutil.rmtree(kill_dir, ignore_errors=True)
        text += "\n".join(render_kill(killed, p.kill_n)) + "\n"
        kill_wrong = len(killed.wrong)
    print("\n" + text)
    p.out.mkdir(parents=True, exist_ok=True)
    (p.out / "results.md").write_text(text)
    if plot(res, p, p.out / "concurrency.png"):
        print(f"wrote {p.out / 'results.md'} and {p.out / 'concurrency.png'}")
    else:
        print(f"wrote {p.out / 'results.md'} (matplotlib missing: no plot)")
    if verifier.failures or real_wrong or kill_wrong:
        wrong = len(verifier.failures) + real_wrong + kill_wrong
        print(f"\n!!!!! {wrong} WRONG STREAM(S) — see above !!!!!", file=sys.stderr)
        return 1
    return 3 if p.strict and not all_ok else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench`."""
    return execute(parse_args(argv))
