"""concurrency.png: per-stream time of runner vs direct against N, and their wall ratio."""

from __future__ import annotations

from pathlib import Path

from bench.params import Params
from bench.scenarios import Results


def plot(res: Results, p: Params, path: Path) -> bool:
    """Write the plot; False (and nothing written) if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ns = [n for n in p.ns if {r.path for r in res.conc if r.n == n} == {"direct", "runner"}]
    rows = {(r.n, r.path): r for r in res.conc}
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, color in (("direct", "tab:blue"), ("runner", "tab:green")):
        walls = [rows[n, name].wall_ms / 1000 for n in ns]
        ax.plot(ns, walls, "o-", color=color, label=f"{name}: wall time (first sent → last done)")
        per = [rows[n, name].stream_p50_ms / 1000 for n in ns]
        ax.plot(ns, per, "s:", color=color, alpha=0.6, label=f"{name}: per-stream time, p50")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, labels=[str(n) for n in ns])
    ax.set_xlabel("concurrent streams N")
    ax.set_ylabel(f"seconds ({p.conc_tokens} tokens at {p.conc_rate:g} tok/s per stream)")
    ax2 = ax.twinx()
    ax2.plot(
        ns, [rows[n, "runner"].wall_ms / rows[n, "direct"].wall_ms for n in ns], "r^--", label="ratio runner/direct"
    )
    ax2.axhline(1.10, color="r", lw=0.8, ls=":", label="target 1.10")
    ax2.set_ylabel("wall ratio runner / direct", color="r")
    lo = min([1.0] + [rows[n, "runner"].wall_ms / rows[n, "direct"].wall_ms for n in ns])
    ax2.set_ylim(min(0.95, lo - 0.02), max(1.25, ax2.get_ylim()[1]))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax.set_title("Runner vs direct Ollama (fake), N concurrent paced streams")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
