"""What waiting for a replica costs one write: the job placement script alone, and with `WAIT 1 <ms>`.

`python -m bench.wait_cost [--n 2000] [--timeout-ms 50]` starts a master and a replica on
loopback, then times N placements (the web's own script, through common.acks as the web sends
it) each way, alternating, and prints the percentiles of both and of their difference. It is the
figure behind REDIS_WAIT_MS and the default of REDIS_WAIT_REPLICAS (see docs/redis-ha.md).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from redis import Redis

from bench.procs import spawn, stop_all, wait_until
from common.acks import Acks
from ops.supervise import free_port
from web.placement import PLACE_SCRIPT

REPO = Path(__file__).resolve().parent.parent


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return (f"p50 {statistics.median(ordered):.3f} ms, p90 {pick(0.9):.3f}, p99 {pick(0.99):.3f}, "
            f"p99.9 {pick(0.999):.3f}, max {ordered[-1]:.3f}")  # fmt: skip


def measure(n: int, timeout_ms: int) -> None:
    """Start the pair, time `n` placements each way, print the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="llm-wait-cost-"))
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    children = []
    try:
        ports = free_port(), free_port()
        for name, port, extra in (("master", ports[0], []), ("replica", ports[1], ["--replicaof", "127.0.0.1",
                                                                                    str(ports[0])])):  # fmt: skip
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(workdir), "--dbfilename", f"{name}.rdb", *extra]  # fmt: skip
            children.append(spawn(name, argv, {}, workdir, REPO))
        master, replica = Redis(port=ports[0]), Redis(port=ports[1])
        wait_until(children[1], lambda: replica.info("replication")["master_link_status"] == "up", "replica in sync")
        script = master.register_script(PLACE_SCRIPT)
        plain, acked = Acks(0, timeout_ms), Acks(1, timeout_ms)
        times: dict[str, list[float]] = {"without WAIT": [], "with WAIT 1": []}
        for i in range(2 * n):
            acks, label = (plain, "without WAIT") if i % 2 else (acked, "with WAIT 1")
            job = uuid.uuid4().hex
            keys = ["rq:queue:bench", "rq:wip:bench", f"rq:job:{job}", "rq:queues"]
            began = time.perf_counter()
            acks.script(script, keys, [-1, 60, job, "0", "status", "queued", "data", "x" * 400])
            times[label].append((time.perf_counter() - began) * 1000)
            master.delete(f"rq:job:{job}")
            master.lpop("rq:queue:bench")
        for label, samples in times.items():
            print(f"{label:>13}: {_percentiles(samples)}")
        added = [a - b for a, b in zip(times["with WAIT 1"], times["without WAIT"], strict=True)]
        print(f"{'added':>13}: median {statistics.median(added):.3f} ms over {n} pairs; "
              f"{'WAIT paused (a timeout)' if not acked.active else 'no WAIT timed out'}")  # fmt: skip
    finally:
        stop_all(children)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench.wait_cost`."""
    ap = argparse.ArgumentParser(prog="python -m bench.wait_cost", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="placements each way (default 2000)")
    ap.add_argument("--timeout-ms", type=int, default=50, help="WAIT's timeout (default 50, REDIS_WAIT_MS)")
    a = ap.parse_args(argv)
    measure(a.n, a.timeout_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
