"""Per-process resident memory and CPU time of the stack (psutil), with a peak sampler."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil

from bench.stack import Stack

GROUPS = ("web", "worker", "redis", "fake-ollama", "client")


class Meter:
    """Resolves each group's processes (the web: gunicorn master + its workers) and reads them."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def procs(self, group: str) -> list[psutil.Process]:
        """The live processes of a group."""
        if group == "redis":  # every Redis process: with Sentinel, the nodes and the sentinels
            found = []
            for redis_pid in self.stack.redis_pids():
                with suppress(psutil.NoSuchProcess):
                    found.append(psutil.Process(redis_pid))
            return found
        pid = os.getpid() if group == "client" else self.stack.child(group).pid
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)] if group == "web" else [root]
        except psutil.NoSuchProcess:
            return []

    def rss(self, group: str) -> int:
        """Summed resident set size of a group, bytes."""
        total = 0
        for proc in self.procs(group):
            with suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each group."""
        out = {}
        for group in GROUPS:
            total = 0.0
            for proc in self.procs(group):
                try:
                    t = proc.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            out[group] = total
        return out

    @contextmanager
    def cpu_delta(self, into: dict[str, float]) -> Iterator[None]:
        """Fill `into` with the CPU seconds each group spent inside the block."""
        before = self.cpu()
        yield
        after = self.cpu()
        into.update({g: after[g] - before[g] for g in GROUPS})


class PeakRss:
    """Samples the web's and the worker's RSS every `interval` s in a thread; keeps the maxima."""

    def __init__(self, meter: Meter, interval: float = 0.05) -> None:
        self.meter = meter
        self.interval = interval
        self.peak = {"web": 0, "worker": 0}
        self._stop = threading.Event()
        self._web = meter.procs("web")
        self._worker = meter.procs("worker")
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sum(self, procs: list[psutil.Process]) -> int:
        total = 0
        for proc in procs:
            with suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while True:
            self.peak["web"] = max(self.peak["web"], self._sum(self._web))
            self.peak["worker"] = max(self.peak["worker"], self._sum(self._worker))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
