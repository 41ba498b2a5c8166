"""The small JSON answers go-livepeer reads once at start: health, version, hardware."""

from __future__ import annotations

from typing import Any

from common.fleet import WorkerRecord, fleet_status, model_status
from common.settings import Settings
from common.version import __version__

PIPELINE = "llm"


def health(records: list[WorkerRecord] | None, settings: Settings, model_id: str | None) -> dict[str, str]:
    """`{"status": ...}`: LOADING until the models are served, OK after; never ERROR for a passing state."""
    if records is None:
        return {"status": "LOADING"}
    if model_id is None:
        return {"status": fleet_status(records, [m.model_id for m in settings.models])}
    return {"status": model_status(records, model_id)}


def version(model_id: str) -> dict[str, str]:
    """`/version`: the pipeline, the model_id go-livepeer matches against, our version."""
    return {"pipeline": PIPELINE, "model_id": model_id, "version": __version__}


def _gpus(records: list[WorkerRecord], model_id: str | None) -> dict[str, WorkerRecord]:
    """The fleet's GPUs (one record each), keyed by index, or host/index across several hosts."""
    chosen = [r for r in records if r.gpu is not None and (model_id is None or r.serves(model_id))]
    several_hosts = len({r.host for r in chosen}) > 1
    gpus: dict[str, WorkerRecord] = {}
    seen: set[str] = set()
    for record in chosen:
        assert record.gpu is not None
        if record.gpu.uuid in seen:
            continue
        seen.add(record.gpu.uuid)
        key = f"{record.host}/{record.gpu.index}" if several_hosts else str(record.gpu.index)
        gpus[key] = record
    return gpus


def hardware_info(records: list[WorkerRecord] | None, model_id: str, scope: str | None) -> dict[str, Any]:
    """`/hardware/info`: id, name, memory and compute capability of each GPU (serving `scope`, if set)."""
    info = {}
    for key, record in _gpus(records or [], scope).items():
        gpu = record.gpu
        assert gpu is not None
        info[key] = {
            "id": gpu.uuid,
            "name": gpu.name,
            "memory_total": gpu.memory_total,
            "memory_free": gpu.memory_free,
            "major": gpu.major,
            "minor": gpu.minor,
        }
    return {"pipeline": PIPELINE, "model_id": model_id, "gpu_info": info}


def hardware_stats(records: list[WorkerRecord] | None, model_id: str, scope: str | None) -> dict[str, Any]:
    """`/hardware/stats`: memory and utilisation of each GPU (serving `scope`, if set), as last measured."""
    stats = {}
    for key, record in _gpus(records or [], scope).items():
        gpu = record.gpu
        assert gpu is not None
        stats[key] = {
            "id": gpu.uuid,
            "name": gpu.name,
            "memory_total": gpu.memory_total,
            "memory_free": gpu.memory_free,
            "utilization_compute": gpu.utilization_compute,
            "utilization_memory": gpu.utilization_memory,
        }
    return {"pipeline": PIPELINE, "model_id": model_id, "gpu_stats": stats}
