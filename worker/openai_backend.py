"""The OpenAI-compatible backend: vLLM, SGLang, llama.cpp's servers, TGI, LM Studio behind one worker.

The engine owns its models and its memory: the worker only checks at start that every served
name in MODELS is listed by `/v1/models`, and never asks the engine anything while jobs run,
because llama-cpp-python's server interrupts its running stream on **any** request, a
`GET /v1/models` included (`get_llama_proxy` takes the same lock as generation and
`get_event_publisher` gives up the stream when that lock is wanted; `llama_cpp/server/app.py`).
"""

from __future__ import annotations

import logging
import threading

from common.errors import BackendError
from common.fleet import ModelFit
from common.jobs import GenerateJob
from common.settings import Settings
from worker.backend import AnswerParser, Backend
from worker.http import EngineHttp, StreamLoop
from worker.openai_wire import ServedModel, SseParser, chat_body, error_for_status, served_models

logger = logging.getLogger(__name__)

MODELS_TIMEOUT_S = 10.0
# The OpenAI API's options an OpenAI-compatible engine gets as the client sent them: it honours
# them, or refuses them with an error the client sees (vLLM without --enable-auto-tool-choice, say).
PASSED_THROUGH = ("tools", "tool_choice", "response_format")
VRAM_NOTE = (
    "VRAM fit is the engine's business: an OpenAI-compatible engine sizes and holds its own models, "
    "so this worker neither estimates nor checks their memory"
)


class OpenAIBackend(Backend):
    """A worker's OpenAI-compatible engine (OPENAI_BASE_URL, optional OPENAI_API_KEY)."""

    kind = "openai"
    polls = False

    def __init__(self, settings: Settings, streams: StreamLoop) -> None:
        assert settings.openai_base_url is not None  # Settings refuses BACKEND=openai without it
        http = EngineHttp(streams, settings.openai_base_url, engine="the engine", api_key=settings.openai_api_key,
                          connect_timeout=settings.connect_timeout_s)  # fmt: skip
        super().__init__(settings, http)
        self.served: dict[str, ServedModel] = {}

    def _served_name(self, job: GenerateJob) -> str:
        # This worker's own MODELS names the engine's model; the job's tag is the web's view of it.
        spec = self.settings.model(job.model_id)
        return spec.tag if spec is not None else job.tag

    def request(self, job: GenerateJob) -> tuple[str, bytes]:
        """POST /chat/completions; max_tokens bounded by the model's context when the engine tells it."""
        served = self._served_name(job)
        known = self.served.get(served)
        max_tokens = job.max_tokens
        if known is not None and known.max_model_len is not None:
            max_tokens = min(max_tokens, known.max_model_len)
        return "/chat/completions", chat_body(job, served, max_tokens=max_tokens)

    def parser(self) -> AnswerParser:
        """SSE chunks up to `[DONE]`."""
        return SseParser()

    def error(self, status: int, body: bytes, job: GenerateJob) -> BackendError:
        """The engine's error statuses (see `openai_wire.error_for_status`).

        A 422 (FastAPI's validation) to a job carrying the OpenAI API's options refuses what the client
        chose, not the runner's request: llama-cpp-python's server takes no response_format of type
        json_schema (llama_cpp/llama_types.py, ChatCompletionRequestResponseFormat).
        """
        mapped = error_for_status(status, body, served=self._served_name(job), url=self.url)
        if status == 422 and any(getattr(job, name) is not None for name in PASSED_THROUGH):
            return BackendError(f"the engine refused the request's options: {mapped.msg}", reason="rejected",
                                status=400)  # fmt: skip
        return mapped

    def _models(self) -> dict[str, ServedModel]:
        def on_error(status: int, body: bytes) -> BackendError:
            return error_for_status(status, body, served="", url=self.url)

        return served_models(self.http.call_blocking("GET", "/models", on_error, timeout=MODELS_TIMEOUT_S))

    def wait_ready(self, stop: threading.Event) -> bool:
        """Until /v1/models answers (only at start: no job runs yet)."""
        delay, warned = 0.5, False
        while not stop.is_set():
            try:
                self.served = self._models()
                logger.info("engine at %s serves: %s", self.url, ", ".join(self.served) or "nothing")
                return True
            except BackendError as exc:
                if not warned:
                    logger.warning("waiting for the engine: %s", exc.msg)
                    warned = True
            stop.wait(delay)
            delay = min(delay * 2, 5.0)
        return False

    def assess(self, budget: int | None, stop: threading.Event, fits: dict[str, ModelFit]) -> None:
        """A model is served when its served name is listed by /v1/models; memory is the engine's."""
        for spec in self.settings.models:
            listed = spec.tag in self.served
            fit = ModelFit(tag=spec.tag, installed=listed, fits=True, loaded=listed, features=list(PASSED_THROUGH))
            if not listed:
                fit.note = (f"{spec.tag!r} is not served by the engine at {self.url} (its /v1/models lists "
                            f"{', '.join(self.served) or 'nothing'}); fix MODELS as model_id=served_name")  # fmt: skip
                logger.error("model %s: %s", spec.model_id, fit.note)
            else:
                logger.info("model %s: served by the engine as %r", spec.model_id, spec.tag)
            fits[spec.model_id] = fit

    def note(self) -> str:
        """The fleet record's word on VRAM."""
        return VRAM_NOTE
