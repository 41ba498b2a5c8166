"""The model schedule of one GPU: which model its Ollama holds, and deliberate switches between them.

Left to itself, Ollama starves a model switch (ollama/ollama server/sched.go): requests for the
loaded model skip the pending queue and refresh its keep-alive, undoing the eviction a request
for another model waits for. And a load belongs to the request that started it: if that client
leaves, the load is aborted for everyone waiting on it. So the worker never lets a job start a
load. It takes jobs only for the model it has loaded itself (a preload, tied to no client),
and switches deliberately: stop taking the old model's jobs, let the running ones finish,
unload it (`keep_alive: 0`), load the new one, then serve it. `routing.choose_switch` decides when.

Ollama's /api/ps can be slow (it waits while a load runs, server/sched.go loadedModels) and its
answer stale by the time it arrives: a model that our jobs used meanwhile is loaded whatever it
said, and while jobs run the model is not asked about at all. A model Ollama really dropped is
loaded again without draining anything (nothing runs then), and job intake never waits on a ps.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from rq.queue import Queue
from rq.utils import utcparse

from common import fleet, keys
from common.errors import BackendError
from common.fleet import WorkerRecord
from common.settings import Settings
from worker.claim import SwitchClaim
from worker.ollama_admin import OllamaAdmin, normalize_tag
from worker.routing import Waiting, choose_switch
from worker.slots import DEQUEUE_TIMEOUT_S, SlotWorker

logger = logging.getLogger(__name__)

TICK_S = 0.25
UNLOAD_WAIT_S = 60.0
RETRY_FAILED_LOAD_S = 30.0
# How often the schedule checks that Ollama still holds the model it serves.
CHECK_LOADED_S = 5.0


class ModelSchedule:
    """Owns the GPU's loaded model: loads it itself, switches when `choose_switch` says so."""

    def __init__(
        self, redis: Redis, record: WorkerRecord, admin: OllamaAdmin, settings: Settings, stop: threading.Event
    ) -> None:
        self.redis = redis
        self.record = record
        self.admin = admin
        self.settings = settings
        self.stop = stop
        self.worker: SlotWorker | None = None
        self.current: str | None = None
        self.since = time.monotonic()
        self.cost_s: dict[str, float] = {}
        self._failed_until: dict[str, float] = {}
        self._next_check = 0.0
        self._claim: SwitchClaim | None = None
        self._thread = threading.Thread(target=self._run, name="model-schedule", daemon=True)

    def served(self) -> list[str]:
        """Model ids this worker can serve (installed, fitting its GPU), in configured order."""
        return [m.model_id for m in self.settings.models if self.record.can_serve(m.model_id)]

    def start(self, worker: SlotWorker) -> None:
        """Begin scheduling `worker`'s queues (after the first model was loaded, if any)."""
        self.worker = worker
        self._serve_current()
        if self.current is not None:
            self._check_offload(self.current)
        self._thread.start()

    def load(self, model_id: str) -> bool:
        """Load a model with a preload tied to no client; True once Ollama holds it.

        No read timeout: Ollama answers when the model is loaded and fails the load itself when
        it stops progressing for OLLAMA_LOAD_TIMEOUT (llm/llama_server.go, WaitUntilRunning).
        """
        fit = self.record.models[model_id]
        self.record.loading = model_id
        started = time.monotonic()
        logger.info("loading %s (%s, num_ctx %d)", model_id, fit.tag, fit.num_ctx or self.settings.num_ctx)
        try:
            self._preload(fit.tag, fit.num_ctx or self.settings.num_ctx)
        except BackendError as exc:
            logger.error("loading %s failed: %s; retrying in %.0f s at the earliest", model_id, exc.msg,
                         RETRY_FAILED_LOAD_S)  # fmt: skip
            self._failed_until[model_id] = time.monotonic() + RETRY_FAILED_LOAD_S
            return False
        finally:
            self.record.loading = ""
        took = time.monotonic() - started
        self._note_cost(model_id, took)
        fit.loaded = True
        self.current, self.since = model_id, time.monotonic()
        logger.info("loaded %s in %.1f s", model_id, took)
        return True

    def _preload(self, tag: str, num_ctx: int) -> None:
        """The preload, in a helper thread so that a stop request is not stuck behind a long load."""
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                self.admin.preload(tag, num_ctx=num_ctx, keep_alive=self.settings.keep_alive, timeout=None)
                outcome.append(None)
            except BaseException as exc:  # handed to the waiting thread
                outcome.append(exc)

        helper = threading.Thread(target=call, name="model-load", daemon=True)
        helper.start()
        while helper.is_alive():
            self._keep_claim()
            if self.stop.wait(0.2):
                raise BackendError(f"loading {tag!r} abandoned: the worker is stopping", reason="shutdown")
        if outcome and outcome[0] is not None:
            raise outcome[0]

    def _note_cost(self, model_id: str, seconds: float) -> None:
        """Remember what switching to the model costs (a moving average of what it took)."""
        previous = self.cost_s.get(model_id)
        self.cost_s[model_id] = seconds if previous is None else 0.5 * previous + 0.5 * seconds

    def _run(self) -> None:
        while not self.stop.wait(TICK_S):
            try:
                self.tick()
            except (RedisError, OSError) as exc:
                logger.warning("model schedule: Redis unavailable: %s", exc)
            except Exception:
                logger.exception("model schedule: unexpected failure; trying again")

    def tick(self) -> None:
        """Look at the queues once and switch models if the policy says so."""
        worker = self.worker
        if worker is None or worker.stopping:
            return  # no switch while the worker drains to stop
        now = time.monotonic()
        if self.current is not None and now >= self._next_check:
            self._next_check = now + CHECK_LOADED_S
            self._reload_if_gone(worker, self.current)
        served = [m for m in self.served() if self._failed_until.get(m, 0.0) <= now]
        queues = self._queues(served)
        if not any(q.jobs for m, q in queues.items() if m != self.current):
            return  # nothing waits for another model: no switch to weigh
        others = [r for r in fleet.read_fleet(self.redis) if r.name != self.record.name]
        # A model another GPU holds, or is loading, is warm there: prefer that GPU for it.
        warm = {m for m in served if any(o.serves(m) and (o.models[m].loaded or o.loading == m) for o in others)}
        switch = choose_switch(self.current, now - self.since, worker.busy, queues, self.cost_s, warm,
                               self.settings.model_hold_s)  # fmt: skip
        if switch is None:
            return
        claim = SwitchClaim(self.redis, switch.model, self.record.name)
        if not claim.acquire():
            return
        self.record.loading = switch.model
        fleet.announce(self.redis, self.record)  # the others see it loading here at once
        self._claim = claim
        try:
            self._switch(worker, switch.model, switch.reason)
        finally:
            self._claim = None
            if not claim.release():
                logger.warning("model switch to %s: its claim had expired", switch.model)

    def _keep_claim(self) -> None:
        """Refresh the claim of the switch under way, if any (called while it waits)."""
        if self._claim is not None:
            self._claim.keep()

    def _reload_if_gone(self, worker: SlotWorker, model_id: str) -> None:
        """Load the current model again if Ollama dropped it (keep-alive ran out, Ollama restarted).

        Else the next job would make Ollama load it, and that load would belong to the job's client.
        Only asked while no job runs: a model our jobs use (streaming, or loading for them) is held.
        """
        if worker.busy:
            return
        taken = worker.taken_total
        try:
            loaded = self.admin.ps()
        except BackendError as exc:
            logger.warning("model schedule: cannot read Ollama's loaded models: %s", exc.msg)
            return
        if normalize_tag(self.record.models[model_id].tag) in loaded:
            return
        if worker.busy or worker.taken_total != taken:
            return  # jobs ran while /api/ps answered: its answer is stale, and the model in use
        logger.warning("Ollama no longer holds %s (keep-alive ran out or Ollama restarted); loading it again",
                       model_id)  # fmt: skip
        self.record.models[model_id].loaded = False
        self._reload(worker, model_id)

    def _reload(self, worker: SlotWorker, model_id: str) -> None:
        """Load the model it serves again: intake paused for the load (so no job starts it), nothing drained."""
        worker.set_queue_order([])
        self.record.listening = []
        self.current = None
        self.load(model_id)
        self._serve_current()

    def _queues(self, served: list[str]) -> dict[str, Waiting]:
        """Each model's queued jobs and the age of its oldest (from RQ's enqueued_at)."""
        queue_keys = [Queue.redis_queue_namespace_prefix + keys.queue_name(m) for m in served]
        with self.redis.pipeline(transaction=False) as pipe:
            for key in queue_keys:
                pipe.llen(key)
                pipe.lindex(key, 0)
            answers = pipe.execute()
        heads = {m: _text(head) for m, head in zip(served, answers[1::2], strict=True) if head}
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in heads.values():
                pipe.hget(Job.key_for(job_id), "enqueued_at")
            stamps = dict(zip(heads, pipe.execute(), strict=True))
        wall, queues = time.time(), {}
        for model_id, length in zip(served, answers[0::2], strict=True):
            oldest, stamp = 0.0, stamps.get(model_id)
            if stamp:
                try:
                    oldest = max(0.0, wall - utcparse(_text(stamp)).replace(tzinfo=UTC).timestamp())
                except ValueError:
                    oldest = 0.0
            queues[model_id] = Waiting(int(length), oldest)
        return queues

    def _switch(self, worker: SlotWorker, model_id: str, reason: str) -> None:
        """Stop taking the old model's jobs, let them finish, unload it, load the new one, serve it."""
        old = self.current
        started = time.monotonic()
        logger.info("model switch: %s → %s (%s)", old or "nothing", model_id, reason)
        was_listening = bool(self.record.listening)
        worker.set_queue_order([])
        self.record.listening = []
        # A dequeue already waiting may still hand over one job of the old model: let it land.
        if was_listening:
            self.stop.wait(DEQUEUE_TIMEOUT_S + 0.5)
        while worker.busy and not self.stop.wait(0.05):
            self._keep_claim()
        if self.stop.is_set():
            return
        if old is not None:
            self._unload(old)
            self.current = None
        if self.load(model_id):
            took = time.monotonic() - started
            if old is not None:
                self.record.switches += 1
                self._note_cost(model_id, took)  # the whole switch: drain, unload and load
            logger.info("model switch: %s → %s done in %.1f s", old or "nothing", model_id, took)
        self._serve_current()
        if self.current is not None:
            self._check_offload(self.current)  # after intake resumed: /api/ps may be slow

    def _unload(self, model_id: str) -> None:
        fit = self.record.models[model_id]
        try:
            self.admin.unload(fit.tag)
            deadline = time.monotonic() + UNLOAD_WAIT_S
            while normalize_tag(fit.tag) in self.admin.ps() and time.monotonic() < deadline:
                self._keep_claim()
                if self.stop.wait(0.1):
                    break
        except BackendError as exc:
            logger.warning("unloading %s: %s", model_id, exc.msg)
        fit.loaded = False

    def _serve_current(self) -> None:
        """Take jobs of the loaded model only, with as many slots as Ollama runs for it."""
        worker = self.worker
        if worker is None:
            return
        if self.current is None:
            worker.set_queue_order([])
            self.record.listening = []
            return
        fit = self.record.models[self.current]
        worker.set_queue_order([keys.queue_name(self.current)], slots=fit.slots or None)
        self.record.listening = [self.current]

    def _check_offload(self, model_id: str) -> None:
        tag = normalize_tag(self.record.models[model_id].tag)
        try:
            loaded = self.admin.ps().get(tag)
        except BackendError:
            return
        if loaded is not None and loaded.size_vram < loaded.size:
            logger.warning("%s is only partly on the GPU (%.2f of %.2f GiB in VRAM): it runs several times slower",
                           model_id, loaded.size_vram / 2**30, loaded.size / 2**30)  # fmt: skip


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
