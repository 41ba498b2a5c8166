"""The small JSON answers: health, version, hardware (go-livepeer reads them once), and the fleet."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from common.fleet import WorkerRecord, capacity, fleet_status, model_features, model_status, why_unserved
from common.settings import Settings

PIPELINE = "llm"


def health(records: list[WorkerRecord] | None, settings: Settings, model_id: str | None) -> dict[str, str]:
    """`{"status": ...}`: LOADING until the models are served, OK after; never ERROR for a passing state."""
    if records is None:
        return {"status": "LOADING"}
    if model_id is None:
        return {"status": fleet_status(records, [m.model_id for m in settings.models])}
    return {"status": model_status(records, model_id)}


def version(model_id: str, runner_version: str) -> dict[str, str]:
    """`/version`: the pipeline, the model_id go-livepeer matches against (ai/worker/utils.go
    LowestVersion keeps only answers whose model_id is the aiModels.json entry's), our version."""
    return {"pipeline": PIPELINE, "model_id": model_id, "version": runner_version}


def _gpus(records: list[WorkerRecord], model_id: str | None) -> dict[str, WorkerRecord]:
    """The fleet's GPUs, one record each, numbered "0", "1", … in (host, GPU index) order; for a
    model, those of the workers that serve it or are still provisioning and may.

    go-livepeer reads /hardware/info once, as soon as /health first answers, LOADING included
    (ai/worker/container.go NewRunnerContainer): workers are usually still pulling or loading
    then, and their GPUs are what it must record. A fleet spans hosts and containers (each of
    which numbers its own GPUs from 0), so the keys are positions in the fleet; each entry's
    `id` is the GPU's UUID.
    """
    gpus: dict[str, WorkerRecord] = {}
    seen: set[str] = set()
    for record in records:  # read_fleet sorts by host, then GPU index
        if record.gpu is None or record.gpu.uuid in seen or (model_id is not None and not record.will_serve(model_id)):
            continue
        seen.add(record.gpu.uuid)
        gpus[str(len(gpus))] = record
    return gpus


# The fields of each GPU entry, per answer (GPUComputeInfo and GPUUtilizationInfo in the contract).
_INFO_FIELDS = ("memory_total", "memory_free", "major", "minor")
_STATS_FIELDS = ("memory_total", "memory_free", "utilization_compute", "utilization_memory")


def hardware(records: list[WorkerRecord] | None, model_id: str, scope: str | None, *, stats: bool) -> dict[str, Any]:
    """`/hardware/info` (identity, memory, compute capability) or `/hardware/stats` (memory and
    utilisation, as last measured) of each GPU of the fleet, or of those serving `scope`."""
    fields = _STATS_FIELDS if stats else _INFO_FIELDS
    gpus = {}
    for key, record in _gpus(records or [], scope).items():
        gpu = record.gpu
        assert gpu is not None
        gpus[key] = {"id": gpu.uuid, "name": gpu.name, **{field: getattr(gpu, field) for field in fields}}
    return {"pipeline": PIPELINE, "model_id": model_id, "gpu_stats" if stats else "gpu_info": gpus}


def fleet(records: list[WorkerRecord] | None, settings: Settings) -> dict[str, Any]:
    """`/fleet` (for operators): each model's capacity and status, and every worker's announcement."""
    if records is None:
        return {"redis": "unreachable", "models": {}, "workers": []}
    models = {}
    for spec in settings.models:
        cap = capacity(records, spec.model_id)
        models[spec.model_id] = {
            "tag": spec.tag,
            "status": model_status(records, spec.model_id),
            "capacity": cap,
            "workers": [r.name for r in records if r.serves(spec.model_id)],
            "note": "" if cap else why_unserved(records, spec.model_id),
            # The OpenAI API's options its workers' engines take (null while none serves it).
            "features": model_features(records, spec.model_id),
        }
    return {"redis": "ok", "models": models, "workers": [asdict(r) for r in records]}
