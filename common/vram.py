"""How much GPU memory a model needs: weights + KV cache for its context and slots + compute.

Ground truth is Ollama's /api/ps after a load; this estimate decides before loading whether a
model can fit at all.
"""

from __future__ import annotations

from typing import Any

GIB = 1 << 30
COMPUTE_OVERHEAD_BYTES = int(0.6 * GIB)
KV_BYTES_PER_VALUE = 2  # f16


def _first_int(value: Any) -> int | None:
    """A model_info number; per-layer lists (some architectures) count by their largest entry."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        return max(numbers) if numbers else None
    return None


def kv_cache_bytes(model_info: dict[str, Any], num_ctx: int, slots: int) -> int | None:
    """KV cache bytes: 2 × layers × kv heads × head dim × context × slots × 2; None if info is missing."""
    arch = model_info.get("general.architecture")
    if not isinstance(arch, str):
        return None
    layers = _first_int(model_info.get(f"{arch}.block_count"))
    heads = _first_int(model_info.get(f"{arch}.attention.head_count"))
    kv_heads = _first_int(model_info.get(f"{arch}.attention.head_count_kv")) or heads
    width = _first_int(model_info.get(f"{arch}.embedding_length"))
    if not (layers and heads and kv_heads and width):
        return None
    head_dim = width // heads
    return 2 * layers * kv_heads * head_dim * num_ctx * slots * KV_BYTES_PER_VALUE


def estimate_bytes(disk_bytes: int, model_info: dict[str, Any], num_ctx: int, slots: int) -> int:
    """Estimated VRAM for the model at `num_ctx` × `slots`; without model info, weights + 20 %."""
    kv = kv_cache_bytes(model_info, num_ctx, slots)
    if kv is None:
        kv = disk_bytes // 5
    return disk_bytes + kv + COMPUTE_OVERHEAD_BYTES
