"""Provisioning against a fake Ollama that resolves names, shows models and pulls as Ollama does."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from common.fleet import READY, ModelFit, WorkerRecord, capacity
from common.models import ollama_name_key, parse_models
from common.settings import Settings
from common.vram import GIB
from tests.fake_ollama import KNOWN_MODELS, FakeOllama
from worker.ollama_admin import OllamaAdmin
from worker.provision import assess_models

EIGHT_GB = 7 * GIB


def assess(fake: FakeOllama, models: str, budget: int | None = EIGHT_GB, **settings: object) -> dict[str, ModelFit]:
    config = Settings().replace(models=parse_models(models), ollama_url=fake.url, **settings)
    fits: dict[str, ModelFit] = {}
    assess_models(OllamaAdmin(fake.url), config, budget, threading.Event(), fits)
    return fits


def not_installed(*tags: str) -> dict[str, object]:
    return {t: dataclasses.replace(s, installed=t not in tags) for t, s in KNOWN_MODELS.items()}


@pytest.mark.parametrize("written", ["Llama3.1:8B", "library/llama3.1:8b", "registry.ollama.ai/library/LLAMA3.1:8b"])
def test_a_tag_is_resolved_as_ollama_resolves_it_pulled_once_and_served(written: str) -> None:
    with FakeOllama(models=not_installed("llama3.1:8b")).start() as fake:  # type: ignore[arg-type]
        fit = assess(fake, f"meta-llama/Meta-Llama-3.1-8B-Instruct={written}")["meta-llama/Meta-Llama-3.1-8B-Instruct"]
        assert (fit.installed, fit.fits, fit.note) == (True, True, "")
        assert fake.pulls == [written]
        again = assess(fake, f"m={written}")["m"]
        assert again.installed and fake.pulls == [written]  # installed now: no second pull


def test_models_ollama_runs_one_request_at_a_time_get_one_slot_and_that_capacity() -> None:
    with FakeOllama().start() as fake:
        fits = assess(fake, "vl=qwen3-vl:8b,llama=llama3.1:8b", budget=None, slots=4)
    assert (fits["vl"].family, fits["vl"].slots) == ("qwen3vl", 1)
    assert (fits["llama"].family, fits["llama"].slots) == ("llama", 4)
    record = WorkerRecord("w", "h", 1, "v", "http://o", state=READY, slots=4, models=fits)
    assert (capacity([record], "vl"), capacity([record], "llama")) == (1, 4)


def test_gemma2_kv_uses_its_key_length_and_the_context_is_capped_at_its_training_context() -> None:
    with FakeOllama().start() as fake:
        fit = assess(fake, "g=gemma2:9b", num_ctx=16384)["g"]
    assert fit.num_ctx == 8192  # gemma2's context_length
    # 2 × 42 layers × 8 kv heads × 256 (key_length, not 3584 / 16 = 224) × 8192 × 2 bytes
    kv = 2 * 42 * 8 * 256 * 8192 * 2
    assert fit.need_bytes == KNOWN_MODELS["gemma2:9b"].size + kv + int(0.6 * GIB)


def test_a_quantized_kv_cache_shrinks_the_estimate_unless_flash_attention_is_off() -> None:
    with FakeOllama().start() as fake:
        f16 = assess(fake, "m=llama3.1:8b")["m"].need_bytes
        q8 = assess(fake, "m=llama3.1:8b", kv_cache_type="q8_0")["m"].need_bytes
        q8_no_fa = assess(fake, "m=llama3.1:8b", kv_cache_type="q8_0", flash_attention=False)["m"].need_bytes
    assert f16 is not None and q8 is not None
    assert f16 - q8 == GIB // 2 - int(GIB // 2 * 34 / 32 / 2)  # 0.5 GiB of f16 KV becomes 0.27 GiB
    assert q8_no_fa == f16


def test_per_layer_arrays_come_from_the_verbose_show() -> None:
    hybrid = dataclasses.replace(KNOWN_MODELS["llama3.2:3b"], tag="hybrid:1b", head_count_kv=[8, 0, 0, 8] * 7)
    with FakeOllama(models={"hybrid:1b": hybrid}).start() as fake:
        fit = assess(fake, "h=hybrid:1b")["h"]
    # Without `verbose` the array would be null and the estimate would fall back to weights + 20 %.
    kv = 2 * (8 + 8) * 7 * (3072 // 24) * 4096 * 2  # only the attention layers hold a cache
    assert fit.need_bytes == hybrid.size + kv + int(0.6 * GIB)


def test_a_pull_survives_a_silent_digest_check_and_shows_its_progress_meanwhile() -> None:
    with FakeOllama(models=not_installed("llama3.2:3b")).start() as fake:  # type: ignore[arg-type]
        fake.set_behavior("llama3.2:3b", verify_s=2.5)
        config = Settings().replace(models=parse_models("m=llama3.2:3b"), ollama_url=fake.url)
        fits: dict[str, ModelFit] = {}
        seen: set[tuple[str, int, int]] = set()
        # A short admin timeout: a read timeout on the pull would cut the silent verification.
        worker = threading.Thread(target=assess_models, args=(OllamaAdmin(fake.url, timeout=1.0), config, EIGHT_GB,
                                                              threading.Event(), fits))  # fmt: skip
        worker.start()
        while worker.is_alive():
            fit = fits.get("m")
            if fit is not None and fit.pull:
                seen.add((fit.pull, fit.pull_completed, fit.pull_total))
            worker.join(0.05)
    size = KNOWN_MODELS["llama3.2:3b"].size
    assert ("verifying sha256 digest", 487, 487) in seen or ("verifying sha256 digest", size, size) in seen
    assert fits["m"].installed and fits["m"].fits and fits["m"].pull == ""


def test_name_keys_follow_ollamas_parsing() -> None:
    same = {ollama_name_key(t) for t in ("Llama3.1:8B", "llama3.1:8b", "library/llama3.1:8b",
                                          "registry.ollama.ai/library/llama3.1:8b")}  # fmt: skip
    assert same == {"registry.ollama.ai/library/llama3.1:8b"}
    assert ollama_name_key("llama3.1") == "registry.ollama.ai/library/llama3.1:latest"
    assert ollama_name_key("hf.co/Org/Model-GGUF:Q4_K_M") == "hf.co/org/model-gguf:q4_k_m"
    assert ollama_name_key("localhost:5000/team/m") == "localhost:5000/team/m:latest"
    assert ollama_name_key("llama3.1:8b") != ollama_name_key("llama3.1:70b")
