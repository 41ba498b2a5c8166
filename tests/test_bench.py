"""The benchmark's quick mode as a correctness check: every stream of both paths verified, report written.

No timing assertions: timings depend on the machine. This only proves `python -m bench` still
starts the stack the way the Procfile does, drives both paths, and checks every stream.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.params import QUICK, Params

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


def expected_streams(p: Params) -> int:
    """How many streams quick mode checks: warm-up (sequential + one burst), TTFT and concurrency on
    the three paths (direct, /llm, OpenAI API), the relay on the first two."""
    per_path = p.warmup + max(p.ns) + p.ttft_n + sum(p.ns)
    return 3 * per_path + 2 * p.relay_repeats


@pytest.mark.timeout(240)
def test_quick_bench_verifies_every_stream(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        if os.environ.get("CI"):
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=230,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    found = re.search(r"Streams checked: (\d+), wrong: (\d+)", proc.stdout)
    assert found, output[-6000:]
    checked, wrong = int(found.group(1)), int(found.group(2))
    assert wrong == 0, output[-6000:]
    assert checked == expected_streams(Params(**QUICK)), output[-6000:]  # type: ignore[arg-type]
    report = (tmp_path / "results.md").read_text()
    assert f"Streams checked: {checked}, wrong: 0" in report
    assert "| added TTFT p50" in report and "wall time ratio" in report
    assert "| OpenAI API TTFT p50 / /llm TTFT p50" in report and "wall time ratio openai//llm" in report
    # The real-model section ran: both paths answered, every stream ended properly.
    real = re.search(r"Real-model streams checked: (\d+), wrong: (\d+)", report)
    assert real and int(real.group(1)) == 2 * QUICK["real_n"] and real.group(2) == "0", report[-3000:]  # type: ignore[operator]
    # The worker-death section ran: each stream whose worker was SIGKILLed completed, exact.
    killed = re.search(r"Worker-death streams checked \(exact text, one final chunk, \[DONE\]\): (\d+), wrong: (\d+)",
                       report)  # fmt: skip
    assert killed and int(killed.group(1)) == QUICK["kill_n"] and killed.group(2) == "0", report[-3000:]  # type: ignore[operator]
