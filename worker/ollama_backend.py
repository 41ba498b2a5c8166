"""The Ollama backend: `/api/chat` streams, models pulled and sized against the GPU, loads watched."""

from __future__ import annotations

import logging
import threading

from common.errors import BackendError
from common.fleet import ModelFit
from common.jobs import GenerateJob
from common.settings import Settings
from worker.backend import AnswerParser, Backend, refuse_continuation
from worker.http import EngineHttp, StreamLoop
from worker.ollama_admin import OllamaAdmin, normalize_tag
from worker.ollama_wire import OllamaParser, chat_body, error_for_status, think_value
from worker.provision import assess_models, wait_for_ollama

logger = logging.getLogger(__name__)


class OllamaBackend(Backend):
    """A worker's Ollama (OLLAMA_URL)."""

    kind = "ollama"
    polls = True  # Ollama answers /api/ps beside running streams without disturbing them

    def __init__(self, settings: Settings, streams: StreamLoop) -> None:
        http = EngineHttp(streams, settings.ollama_url, engine="Ollama", connect_timeout=settings.connect_timeout_s)
        super().__init__(settings, http)
        self.admin = OllamaAdmin(http)
        self.fits: dict[str, ModelFit] = {}
        self._offloaded_warned: set[str] = set()

    def request(self, job: GenerateJob) -> tuple[str, bytes]:
        """POST /api/chat with the job's options, the model's constant num_ctx and its thinking setting.

        A continuation job goes as it is (its last message the answer so far): Ollama continues it
        where the model's template leaves the last assistant turn open (worker.ollama_template),
        which the model's verdict says; elsewhere it is refused (BackendError, not_continuable).
        """
        fit = self.fits.get(job.model_id)
        if (refused := refuse_continuation(job, fit)) is not None:
            raise refused
        num_ctx = fit.num_ctx if fit is not None and fit.num_ctx else self.settings.num_ctx
        think = think_value(fit.family if fit is not None else "")
        body = chat_body(job, num_ctx=num_ctx, keep_alive=self.settings.keep_alive, think=think)
        return "/api/chat", body

    def parser(self) -> AnswerParser:
        """NDJSON lines up to `done`."""
        return OllamaParser()

    def error(self, status: int, body: bytes, job: GenerateJob) -> BackendError:
        """Ollama's error statuses (see `ollama_wire.error_for_status`)."""
        return error_for_status(status, body, tag=job.tag, url=self.url)

    def wait_ready(self, stop: threading.Event) -> bool:
        """Until Ollama tells its version."""
        return wait_for_ollama(self.admin, stop) is not None

    def assess(self, budget: int | None, stop: threading.Event, fits: dict[str, ModelFit]) -> None:
        """Pull what is missing (PULL_MODELS), estimate each model's VRAM against the budget.

        Loading is the worker's model schedule's (or `provision.warm`'s) business, with this admin.
        """
        self.fits = fits
        assess_models(self.admin, self.settings, budget, stop, fits)

    def refresh_loaded(self, fits: dict[str, ModelFit]) -> None:
        """Read /api/ps; warn once per model that is only partly in VRAM."""
        try:
            loaded = self.admin.ps()
        except BackendError as exc:
            logger.warning("heartbeat: cannot read Ollama's loaded models: %s", exc.msg)
            return
        for fit in fits.values():
            tag = normalize_tag(fit.tag)
            fit.loaded = tag in loaded
            if fit.loaded and loaded[tag].size_vram < loaded[tag].size and tag not in self._offloaded_warned:
                self._offloaded_warned.add(tag)
                logger.warning(
                    "%s is only partly on the GPU (%.2f of %.2f GiB in VRAM): it runs several times slower",
                    fit.tag, loaded[tag].size_vram / 2**30, loaded[tag].size / 2**30,
                )  # fmt: skip
