"""The fake Ollama's model scheduler, after ollama/ollama server/sched.go (read at fb3076099).

What it keeps from Ollama, because the runner has to live with it:
- A request for a loaded model skips the pending queue and refreshes the model's keep-alive
  (getRunner → useLoadedRunner), undoing an eviction mark (sessionDuration = 0).
- Other requests wait in one FIFO that is handled one request at a time (processPending). With
  `max_loaded` models loaded, it marks a runner to unload (findRunnerToUnload: an idle one, else
  the shortest keep-alive) and waits for an unload, which only happens once that runner is idle
  with a zero keep-alive (processCompleted). Steady traffic on the loaded model starves it.
- A load belongs to the request that started it: it runs under that request's context
  (llm/llama_server.go, WaitUntilRunning) and is aborted when that client leaves, for every
  request sharing it too; the next request loads from zero.
- /api/ps waits while a model loads: loadedModels locks each runner's refMu, which load() holds
  until the runner is running or aborted.
- `keep_alive: 0` with no messages expires the runner (server/routes.go ChatHandler →
  expireRunner): at once if idle, else when its requests end, unless one refreshes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOAD_ABORTED = "timed out waiting for llama-server to start: context canceled"


class LoadAborted(Exception):
    """The load this request shared was aborted by the client that started it."""


@dataclass(eq=False)
class Runner:
    """One loaded (or loading) model: its launch options, requests using it and keep-alive."""

    tag: str
    num_ctx: int
    shift: bool
    session: float  # seconds; math.inf = forever; 0 = unload when idle
    refs: int = 0
    loading: bool = True
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    timer: asyncio.TimerHandle | None = None
    expires_at: float = math.inf  # time.monotonic()


@dataclass(eq=False)
class _Pending:
    tag: str
    num_ctx: int
    shift: bool
    session: float
    answer: asyncio.Future[tuple[Runner, bool]]  # (runner, True if this request must load it)


class Scheduler:
    """Ollama's scheduler, in the fake's event loop; `on_change` mirrors state for tests."""

    def __init__(self, max_loaded: int, on_change: Callable[[dict[str, float]], None]) -> None:
        self.max_loaded = max_loaded  # 0: no limit (Ollama's default is 3 per GPU; tests use ≤ 2)
        self.runners: dict[str, Runner] = {}
        self.unloads = 0
        self._on_change = on_change
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._unloaded = asyncio.Event()
        self._task = asyncio.ensure_future(self._process_pending())

    def close(self) -> None:
        """Stop the pending loop and every timer."""
        self._task.cancel()
        for runner in self.runners.values():
            if runner.timer:
                runner.timer.cancel()

    def _changed(self) -> None:
        self._on_change({t: r.expires_at if r.refs == 0 else math.inf for t, r in self.runners.items()})

    async def acquire(self, tag: str, num_ctx: int, shift: bool, session: float, load_s: float) -> int:
        """Get a running runner for this request (loading it if needed); returns load ns."""
        t0 = time.monotonic_ns()
        runner = self.runners.get(tag)
        if runner is not None and (runner.num_ctx, runner.shift) == (num_ctx, shift):
            self._use(runner, session)  # skips the queue: sched.go getRunner
            owner = False
        else:
            pending = _Pending(tag, num_ctx, shift, session, asyncio.get_running_loop().create_future())
            self._queue.put_nowait(pending)
            try:
                runner, owner = await pending.answer
            except asyncio.CancelledError:
                if pending.answer.done() and not pending.answer.cancelled():
                    self._abort_or_release(*pending.answer.result())
                raise
        if owner:
            await self._load(runner, load_s)
        else:
            try:
                await asyncio.shield(runner.ready)
            except LoadAborted:
                self.release(runner.tag)
                raise
            except asyncio.CancelledError:
                self.release(runner.tag)
                raise
        return max(time.monotonic_ns() - t0, 1_000_000)

    def _abort_or_release(self, runner: Runner, owner: bool) -> None:
        if owner:
            self._abort(runner)
        else:
            self.release(runner.tag)

    async def _load(self, runner: Runner, load_s: float) -> None:
        try:
            if load_s > 0:
                await asyncio.sleep(load_s)  # the requester's context: cancelled when it leaves
        except asyncio.CancelledError:
            self._abort(runner)
            raise
        runner.loading = False
        runner.refs += 1
        if not runner.ready.done():
            runner.ready.set_result(None)
        self._changed()

    def _abort(self, runner: Runner) -> None:
        """The owner left during the load: everyone sharing it fails, the model is gone."""
        if not runner.ready.done():
            runner.ready.set_exception(LoadAborted(LOAD_ABORTED))
            runner.ready.exception()  # retrieved: sharers may be gone too
        self._unload(runner)

    def _use(self, runner: Runner, session: float) -> None:
        # sched.go useLoadedRunner: refCount++, stop the expiry timer, take the request's keep-alive.
        runner.refs += 1
        if runner.timer:
            runner.timer.cancel()
            runner.timer = None
        runner.session = session
        runner.expires_at = math.inf
        self._changed()

    def release(self, tag: str) -> None:
        """A request using the runner ended (finished, failed or its client left)."""
        runner = self.runners.get(tag)
        if runner is None:
            return
        runner.refs -= 1
        if runner.refs > 0:
            return
        # sched.go processCompleted: idle with a zero keep-alive unloads, else a timer starts.
        if runner.session <= 0:
            self._unload(runner)
        elif not math.isinf(runner.session):
            runner.expires_at = time.monotonic() + runner.session
            runner.timer = asyncio.get_running_loop().call_later(runner.session, self._expire, runner)
        self._changed()

    def _expire(self, runner: Runner) -> None:
        runner.timer = None
        if runner.refs <= 0:
            self._unload(runner)

    def expire(self, tag: str) -> None:
        """`keep_alive: 0` with no messages: unload once idle (sched.go expireRunner)."""
        runner = self.runners.get(tag)
        if runner is None:
            return
        if runner.timer:
            runner.timer.cancel()
            runner.timer = None
        runner.session = 0
        if runner.refs <= 0 and not runner.loading:
            self._unload(runner)

    def _unload(self, runner: Runner) -> None:
        if self.runners.get(runner.tag) is runner:
            del self.runners[runner.tag]
            if runner.timer:
                runner.timer.cancel()
            self.unloads += 1
            self._unloaded.set()
            self._changed()

    async def wait_loads(self) -> None:
        """What /api/ps does first: wait for every runner still loading (its refMu is held)."""
        for runner in list(self.runners.values()):
            with contextlib.suppress(LoadAborted):
                await asyncio.shield(runner.ready)

    async def _process_pending(self) -> None:
        while True:
            pending = await self._queue.get()
            if pending.answer.done():  # its client left while it waited
                continue
            while True:
                runner = self.runners.get(pending.tag)
                if runner is not None and (runner.num_ctx, runner.shift) == (pending.num_ctx, pending.shift):
                    self._use(runner, pending.session)
                    if not pending.answer.done():
                        pending.answer.set_result((runner, False))
                    else:
                        self.release(runner.tag)
                    break
                if runner is not None:
                    victim = runner  # needsReload: other num_ctx or shift
                elif self.max_loaded and len(self.runners) >= self.max_loaded:
                    victim = self._runner_to_unload()
                else:
                    runner = Runner(pending.tag, pending.num_ctx, pending.shift, pending.session)
                    if pending.answer.done():
                        break  # left meanwhile: Ollama's load would fail on its cancelled context
                    self.runners[pending.tag] = runner
                    self._changed()
                    pending.answer.set_result((runner, True))
                    break
                # Mark it to unload once idle, and wait for an unload (any), never for the requester.
                self._unloaded.clear()
                if victim.timer:
                    victim.timer.cancel()
                    victim.timer = None
                victim.session = 0
                if victim.refs <= 0 and not victim.loading:
                    self._unload(victim)
                await self._unloaded.wait()

    def _runner_to_unload(self) -> Runner:
        """sched.go findRunnerToUnload: an idle runner, else the one with the shortest keep-alive."""
        ordered = sorted(self.runners.values(), key=lambda r: (r.session, r.tag))
        return next((r for r in ordered if r.refs == 0), ordered[0])
