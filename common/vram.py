"""How much GPU memory a model needs: weights + KV cache for its context and slots + compute.

Ground truth is Ollama's /api/ps after a load; this estimate decides before loading whether a
model can fit at all. It uses the numbers Ollama itself launches llama-server with: the
context capped at the model's training context (ollama/ollama llm/server.go, NewLlamaServer),
`num_ctx × parallel` cells (llm/llama_server.go, `-c`), the head size from `key_length` /
`value_length` where the GGUF gives them, and OLLAMA_KV_CACHE_TYPE (`--cache-type-k/v`).
"""

from __future__ import annotations

from typing import Any

GIB = 1 << 30
COMPUTE_OVERHEAD_BYTES = int(0.6 * GIB)
# Bytes per cached value for llama.cpp's cache types: f16, and q8_0 / q4_0 blocks of 32 values.
KV_BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
KV_CACHE_TYPES = tuple(KV_BYTES_PER_VALUE)


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


def context_length(model_info: dict[str, Any]) -> int | None:
    """The model's training context (`<arch>.context_length`), None if unknown."""
    arch = model_info.get("general.architecture")
    return _first_int(model_info.get(f"{arch}.context_length")) if isinstance(arch, str) else None


def effective_num_ctx(model_info: dict[str, Any], num_ctx: int) -> int:
    """The context Ollama really gives the model: num_ctx, capped at its training context."""
    trained = context_length(model_info)
    return min(num_ctx, trained) if trained else num_ctx


def kv_cache_bytes(model_info: dict[str, Any], num_ctx: int, slots: int, cache_type: str = "f16") -> int | None:
    """KV cache bytes: layers × kv heads × (key + value head size) × context × slots × bytes; None if unknown."""
    arch = model_info.get("general.architecture")
    if not isinstance(arch, str):
        return None
    layers = _first_int(model_info.get(f"{arch}.block_count"))
    heads = _first_int(model_info.get(f"{arch}.attention.head_count"))
    kv_heads = _first_int(model_info.get(f"{arch}.attention.head_count_kv")) or heads
    width = _first_int(model_info.get(f"{arch}.embedding_length"))
    if not (layers and heads and kv_heads and width):
        return None
    per_layer = model_info.get(f"{arch}.attention.head_count_kv")
    if isinstance(per_layer, list) and len(per_layer) == layers:
        # Hybrid models (attention mixed with recurrent layers) cache only their attention layers.
        layer_heads = sum(v for v in per_layer if isinstance(v, int) and not isinstance(v, bool))
    else:
        layer_heads = layers * kv_heads
    # gemma2/3, qwen3 and others have a head size that is not width / heads: the GGUF says so.
    key = _first_int(model_info.get(f"{arch}.attention.key_length")) or width // heads
    value = _first_int(model_info.get(f"{arch}.attention.value_length")) or key
    per_value = KV_BYTES_PER_VALUE.get(cache_type, 2.0)
    return int(layer_heads * (key + value) * num_ctx * slots * per_value)


def estimate_bytes(
    disk_bytes: int, model_info: dict[str, Any], num_ctx: int, slots: int, cache_type: str = "f16"
) -> int:
    """Estimated VRAM for the model at `num_ctx` × `slots`; without model info, weights + 20 %."""
    kv = kv_cache_bytes(model_info, effective_num_ctx(model_info, num_ctx), slots, cache_type)
    if kv is None:
        kv = disk_bytes // 5
    return disk_bytes + kv + COMPUTE_OVERHEAD_BYTES
