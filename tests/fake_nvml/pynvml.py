"""A stand-in for nvidia-ml-py's `pynvml`, put first on PYTHONPATH by tests.

The GPUs it reports come from the FAKE_NVML_GPUS environment variable: a JSON list of objects
with `name`, `uuid`, `memory_total`, `memory_free` (bytes), `major`, `minor`, `util_gpu`,
`util_mem`. Without the variable, nvmlInit fails as it does on a host without the driver.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

NVML_ERROR_LIBRARY_NOT_FOUND = 12


class NVMLError(Exception):
    """Mirrors pynvml.NVMLError."""


def _gpus() -> list[dict[str, Any]]:
    raw = os.environ.get("FAKE_NVML_GPUS")
    if raw is None:
        raise NVMLError("NVML Shared Library Not Found")
    gpus: list[dict[str, Any]] = json.loads(raw)
    return gpus


def nvmlInit() -> None:
    """Fails like the real one when no driver (no FAKE_NVML_GPUS) is present."""
    _gpus()


def nvmlShutdown() -> None:
    """Nothing to release."""


def nvmlDeviceGetCount() -> int:
    """Number of fake GPUs."""
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> dict[str, Any]:
    """The fake GPU's record serves as its handle."""
    gpus = _gpus()
    if not 0 <= index < len(gpus):
        raise NVMLError("Invalid Argument")
    return gpus[index]


def nvmlDeviceGetName(handle: dict[str, Any]) -> str:
    """GPU name."""
    return str(handle["name"])


def nvmlDeviceGetUUID(handle: dict[str, Any]) -> str:
    """GPU UUID."""
    return str(handle["uuid"])


def nvmlDeviceGetMemoryInfo(handle: dict[str, Any]) -> SimpleNamespace:
    """Total, free and used bytes."""
    total, free = int(handle["memory_total"]), int(handle.get("memory_free", handle["memory_total"]))
    return SimpleNamespace(total=total, free=free, used=total - free)


def nvmlDeviceGetCudaComputeCapability(handle: dict[str, Any]) -> tuple[int, int]:
    """(major, minor)."""
    return int(handle.get("major", 8)), int(handle.get("minor", 6))


def nvmlDeviceGetUtilizationRates(handle: dict[str, Any]) -> SimpleNamespace:
    """Percent busy: compute and memory."""
    return SimpleNamespace(gpu=int(handle.get("util_gpu", 0)), memory=int(handle.get("util_mem", 0)))
