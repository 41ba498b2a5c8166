"""Figures, targets and PASS/MISS; the table for stdout and results.md."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bench.params import Params
from bench.sample import GROUPS
from bench.scenarios import ConcRow, Results, Verifier, pct

MB, KB = 1 << 20, 1 << 10


@dataclass
class Target:
    """One figure against its target."""

    name: str
    value: float
    unit: str
    limit: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the figure meets its target (NaN never does)."""
        return not math.isnan(self.value) and self.value <= self.limit

    def row(self) -> str:
        """A markdown table row."""
        return f"| {self.name} | {self.value:.{self._digits()}f} {self.unit} | ≤ {self.limit:g} {self.unit} | " \
               f"{'PASS' if self.ok else 'MISS'} | {self.detail} |"  # fmt: skip

    def _digits(self) -> int:
        if self.value == int(self.value) and not self.unit:
            return 0
        return 3 if abs(self.value) < 10 else 1


def _pair(res: Results, n: int) -> tuple[ConcRow | None, ConcRow | None]:
    return _row(res, n, "direct"), _row(res, n, "runner")


def _row(res: Results, n: int, path: str) -> ConcRow | None:
    return next((r for r in res.conc if r.n == n and r.path == path), None)


def targets(res: Results, p: Params) -> list[Target]:
    """Every target of the brief, computed from the results."""
    d, r = res.ttft.get("direct") or [math.nan], res.ttft.get("runner") or [math.nan]
    out = [
        Target("added TTFT p50 (runner p50 − direct p50)", pct(r, 50) - pct(d, 50), "ms", 5,
               f"direct {pct(d, 50):.2f}, runner {pct(r, 50):.2f}"),
        Target("added TTFT p99 (runner p99 − direct p99)", pct(r, 99) - pct(d, 99), "ms", 20,
               f"direct {pct(d, 99):.2f}, runner {pct(r, 99):.2f}"),
    ]  # fmt: skip
    o = res.ttft.get("openai") or [math.nan]
    out += [
        Target("OpenAI API added TTFT p50 (openai p50 − direct p50)", pct(o, 50) - pct(d, 50), "ms", 5,
               f"direct {pct(d, 50):.2f}, openai {pct(o, 50):.2f}"),
        Target("OpenAI API TTFT p50 / /llm TTFT p50", pct(o, 50) / pct(r, 50), "×", 1.05,
               f"/llm {pct(r, 50):.2f}, openai {pct(o, 50):.2f}"),
    ]  # fmt: skip
    rd, rr = res.relay_ms.get("direct") or [math.nan], res.relay_ms.get("runner") or [math.nan]
    md, mr = statistics.median(rd), statistics.median(rr)
    out.append(Target("relay cost per token ((runner − direct) / tokens)", (mr - md) * 1000 / p.relay_tokens, "µs", 50,
                      f"{p.relay_tokens} tokens: direct {p.relay_tokens / md * 1000:,.0f} tok/s, "
                      f"runner {p.relay_tokens / mr * 1000:,.0f} tok/s"))  # fmt: skip
    n = max(p.ns)
    cd, cr = _pair(res, n)
    co = _row(res, n, "openai")
    ok = (cr.ok if cr else 0) + (cd.ok if cd else 0) + (co.ok if co else 0)
    out.append(Target(f"N={n} streams wrong or incomplete (all paths)", 3 * n - ok, "", 0, f"{ok}/{3 * n} correct"))
    ratio = cr.wall_ms / cd.wall_ms if cd and cr else math.nan
    out.append(
        Target(
            f"N={n} wall time ratio runner/direct",
            ratio,
            "×",
            1.10,
            f"direct {cd.wall_ms if cd else math.nan:.0f} ms, runner {cr.wall_ms if cr else math.nan:.0f} ms"
            + ("" if ok == 3 * n else f" (not comparable: {3 * n - ok} streams failed)"),
        )
    )
    llm_ms, openai_ms = cr.wall_ms if cr else math.nan, co.wall_ms if co else math.nan
    out.append(Target(f"N={n} wall time ratio openai//llm", openai_ms / llm_ms, "×", 1.05,
                      f"/llm {llm_ms:.0f} ms, openai {openai_ms:.0f} ms"))  # fmt: skip
    rest, peak = res.rss.get("web_rest", 0), res.rss.get("web_peak", 0)
    out.append(
        Target(
            "web RSS at rest (gunicorn master + workers)",
            rest / MB,
            "MB",
            100,
            f"before warm-up {res.rss.get('web_cold', 0) / MB:.1f} MB",
        )
    )
    out.append(Target(f"web RSS per open stream ((peak − rest) / {n})", (peak - rest) / n / KB, "KB", 50,
                      f"peak {peak / MB:.1f} MB"))  # fmt: skip
    return out


def _conc_table(res: Results, p: Params) -> list[str]:
    lines = ["| N | direct wall ms | runner wall ms | ratio | per-stream p50 ms direct / runner | "
             "TTFT p50 ms direct / runner | TTFT max ms direct / runner | correct |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for n in p.ns:
        d, r = _pair(res, n)
        if d is None or r is None:
            continue
        lines.append(
            f"| {n} | {d.wall_ms:.0f} | {r.wall_ms:.0f} | {r.wall_ms / d.wall_ms:.3f} | "
            f"{d.stream_p50_ms:.0f} / {r.stream_p50_ms:.0f} | {d.ttft_p50_ms:.1f} / {r.ttft_p50_ms:.1f} | "
            f"{d.ttft_max_ms:.1f} / {r.ttft_max_ms:.1f} | {d.ok + r.ok}/{2 * n} |"
        )
    lines += ["", "The OpenAI API beside /llm (same streams, `stream_options.include_usage`):", "",
              "| N | /llm wall ms | openai wall ms | ratio openai//llm | TTFT p50 ms /llm / openai | correct |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for n in p.ns:
        r, o = _row(res, n, "runner"), _row(res, n, "openai")
        if r is None or o is None:
            continue
        lines.append(f"| {n} | {r.wall_ms:.0f} | {o.wall_ms:.0f} | {o.wall_ms / r.wall_ms:.3f} | "
                     f"{r.ttft_p50_ms:.1f} / {o.ttft_p50_ms:.1f} | {o.ok}/{n} |")  # fmt: skip
    return lines


def _cpu_table(res: Results, p: Params) -> list[str]:
    n = max(p.ns)
    cols: list[tuple[str, dict[str, float]]] = [("TTFT, both paths", res.ttft_cpu)]
    for path in ("direct", "runner"):
        cols.append((f"relay {path} ×{p.relay_repeats}", res.relay_cpu.get(path, {})))
    for row in sorted(res.conc, key=lambda r: r.path):
        if row.n == n:
            cols.append((f"N={n} {row.path}", row.cpu))
    lines = ["| process | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for group in GROUPS:
        lines.append(f"| {group} | " + " | ".join(f"{cpu.get(group, 0.0):.2f}" for _, cpu in cols) + " |")
    relay_r = res.relay_cpu.get("runner", {})
    tokens = p.relay_tokens * p.relay_repeats
    per_tok = ", ".join(f"{g} {relay_r.get(g, 0.0) / tokens * 1e6:.1f}" for g in GROUPS)
    return [*lines, "", f"Relay, runner path, CPU µs per token by process: {per_tok}."]


def render(res: Results, p: Params, v: Verifier, meta: dict[str, str]) -> tuple[str, bool]:
    """The whole report as markdown, and whether every target passed."""
    ts = targets(res, p)
    d, r = res.ttft.get("direct") or [math.nan], res.ttft.get("runner") or [math.nan]
    lines = [f"# Runner vs direct Ollama (fake){' — QUICK' if p.quick else ''}", ""]
    lines += [f"- **{k}**: {v}" for k, v in meta.items()]
    lines += ["", "## Targets", "", "| figure | value | target | result | detail |", "|---|---|---|---|---|"]
    lines += [t.row() for t in ts]
    lines += [
        "",
        f"**Streams checked: {v.checked}, wrong: {len(v.failures)}** (every stream: exact text, final chunk with "
        "finish_reason and usage, `[DONE]`, `choices[0]` in every chunk, read as go-livepeer reads it).",
    ]
    if v.kinds:
        lines += [
            "",
            "Wrong streams by kind (scenario `w`/`wb` = warm-up, `t` = TTFT, `r` = relay, `cN` = concurrency):",
        ]
        lines += [f"- {count} × {kind}" for kind, count in v.kinds.most_common(10)]
    lines += ["", "## Time to first token (sequential, warm, unpaced, "
              f"{p.ttft_tokens}-token answers, {len(d)} + {len(r)} requests)", "",
              "| path | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|"]  # fmt: skip
    for name, vals in (("direct", d), ("runner", r), ("openai", res.ttft.get("openai") or [math.nan])):
        lines.append(f"| {name} | {pct(vals, 50):.2f} | {pct(vals, 90):.2f} | {pct(vals, 99):.2f} | {max(vals):.2f} |")
    lines += ["", "Each TTFT split at the moment the fake Ollama received the chat request (p50 / p99, ms):", "",
              "| path | send → Ollama has the request | Ollama has it → first token at the client |",
              "|---|---|---|"]  # fmt: skip
    for name in ("direct", "runner", "openai"):
        to, back = res.to_ollama.get(name) or [math.nan], res.from_ollama.get(name) or [math.nan]
        lines.append(f"| {name} | {pct(to, 50):.2f} / {pct(to, 99):.2f} | {pct(back, 50):.2f} / {pct(back, 99):.2f} |")
    lines += ["", f"## Relay ({p.relay_tokens}-token unpaced stream, {p.relay_repeats} repeats, median)", "",
              "| path | runs ms | median ms | tokens/s |", "|---|---|---|---|"]  # fmt: skip
    for name in ("direct", "runner"):
        runs = res.relay_ms.get(name) or [math.nan]
        med = statistics.median(runs)
        lines.append(
            f"| {name} | {', '.join(f'{x:.0f}' for x in runs)} | {med:.0f} | {p.relay_tokens / med * 1000:,.0f} |"
        )
    lines += ["", f"## Concurrency ({p.conc_tokens} tokens per stream at {p.conc_rate:g} tokens/s, "
              "wall = first request sent → last stream finished)", ""]  # fmt: skip
    lines += _conc_table(res, p)
    rss = res.rss
    lines += ["", "## Memory (RSS)", "",
              "| process | before warm-up MB | at rest MB | peak N=max MB | per open stream KB |",
              "|---|---|---|---|---|"]  # fmt: skip
    for g in ("web", "worker"):
        per = (rss.get(f"{g}_peak", 0) - rss.get(f"{g}_rest", 0)) / max(p.ns) / KB
        lines.append(f"| {g} | {rss.get(f'{g}_cold', 0) / MB:.1f} | {rss.get(f'{g}_rest', 0) / MB:.1f} | "
                     f"{rss.get(f'{g}_peak', 0) / MB:.1f} | {per:.1f} |")  # fmt: skip
    lines += ["", "## CPU seconds by process (user + system)", "", *_cpu_table(res, p)]
    return "\n".join(lines) + "\n", all(t.ok for t in ts)
