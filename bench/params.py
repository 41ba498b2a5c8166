"""The bench's parameters: the full run, the quick (CI) run, and the command line."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Params:
    """Sizes of every scenario."""

    quick: bool = False
    warmup: int = 20  # sequential warm-up requests per path (plus one burst of max N)
    ttft_n: int = 300  # sequential requests per path
    ttft_tokens: int = 8  # short answers
    gap_s: float = 0.01  # pause between sequential requests (lets RQ finish the last job)
    relay_tokens: int = 20_000
    relay_repeats: int = 7
    ns: tuple[int, ...] = (1, 16, 64, 256)
    conc_tokens: int = 100
    conc_rate: float = 25.0  # tokens/s per stream, a realistic GPU rate
    real_n: int = 10  # sequential requests per path on the real model (0: no real-model section)
    real_tokens: int = 64
    kill_n: int = 5  # streams whose worker is SIGKILLed mid-way (0: no such section)
    out: Path = REPO / "bench" / "results"
    strict: bool = False
    # Redis through Sentinel (a master, a replica, three sentinels), replicas acknowledging writes.
    sentinel: bool = False

    def describe(self) -> dict[str, Any]:
        """The parameters as plain values, for the report."""
        d = asdict(self)
        d["out"] = str(self.out)
        return d


QUICK = dict(quick=True, warmup=3, ttft_n=20, relay_tokens=2000, relay_repeats=2, ns=(1, 4), conc_tokens=20,
             real_n=2, real_tokens=16, kill_n=2)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> Params:
    """Params from the command line."""
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Runner vs direct Ollama (fake): added TTFT, relay cost per token, N concurrent streams, memory.",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes for CI (still checks every stream)")
    ap.add_argument("--n", help="comma-separated concurrency levels, e.g. 1,16,64,256")
    ap.add_argument("--out", type=Path, help="directory for results.md and concurrency.png")
    ap.add_argument("--ttft-n", type=int, help="sequential requests per path for TTFT")
    ap.add_argument("--relay-tokens", type=int, help="tokens in the long relay stream")
    ap.add_argument("--stream-tokens", type=int, help="tokens per stream in the concurrency scenario")
    ap.add_argument("--rate", type=float, help="tokens/s per stream in the concurrency scenario")
    ap.add_argument("--real-n", type=int, help="requests per path on the real model (0 skips that section)")
    ap.add_argument("--kill-n", type=int, help="streams whose serving worker is SIGKILLed (0 skips that section)")
    ap.add_argument("--strict", action="store_true", help="also exit non-zero (3) when a target is missed")
    ap.add_argument(
        "--sentinel", action="store_true", help="Redis as a master, a replica and three sentinels (Redis Sentinel)"
    )
    a = ap.parse_args(argv)
    p = replace(Params(), **QUICK) if a.quick else Params()  # type: ignore[arg-type]
    changes: dict[str, Any] = {"strict": a.strict, "sentinel": a.sentinel}
    if a.n:
        changes["ns"] = tuple(sorted({int(x) for x in a.n.split(",") if x.strip()}))
        if not changes["ns"] or min(changes["ns"]) < 1:
            ap.error("--n needs positive integers")
    for name, value in (("out", a.out), ("ttft_n", a.ttft_n), ("relay_tokens", a.relay_tokens),
                        ("conc_tokens", a.stream_tokens), ("conc_rate", a.rate), ("real_n", a.real_n),
                        ("kill_n", a.kill_n)):  # fmt: skip
        if value is not None:
            changes[name] = value
    return replace(p, **changes)
