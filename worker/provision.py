"""Getting a worker's Ollama ready: reachable, models pulled, VRAM fit decided, default model warm."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from common.errors import BackendError
from common.fleet import ModelFit
from common.models import ModelSpec
from common.settings import Settings
from common.vram import COMPUTE_OVERHEAD_BYTES, GIB, effective_num_ctx, estimate_bytes, kv_cache_bytes
from worker.ollama_admin import OllamaAdmin, normalize_tag
from worker.ollama_template import continuation

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0


def vram_budget(settings: Settings, memory_total: int | None) -> int | None:
    """Usable VRAM in bytes: VRAM_MB (or NVML's total) minus VRAM_RESERVE_MB; None for a CPU worker."""
    total = settings.vram_mb * (1 << 20) if settings.vram_mb is not None else memory_total
    if total is None:
        return None
    return max(0, total - settings.vram_reserve_mb * (1 << 20))


def wait_for_ollama(admin: OllamaAdmin, stop: threading.Event) -> str | None:
    """Block until Ollama answers (its version) or `stop` is set (None)."""
    delay, warned = 0.5, False
    while not stop.is_set():
        try:
            return admin.version()
        except BackendError as exc:
            if not warned:
                logger.warning("waiting for Ollama: %s", exc.msg)
                warned = True
        stop.wait(delay)
        delay = min(delay * 2, 5.0)
    return None


# Ollama forces one sequence at a time for these model families whatever OLLAMA_NUM_PARALLEL
# says (ollama/ollama server/sched.go, load: "does not currently support parallel requests").
SINGLE_SEQUENCE_FAMILIES = frozenset(
    {"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2", "lfm2moe", "nemotron_h",
     "nemotron_h_moe", "nemotron_h_omni"}
)  # fmt: skip


class _PullLog:
    """Shows a pull's progress in the model's fleet record at once and in the log every few seconds."""

    def __init__(self, fit: ModelFit) -> None:
        self.fit = fit
        self._next = 0.0

    def __call__(self, line: dict[str, Any]) -> None:
        now = time.monotonic()
        total, done, status = line.get("total"), line.get("completed"), str(line.get("status") or "")
        self.fit.pull = status
        if isinstance(total, int) and isinstance(done, int) and total:
            self.fit.pull_completed, self.fit.pull_total = done, total
        if now < self._next and status != "success":
            return
        self._next = now + PROGRESS_EVERY_S
        if isinstance(total, int) and isinstance(done, int) and total:
            percent = 100 * done / total
            logger.info("pulling %s: %s %.0f%% of %.2f GB", self.fit.tag, status, percent, total / 1e9)
        elif status.startswith("verifying"):
            logger.info("pulling %s: %s (Ollama says nothing until it is done; minutes for a big model)",
                        self.fit.tag, status)  # fmt: skip
        else:
            logger.info("pulling %s: %s", self.fit.tag, status)


def assess_models(
    admin: OllamaAdmin, settings: Settings, budget: int | None, stop: threading.Event, fits: dict[str, ModelFit]
) -> dict[str, ModelFit]:
    """For each configured model: install it if missing (PULL_MODELS), estimate its VRAM, decide fit.

    `fits` (the worker's announced record) is filled as it goes, so a pull shows in /fleet.
    """
    installed = admin.tags()
    for spec in settings.models:
        fits[spec.model_id] = ModelFit(tag=spec.tag)
    for spec in settings.models:
        _assess(admin, settings, budget, spec, installed, stop, fits[spec.model_id])
        installed = admin.tags() if fits[spec.model_id].pull else installed
    return fits


def _assess(
    admin: OllamaAdmin,
    settings: Settings,
    budget: int | None,
    spec: ModelSpec,
    installed: dict[str, int],
    stop: threading.Event,
    fit: ModelFit,
) -> None:
    tag = normalize_tag(spec.tag)
    if tag not in installed:
        if not settings.pull_models:
            fit.note = f"{spec.tag} is not installed on {settings.ollama_url} (PULL_MODELS is off)"
            logger.warning("model %s: %s", spec.model_id, fit.note)
            return
        logger.info("model %s: %s is not installed; pulling it", spec.model_id, spec.tag)
        fit.pull = "starting"
        try:
            admin.pull(spec.tag, _PullLog(fit), stop=stop)
            installed = admin.tags()
        except BackendError as exc:
            fit.note, fit.pull = exc.msg, ""
            logger.error("model %s: %s", spec.model_id, exc.msg)
            return
        fit.pull = ""
        if tag not in installed:
            fit.note = f"{spec.tag} still missing after a successful pull"
            logger.error("model %s: %s", spec.model_id, fit.note)
            return
    fit.installed = True
    disk = installed[tag]
    try:
        shown = admin.show(spec.tag)
    except BackendError as exc:
        logger.warning("model %s: no model info (%s); estimating from its size", spec.model_id, exc.msg)
        shown = {}
    info = shown.get("model_info") if isinstance(shown.get("model_info"), dict) else {}
    details = shown.get("details") if isinstance(shown.get("details"), dict) else {}
    assert isinstance(info, dict) and isinstance(details, dict)
    fit.family = str(details.get("family") or info.get("general.architecture") or "")
    fit.continuation, fit.continuation_note = continuation(shown)
    fit.features = ollama_features(shown.get("capabilities"))
    fit.slots = 1 if fit.family in SINGLE_SEQUENCE_FAMILIES else settings.slots
    if fit.slots < settings.slots:
        logger.warning("model %s (%s): Ollama runs %s models one request at a time; serving it with 1 slot",
                       spec.model_id, spec.tag, fit.family)  # fmt: skip
    fit.num_ctx = effective_num_ctx(info, settings.num_ctx)
    if fit.num_ctx < settings.num_ctx:
        logger.info("model %s: context %d (its trained maximum; NUM_CTX is %d)", spec.model_id, fit.num_ctx,
                    settings.num_ctx)  # fmt: skip
    cache = settings.kv_cache_type
    if cache != "f16" and settings.flash_attention is False:
        # llama.cpp quantizes the V cache only with flash attention: count the cache as f16.
        logger.warning("OLLAMA_KV_CACHE_TYPE=%s needs flash attention, which OLLAMA_FLASH_ATTENTION turns off",
                       cache)  # fmt: skip
        cache = "f16"
    fit.need_bytes = estimate_bytes(disk, info, fit.num_ctx, fit.slots, cache)
    kv = kv_cache_bytes(info, fit.num_ctx, fit.slots, cache)
    detail = (
        f"weights {disk / GIB:.2f} GiB + KV {kv / GIB if kv is not None else float('nan'):.2f} GiB "
        f"({fit.num_ctx} ctx × {fit.slots} slot(s), {cache}) + compute {COMPUTE_OVERHEAD_BYTES / GIB:.1f} GiB"
        f" = {fit.need_bytes / GIB:.2f} GiB"
    )
    if budget is None:
        fit.fits = True
        logger.info("model %s (%s): needs %s; CPU worker, no VRAM bound: serving it", spec.model_id, spec.tag, detail)
    else:
        fit.fits = fit.need_bytes <= budget
        verdict = "serving it" if fit.fits else "too big, not serving it"
        if not fit.fits:
            fit.note = f"needs {fit.need_bytes / GIB:.1f} GiB of VRAM, this GPU offers {budget / GIB:.1f} GiB"
        logger.info(
            "model %s (%s): needs %s; usable VRAM %.2f GiB: %s", spec.model_id, spec.tag, detail, budget / GIB, verdict
        )


def ollama_features(capabilities: object) -> list[str]:
    """The OpenAI API's options Ollama takes for a model: a `format` always (a grammar or a JSON
    schema for llama-server: llm/llama_server.go Completion), `tools` only where /api/show lists
    the capability (server/routes.go ChatHandler refuses them otherwise: "does not support tools"),
    never a tool_choice (api/types.go ChatRequest has none)."""
    tools = isinstance(capabilities, list) and "tools" in capabilities
    return ["tools", "response_format"] if tools else ["response_format"]


def all_stay_loaded(settings: Settings, fits: dict[str, ModelFit], budget: int | None) -> bool:
    """Whether every served model can stay loaded at once (else the GPU holds one at a time)."""
    served = [f for f in fits.values() if f.fits and f.installed]
    if len(served) <= 1:
        return True
    if settings.max_loaded_models and len(served) > settings.max_loaded_models:
        return False
    return budget is None or sum(f.need_bytes or 0 for f in served) <= budget


def warm(admin: OllamaAdmin, settings: Settings, fits: dict[str, ModelFit], model_ids: list[str]) -> None:
    """Preload these models (tied to no client, no read timeout), so no job ever starts a load."""
    for model_id in model_ids:
        fit = fits[model_id]
        num_ctx = fit.num_ctx or settings.num_ctx
        logger.info("preloading %s (num_ctx %d, keep_alive %s)", fit.tag, num_ctx, settings.keep_alive)
        started = time.monotonic()
        try:
            admin.preload(fit.tag, num_ctx=num_ctx, keep_alive=settings.keep_alive, timeout=None)
        except BackendError as exc:
            logger.error("preloading %s failed: %s", fit.tag, exc.msg)
            continue
        fit.loaded = True
        logger.info("preloaded %s in %.1f s", fit.tag, time.monotonic() - started)
