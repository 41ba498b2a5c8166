"""Where the runner's CPU goes: py-spy on the web and the worker while one scenario runs (runner path).

`python -m bench.profile --scenario conc --n 256 [--gil] [--out DIR]` starts the same
stack as `python -m bench`, warms it up, records both processes with `py-spy record --format raw`
during the scenario, and prints the functions with the most samples (self and inclusive).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.params import Params
from bench.sample import Meter
from bench.scenarios import Verifier, paths
from bench.stack import Stack
from bench.workload import Ask

_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def top(raw: Path, k: int = 15) -> str:
    """The `k` functions with most self and most inclusive samples in a py-spy raw (collapsed) file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        names = []
        for frame in stack.split(";")[1:]:  # the first element names the thread
            m = _FRAME.match(frame)
            names.append(f"{m.group(1)} ({Path(m.group(2)).name})" if m else frame)
        if names:
            own[names[-1]] += n
            for name in set(names):
                incl[name] += n
    out = [f"  {total} samples"]
    for title, counter in (("self", own), ("inclusive", incl)):
        out.append(f"  top {title}:")
        out += [f"    {100 * c / max(total, 1):5.1f}%  {name}" for name, c in counter.most_common(k)]
    return "\n".join(out)


async def _scenario(stack: Stack, p: Params, what: str, n: int) -> None:
    _, runner = paths(stack)
    v = Verifier()
    if what == "ttft":
        for i in range(p.ttft_n):
            ask = Ask(f"p{i}", p.ttft_tokens)
            v.check(runner, ask, await runner.run(ask))
            await asyncio.sleep(p.gap_s)
    elif what == "relay":
        for i in range(p.relay_repeats):
            ask = Ask(f"pr{i}", p.relay_tokens)
            v.check(runner, ask, await runner.run(ask))
    else:
        asks = [Ask(f"pc{k}", p.conc_tokens) for k in range(n)]
        for ask, reply in zip(asks, await asyncio.gather(*(runner.run(a) for a in asks)), strict=True):
            v.check(runner, ask, reply)
    print(f"{what}: {v.checked} runner streams, {len(v.failures)} wrong")


async def _warm(stack: Stack, n: int) -> None:
    _, runner = paths(stack)
    await asyncio.gather(*(runner.run(Ask(f"pw{k}", 8)) for k in range(n)))


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    ap.add_argument("--scenario", choices=("ttft", "relay", "conc"), default="conc")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--gil", action="store_true", help="only samples holding the GIL (py-spy --gil)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-profile")
    a = ap.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    p, workdir = Params(), Path(tempfile.mkdtemp(prefix="llm-bench-prof-"))
    a.out.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir, slots=max(a.n, 16))
    spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        stack.start()
        asyncio.run(_warm(stack, min(a.n, 64)))
        stack.pace(tokens_per_s=p.conc_rate if a.scenario == "conc" else 0)
        meter = Meter(stack)
        targets = {"web": meter.procs("web")[-1].pid, "worker": stack.child("worker").pid}
        for name, pid in targets.items():
            raw = a.out / f"{a.scenario}-{name}.txt"
            argv_spy = [spy, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw", "-o", str(raw)]
            spies.append((name, subprocess.Popen([*argv_spy, *(["--gil"] if a.gil else [])]), raw))
        cpu: dict[str, float] = {}
        with meter.cpu_delta(cpu):
            asyncio.run(_scenario(stack, p, a.scenario, a.n))
        print("CPU s:", ", ".join(f"{g} {s:.2f}" for g, s in cpu.items()))
    finally:
        for _, spy_proc, _ in spies:
            spy_proc.send_signal(signal.SIGINT)
            spy_proc.wait(timeout=30)
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for name, _, raw in spies:
        print(f"\n== {name} ({raw}) ==\n{top(raw)}" if raw.exists() else f"\n== {name}: no profile ==")
    return 0


if __name__ == "__main__":
    sys.exit(main())
