"""The worker's GPU, read through NVML (nvidia-ml-py); absent NVML means a CPU worker."""

from __future__ import annotations

import logging
from typing import Any

from common.fleet import GpuInfo

logger = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuMonitor:
    """Reads one GPU's identity, memory and utilisation; `read()` is None without NVML or GPU."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._nvml: Any = None
        self._handle: Any = None
        self.error: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            if index >= count:
                self.error = f"GPU_INDEX={index} but NVML sees {count} GPU(s)"
                return
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception as exc:  # NVMLError subclasses, ImportError, OSError for a missing driver
            self.error = f"NVML unavailable: {exc}"

    def read(self) -> GpuInfo | None:
        """Current figures, or None if NVML is unavailable or fails now."""
        if self._handle is None:
            return None
        nvml, handle = self._nvml, self._handle
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                compute, mem_util = int(rates.gpu), int(rates.memory)
            except nvml.NVMLError:
                compute, mem_util = 0, 0
            return GpuInfo(
                index=self.index,
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
                memory_total=int(memory.total),
                memory_free=int(memory.free),
                major=int(major),
                minor=int(minor),
                utilization_compute=compute,
                utilization_memory=mem_util,
            )
        except Exception as exc:
            logger.warning("NVML read of GPU %d failed: %s", self.index, exc)
            return None


def list_gpus() -> list[int]:
    """Indices of the GPUs NVML sees on this host (empty without NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return list(range(pynvml.nvmlDeviceGetCount()))
    except Exception:
        return []
