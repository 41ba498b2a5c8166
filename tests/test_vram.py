"""The VRAM estimate against real model sizes and architectures, as Ollama loads them."""

from __future__ import annotations

import pytest

from common.vram import GIB, estimate_bytes, kv_cache_bytes
from tests.fake_ollama import KNOWN_MODELS

# tag → (estimate at 4k context and 1 slot in GiB, fits an 8 GB card with ~7 GiB usable)
TABLE = {
    "llama3.1:8b": (5.6, True),
    "mistral:7b": (4.8, True),
    "qwen2.5:7b": (5.1, True),
    "llama3.2:3b": (2.8, True),
    "gemma2:9b": (7.0, True),  # head size 256 (key_length), not 3584 / 16
    "qwen2.5:14b": (10.0, False),
    "llama3.1:70b": (44.0, False),
}


def model_info(tag: str) -> dict[str, object]:
    spec = KNOWN_MODELS[tag]
    arch = spec.arch
    return {
        "general.architecture": arch,
        f"{arch}.block_count": spec.block_count,
        f"{arch}.attention.head_count": spec.head_count,
        f"{arch}.attention.head_count_kv": spec.head_count_kv,
        f"{arch}.embedding_length": spec.embedding_length,
        **({f"{arch}.attention.key_length": spec.key_length} if spec.key_length else {}),
    }


@pytest.mark.parametrize("tag", sorted(TABLE))
def test_estimate_matches_the_table(tag: str) -> None:
    expected_gib, fits_8gb = TABLE[tag]
    need = estimate_bytes(KNOWN_MODELS[tag].size, model_info(tag), num_ctx=4096, slots=1)
    assert need / GIB == pytest.approx(expected_gib, rel=0.06)
    assert (need <= 7 * GIB) is fits_8gb


def test_llama_kv_cache_is_half_a_gib_at_4k_and_scales_with_slots() -> None:
    one = kv_cache_bytes(model_info("llama3.1:8b"), 4096, 1)
    assert one == 2 * 32 * 8 * 128 * 4096 * 2 == GIB // 2
    assert kv_cache_bytes(model_info("llama3.1:8b"), 4096, 4) == 4 * one


def test_missing_model_info_falls_back_to_weights_plus_a_fifth() -> None:
    assert kv_cache_bytes({}, 4096, 1) is None
    assert estimate_bytes(10 * GIB, {}, 4096, 1) == 12 * GIB + int(0.6 * GIB)


def test_per_layer_head_counts_use_the_largest() -> None:
    info = {**model_info("llama3.1:8b"), "llama.attention.head_count_kv": [8, 4, 8]}
    assert kv_cache_bytes(info, 4096, 1) == GIB // 2
