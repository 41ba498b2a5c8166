"""`python -m bench.burst [--streams 64] [--slots 2] [--max-queue 2]`: a burst of streaming
requests, all sent at once, several times what the worker's slots and MAX_QUEUE hold.

go-livepeer cannot read the refusal of a stream (any non-200 becomes "unexpected status code"
and costs the orchestrator its place in the gateway's pool), so every stream of the burst must
get a 200 and a complete answer; the figure is how long the last one waited for its slot.
Prints one line of figures, read by go-livepeer's rules (tests/golivepeer.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from bench.client import Reply, sse_token, stream
from bench.stack import Stack
from tests.golivepeer import GoCrash, read_body

TOKENS, TOKENS_PER_S = 20, 50  # 0.4 s a stream


class BurstStack(Stack):
    """The bench stack with a small MAX_QUEUE: the burst is many times what it lets wait."""

    def __init__(self, workdir: Path, slots: int, max_queue: int) -> None:
        super().__init__(workdir, slots)
        self.max_queue = max_queue

    def _runner_env(self) -> dict[str, str]:
        env = super()._runner_env()
        env["MAX_QUEUE"] = str(self.max_queue)
        return env


async def burst(url: str, count: int) -> list[Reply]:
    """`count` streams sent together."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    bodies = [
        json.dumps({"messages": [{"role": "user", "content": f"burst {i}"}], "max_tokens": 64, "stream": True})
        for i in range(count)
    ]
    return await asyncio.gather(*(stream(parts.hostname, parts.port, "/llm", b.encode(), sse_token) for b in bodies))


def served(reply: Reply) -> bool:
    """A 200 whose stream go-livepeer reads to a finish_reason."""
    if reply.status != 200 or reply.error:
        return False
    try:
        return read_body(reply.body).finish_reason == "stop"
    except GoCrash:
        return False


def main(argv: list[str] | None = None) -> int:
    """Run one burst and print its figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        stack = BurstStack(Path(tmp), args.slots, args.max_queue)
        try:
            stack.start()
            stack.pace(tokens_per_s=TOKENS_PER_S, reply_tokens=TOKENS)
            replies = asyncio.run(burst(stack.web_url, args.streams))
        finally:
            stack.stop()
    ok = [r for r in replies if served(r)]
    statuses = sorted({r.status for r in replies})
    ttft = sorted(r.ttft_ms for r in ok)
    print(
        f"{args.streams} streams at once, {args.slots} slot(s), MAX_QUEUE {args.max_queue}, "
        f"{TOKENS} tokens at {TOKENS_PER_S}/s each: served {len(ok)}/{len(replies)} (statuses {statuses}); "
        f"time to first token median {statistics.median(ttft) / 1000:.2f} s, "
        f"longest {ttft[-1] / 1000:.2f} s; burst over in {max(r.total_ms for r in replies) / 1000:.2f} s"
        if ttft
        else f"served 0/{len(replies)} (statuses {statuses})"
    )
    return 0 if len(ok) == len(replies) else 1


if __name__ == "__main__":
    raise SystemExit(main())
