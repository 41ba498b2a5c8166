"""GPU discovery through NVML, with tests/fake_nvml standing in for the driver."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from common.settings import Settings
from tests.stack import FAKE_NVML
from worker.gpu import GpuMonitor, list_gpus
from worker.provision import vram_budget

GIB = 1 << 30
GPU = {"name": "NVIDIA GeForce RTX 3060", "uuid": "GPU-3060", "memory_total": 12 * GIB, "memory_free": 11 * GIB,
       "major": 8, "minor": 6, "util_gpu": 42, "util_mem": 7}  # fmt: skip


@pytest.fixture(autouse=True)
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML / "pynvml.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)


def test_reads_identity_memory_and_utilisation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVML_GPUS", json.dumps([GPU, GPU | {"uuid": "GPU-2"}]))
    assert list_gpus() == [0, 1]
    info = GpuMonitor(1).read()
    assert info is not None
    assert (info.index, info.uuid, info.name) == (1, "GPU-2", "NVIDIA GeForce RTX 3060")
    assert (info.memory_total, info.memory_free, info.major, info.minor) == (12 * GIB, 11 * GIB, 8, 6)
    assert (info.utilization_compute, info.utilization_memory) == (42, 7)


def test_an_index_nvml_does_not_see_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVML_GPUS", json.dumps([GPU]))
    monitor = GpuMonitor(2)
    assert monitor.read() is None
    assert monitor.error == "GPU_INDEX=2 but NVML sees 1 GPU(s)"


def test_without_a_driver_there_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKE_NVML_GPUS", raising=False)
    monitor = GpuMonitor(0)
    assert monitor.read() is None and "NVML" in (monitor.error or "")
    assert list_gpus() == []


def test_vram_budget_prefers_vram_mb_and_keeps_a_reserve() -> None:
    assert vram_budget(Settings(), 8 * GIB) == 7 * GIB
    assert vram_budget(Settings(vram_mb=24576), 8 * GIB) == 23 * GIB
    assert vram_budget(Settings(), None) is None
