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
from common.vram import COMPUTE_OVERHEAD_BYTES, GIB, estimate_bytes, kv_cache_bytes
from worker.ollama_admin import OllamaAdmin, normalize_tag

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


class _PullLog:
    """Logs a pull's progress every few seconds, not every line."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._next = 0.0

    def __call__(self, line: dict[str, Any]) -> None:
        now = time.monotonic()
        total, done = line.get("total"), line.get("completed")
        if now < self._next and line.get("status") != "success":
            return
        self._next = now + PROGRESS_EVERY_S
        if isinstance(total, int) and isinstance(done, int) and total:
            percent = 100 * done / total
            logger.info("pulling %s: %s %.0f%% of %.2f GB", self.tag, line.get("status"), percent, total / 1e9)
        else:
            logger.info("pulling %s: %s", self.tag, line.get("status"))


def assess_models(
    admin: OllamaAdmin, settings: Settings, budget: int | None, stop: threading.Event
) -> dict[str, ModelFit]:
    """For each configured model: install it if missing (PULL_MODELS), estimate its VRAM, decide fit."""
    installed = admin.tags()
    fits: dict[str, ModelFit] = {}
    for spec in settings.models:
        fits[spec.model_id] = _assess(admin, settings, budget, spec, installed, stop)
    return fits


def _assess(
    admin: OllamaAdmin,
    settings: Settings,
    budget: int | None,
    spec: ModelSpec,
    installed: dict[str, int],
    stop: threading.Event,
) -> ModelFit:
    tag = normalize_tag(spec.tag)
    fit = ModelFit(tag=spec.tag)
    if tag not in installed:
        if not settings.pull_models:
            fit.note = f"{spec.tag} is not installed on {settings.ollama_url} (PULL_MODELS is off)"
            logger.warning("model %s: %s", spec.model_id, fit.note)
            return fit
        logger.info("model %s: %s is not installed; pulling it", spec.model_id, spec.tag)
        try:
            admin.pull(spec.tag, _PullLog(spec.tag), stop=stop)
            installed = admin.tags()
        except BackendError as exc:
            fit.note = exc.msg
            logger.error("model %s: %s", spec.model_id, exc.msg)
            return fit
        if tag not in installed:
            fit.note = f"{spec.tag} still missing after a successful pull"
            logger.error("model %s: %s", spec.model_id, fit.note)
            return fit
    fit.installed = True
    disk = installed[tag]
    try:
        info = admin.show(spec.tag)
    except BackendError as exc:
        logger.warning("model %s: no model info (%s); estimating from its size", spec.model_id, exc.msg)
        info = {}
    fit.need_bytes = estimate_bytes(disk, info, settings.num_ctx, settings.slots)
    kv = kv_cache_bytes(info, settings.num_ctx, settings.slots)
    detail = (
        f"weights {disk / GIB:.2f} GiB + KV {kv / GIB if kv is not None else float('nan'):.2f} GiB "
        f"({settings.num_ctx} ctx × {settings.slots} slot(s)) + compute {COMPUTE_OVERHEAD_BYTES / GIB:.1f} GiB"
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
    return fit


def warm_default(admin: OllamaAdmin, settings: Settings, fits: dict[str, ModelFit]) -> str | None:
    """Preload the first configured model this worker serves (with the jobs' num_ctx); its tag or None."""
    for spec in settings.models:
        fit = fits[spec.model_id]
        if fit.fits and fit.installed:
            logger.info("preloading %s (num_ctx %d, keep_alive %s)", spec.tag, settings.num_ctx, settings.keep_alive)
            started = time.monotonic()
            try:
                admin.preload(
                    spec.tag,
                    num_ctx=settings.num_ctx,
                    keep_alive=settings.keep_alive,
                    timeout=settings.first_byte_timeout_s,
                )
            except BackendError as exc:
                logger.error("preloading %s failed: %s", spec.tag, exc.msg)
                return None
            logger.info("preloaded %s in %.1f s", spec.tag, time.monotonic() - started)
            return spec.tag
    return None
