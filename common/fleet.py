"""The fleet registry: each worker announces its GPU, models and slots; the web reads them all."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from redis import Redis

from common import keys

HEARTBEAT_S = 2.0
# An announcement outlives a few missed heartbeats, no more: a dead worker leaves the fleet fast.
RECORD_TTL_S = 6

PROVISIONING, READY, STOPPING = "provisioning", "ready", "stopping"
WORKER_DEATHS = "worker_deaths"


@dataclass
class GpuInfo:
    """What NVML says about one GPU (bytes and percent)."""

    index: int
    uuid: str
    name: str
    memory_total: int
    memory_free: int
    major: int
    minor: int
    utilization_compute: int = 0
    utilization_memory: int = 0


@dataclass
class ModelFit:
    """A worker's verdict on one configured model."""

    tag: str
    installed: bool = False
    need_bytes: int | None = None
    fits: bool = False
    loaded: bool = False
    note: str = ""
    # What Ollama runs it with: its family, parallel sequences (0: the worker's slots) and context.
    family: str = ""
    slots: int = 0
    num_ctx: int = 0
    # A pull in progress: Ollama's status line and bytes (empty once installed).
    pull: str = ""
    pull_completed: int = 0
    pull_total: int = 0
    # Whether this worker's engine continues a trailing assistant message for this model (a
    # continuation job), and why or why not, for operators.
    continuation: bool = False
    continuation_note: str = ""
    # What the engine takes for this model beyond plain chat, by the OpenAI API's field names
    # (`tools`, `tool_choice`, `response_format`): see FEATURES.
    features: list[str] = field(default_factory=list)


@dataclass
class WorkerRecord:
    """One worker's announcement."""

    name: str
    host: str
    pid: int
    version: str
    ollama_url: str
    state: str = PROVISIONING
    slots: int = 1
    busy: int = 0
    gpu: GpuInfo | None = None
    vram_budget: int | None = None
    models: dict[str, ModelFit] = field(default_factory=dict)
    listening: list[str] = field(default_factory=list)
    # The model schedule of its GPU: the model being loaded now, and model switches since start.
    loading: str = ""
    switches: int = 0
    updated: float = 0.0
    # helper loop → times it died and was restarted in this worker process (common.guard)
    restarts: dict[str, int] = field(default_factory=dict)
    # The engine: "ollama" (ollama_url) or "openai" (an OpenAI-compatible server at engine_url).
    backend: str = "ollama"
    engine_url: str = ""
    engine_note: str = ""
    # Whether the worker hears RQ's commands and the web's cancels now (its pub/sub subscription).
    command_channel_up: bool = False

    def can_serve(self, model_id: str) -> bool:
        """Whether the model is installed on this worker's Ollama and fits its GPU."""
        fit = self.models.get(model_id)
        return fit is not None and fit.fits and fit.installed

    def serves(self, model_id: str) -> bool:
        """Whether this worker takes jobs for the model now."""
        return self.state == READY and self.can_serve(model_id)

    def can_continue(self, model_id: str) -> bool:
        """Whether this worker serves the model now and can run a continuation job for it."""
        fit = self.models.get(model_id)
        return self.serves(model_id) and fit is not None and fit.continuation

    def will_serve(self, model_id: str) -> bool:
        """Whether this worker serves the model, or is still provisioning and has not ruled it out."""
        if self.state == PROVISIONING:
            return model_id not in self.models or self.can_serve(model_id)
        return self.serves(model_id)

    def to_json(self) -> str:
        """Serialise for Redis."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerRecord:
        """Parse an announcement; raises ValueError/TypeError/KeyError if malformed.

        Fields this version does not know are left out: a newer worker's record stays readable
        while the fleet is upgraded (an unreadable one would count as a dead worker).
        """
        data: dict[str, Any] = json.loads(raw)
        gpu = data.pop("gpu", None)
        models = data.pop("models", {})
        return cls(
            gpu=GpuInfo(**gpu) if gpu else None,
            models={m: ModelFit(**_known(ModelFit, fit)) for m, fit in models.items()},
            **_known(cls, data),
        )


def _known(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    """The entries of `data` that are fields of the dataclass `kind`."""
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in data.items() if k in names}


def announce(redis: Redis, record: WorkerRecord) -> None:
    """Publish or refresh a worker's record (expires after RECORD_TTL_S unless refreshed)."""
    record.updated = time.time()
    with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.fleet_worker(record.name), record.to_json(), ex=RECORD_TTL_S)
        pipe.sadd(keys.fleet_set(), record.name)
        pipe.execute()


def withdraw(redis: Redis, name: str) -> None:
    """Remove a worker's record at once (clean shutdown)."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.delete(keys.fleet_worker(name))
        pipe.srem(keys.fleet_set(), name)
        pipe.execute()


def read_fleet(redis: Redis) -> list[WorkerRecord]:
    """All live workers' records, sorted by host and GPU; forgets names whose record expired."""
    names = sorted(n.decode() if isinstance(n, bytes) else n for n in redis.smembers(keys.fleet_set()))
    if not names:
        return []
    raws = redis.mget([keys.fleet_worker(n) for n in names])
    records, gone = [], []
    for name, raw in zip(names, raws, strict=False):
        if raw is None:
            gone.append(name)
            continue
        try:
            records.append(WorkerRecord.from_json(raw))
        except (ValueError, TypeError, KeyError):
            gone.append(name)
    if gone:
        _forget(redis, gone)
    records.sort(key=lambda r: (r.host, r.gpu.index if r.gpu else -1, r.name))
    return records


def _forget(redis: Redis, names: list[str]) -> None:
    """Drop workers whose record expired: they died without withdrawing. Count each death once."""
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.srem(keys.fleet_set(), name)
        removed = sum(pipe.execute())
    if removed:
        redis.hincrby(keys.metrics_counters(), WORKER_DEATHS, removed)


def worker_deaths(redis: Redis) -> int:
    """Workers seen to vanish without a clean shutdown, fleet-wide, since Redis started."""
    return int(redis.hget(keys.metrics_counters(), WORKER_DEATHS) or 0)


def model_slots(record: WorkerRecord, model_id: str) -> int:
    """Sequences the worker's Ollama really runs at once for the model (some architectures: 1)."""
    fit = record.models.get(model_id)
    return min(record.slots, fit.slots) if fit is not None and fit.slots else record.slots


def capacity(records: list[WorkerRecord], model_id: str) -> int:
    """Slots of the ready workers that serve the model: the `capacity` for aiModels.json."""
    return sum(model_slots(r, model_id) for r in records if r.serves(model_id))


# The OpenAI API's request fields that only some engines or models take.
FEATURES = ("tools", "tool_choice", "response_format")


def model_features(records: list[WorkerRecord], model_id: str) -> list[str] | None:
    """The features every ready worker serving the model takes (a job may land on any of them);
    None while none serves it."""
    serving = [r.models[model_id] for r in records if r.serves(model_id)]
    if not serving:
        return None
    return [f for f in FEATURES if all(f in fit.features for fit in serving)]


def fleet_status(records: list[WorkerRecord], model_ids: list[str]) -> str:
    """`OK` once every model is served or judged too big by every ready worker, else `LOADING`."""
    if not records or any(r.state == PROVISIONING for r in records):
        return "LOADING"
    ready = [r for r in records if r.state == READY]
    if not ready:
        return "LOADING"
    for model_id in model_ids:
        if any(r.serves(model_id) for r in ready):
            continue
        judged_too_big = all(
            (fit := r.models.get(model_id)) is not None and fit.installed and not fit.fits for r in ready
        )
        if not judged_too_big:
            return "LOADING"
    return "OK"


def model_status(records: list[WorkerRecord], model_id: str) -> str:
    """`OK` when a ready worker serves the model, else `LOADING`."""
    return "OK" if any(r.serves(model_id) for r in records) else "LOADING"


def why_unserved(records: list[WorkerRecord], model_id: str) -> str:
    """A sentence for a person on why no worker serves the model right now."""
    if not records:
        return f"no worker is running for model {model_id!r} (workers starting, or none connected to Redis)"
    needs = [fit.need_bytes for r in records if (fit := r.models.get(model_id)) and fit.need_bytes]
    budgets = [r.vram_budget for r in records if r.vram_budget]
    if needs and budgets and all(not r.models[model_id].fits for r in records if model_id in r.models):
        return (
            f"model {model_id!r} needs about {max(needs) / 2**30:.1f} GiB of VRAM; the largest GPU in "
            f"this runner's fleet offers {max(budgets) / 2**30:.1f} GiB"
        )
    notes = sorted({fit.note for r in records if (fit := r.models.get(model_id)) and fit.note})
    if any(r.state == PROVISIONING for r in records):
        return f"model {model_id!r} is not ready yet: workers are still starting (pulling or loading models)"
    detail = f": {'; '.join(notes)}" if notes else ""
    return f"no worker can serve model {model_id!r} right now{detail}"
