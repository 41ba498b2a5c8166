"""The OpenAI-compatible backend: vLLM, SGLang, llama.cpp's servers, TGI, LM Studio behind one worker.

The engine owns its models and its memory: the worker only checks at start that every served
name in MODELS is listed by `/v1/models`, and never asks the engine anything while jobs run,
because llama-cpp-python's server interrupts its running stream on **any** request, a
`GET /v1/models` included (`get_llama_proxy` takes the same lock as generation and
`get_event_publisher` gives up the stream when that lock is wanted; `llama_cpp/server/app.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading

from common.errors import BackendError
from common.fleet import ModelFit
from common.jobs import GenerateJob
from common.settings import Settings
from worker import chat_template, openai_flavour
from worker.backend import AnswerParser, Backend, refuse_continuation
from worker.chat_template import ChatTemplate
from worker.engine_stream import Retry
from worker.http import EngineHttp, StreamLoop
from worker.ollama_wire import Final
from worker.openai_flavour import LLAMA_CPP_PYTHON, VLLM
from worker.openai_wire import (
    ServedModel,
    SseParser,
    chat_body,
    completion_body,
    error_for_status,
    error_message,
    served_models,
)

logger = logging.getLogger(__name__)

MODELS_TIMEOUT_S = 10.0
# Counting a prompt's tokens for a continuation's usage: short, and the usage falls back if it fails.
COUNT_TIMEOUT_S = 5.0
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
        self.fits: dict[str, ModelFit] = {}
        self.flavour = settings.openai_engine
        # llama-cpp-python: the model's chat template, which continuations are rendered with.
        self.template: ChatTemplate | None = None
        self.template_note = "OPENAI_GGUF names no GGUF file to read its chat template from"
        root = self.url.removesuffix("/v1")
        # vLLM's tokenizer (vllm/entrypoints/openai/api_server.py: POST /tokenize at the root);
        # llama-cpp-python's (llama_cpp/server/app.py: POST /extras/tokenize/count).
        self.count_url = {VLLM: f"{root}/tokenize", LLAMA_CPP_PYTHON: f"{root}/extras/tokenize/count"}

    def _served_name(self, job: GenerateJob) -> str:
        # This worker's own MODELS names the engine's model; the job's tag is the web's view of it.
        spec = self.settings.model(job.model_id)
        return spec.tag if spec is not None else job.tag

    def request(self, job: GenerateJob) -> tuple[str, bytes]:
        """POST /chat/completions; max_tokens bounded by the model's context when the engine tells it.

        A continuation job is asked as the engine continues a trailing assistant message
        (worker.openai_flavour), or refused (BackendError, not_continuable) where it cannot.
        """
        if (refused := refuse_continuation(job, self.fits.get(job.model_id))) is not None:
            raise refused
        known = self.served.get(self._served_name(job))
        max_tokens = job.max_tokens
        if known is not None and known.max_model_len is not None:
            max_tokens = min(max_tokens, known.max_model_len)
        return self._ask(job, max_tokens)

    def _ask(self, job: GenerateJob, max_tokens: int) -> tuple[str, bytes]:
        served = self._served_name(job)
        if job.continue_final and self.flavour == LLAMA_CPP_PYTHON and self.template is not None:
            prompt = self.template.continuation_prompt(job.messages)
            return "/completions", completion_body(job, served, prompt=prompt, stop=self.template.stop,
                                                   max_tokens=max_tokens)  # fmt: skip
        extra = openai_flavour.continuation_fields(self.flavour) if job.continue_final else None
        return "/chat/completions", chat_body(job, served, max_tokens=max_tokens, extra=extra)

    def retry(self, job: GenerateJob) -> Retry | None:
        """On the engine's refusal of prompt + max_tokens beyond the context (vLLM, SGLang), once
        more with max_tokens at the room it reports: go-livepeer would suspend us for the 400."""

        def again(status: int, raw: bytes) -> bytes | None:
            try:
                room = openai_flavour.room_left(error_message(json.loads(raw))) if status == 400 else None
            except ValueError:
                room = None
            if not room:  # not that refusal, or the prompt alone fills the context: the client's 400
                return None
            logger.info("job for %s: the engine's context leaves room for %d tokens; asking for that many",
                        job.model_id, room)  # fmt: skip
            return self._ask(job, min(room, job.max_tokens))[1]

        return again

    async def explain(self, job: GenerateJob, error: BackendError, relayed: int) -> BackendError:
        """A llama-cpp-python stream that broke before its first token: its prompt may not fit.

        llama-cpp-python (0.3.x) checks the prompt against its context only once the stream has
        begun (`Llama._create_completion` raises "Requested tokens (N) exceed context window of
        M"; `get_event_publisher` lets the exception break the response: no error event, no
        `[DONE]`), where its unstreamed answer turns the same check into a 400
        `context_length_exceeded` (`RouteErrorHandler`, llama_cpp/server/errors.py). So the same
        request is asked once more, unstreamed and for one token, to read that refusal: the
        client gets the 400 rather than a lost generation carried on elsewhere to fail again. A
        prompt that fits is answered (the engine's prompt cache keeps it for the next try) and
        `error` stands.
        """
        if self.flavour != LLAMA_CPP_PYTHON or relayed:
            return error
        path, body = self._ask(job, 1)
        probe = {**json.loads(body), "stream": False, "max_tokens": 1}
        probe.pop("stream_options", None)
        served, timeout = self._served_name(job), self.settings.first_byte_timeout_s
        for _ in range(2):
            try:
                await self.http.call("POST", path, lambda status, raw: error_for_status(status, raw, served=served,
                                     url=self.url), json_body=probe, timeout=timeout)  # fmt: skip
                break
            except BackendError as refused:
                if refused.reason == "prompt_too_long":
                    logger.info("job for %s: the engine refuses the prompt: %s", job.model_id, refused.msg)
                    return refused
                # The broken stream's connection went back to the pool as the engine closed it
                # (aiohttp releases a connection at the body's end): the first try may find it reset.
                if refused.reason != "unreachable":
                    break
        return error

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
                self.flavour = openai_flavour.detect(self.settings.openai_engine,
                                                     [m.owned_by for m in self.served.values()])  # fmt: skip
                logger.info("engine at %s (%s) serves: %s", self.url, self.flavour, ", ".join(self.served) or "nothing")
                if self.flavour == LLAMA_CPP_PYTHON and self.settings.openai_gguf:
                    self.template, self.template_note = chat_template.load(self.settings.openai_gguf)
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
        self.fits = fits
        template_note = None if self.template is not None else self.template_note
        for spec in self.settings.models:
            listed = spec.tag in self.served
            fit = ModelFit(tag=spec.tag, installed=listed, fits=True, loaded=listed, features=list(PASSED_THROUGH))
            fit.continuation, fit.continuation_note = openai_flavour.verdict(self.flavour, template_note)
            if not listed:
                fit.note = (f"{spec.tag!r} is not served by the engine at {self.url} (its /v1/models lists "
                            f"{', '.join(self.served) or 'nothing'}); fix MODELS as model_id=served_name")  # fmt: skip
                logger.error("model %s: %s", spec.model_id, fit.note)
            else:
                logger.info("model %s: served by the engine as %r", spec.model_id, spec.tag)
            fits[spec.model_id] = fit

    def _count_body(self, job: GenerateJob, final: Final) -> dict[str, object] | None:
        """What the engine's tokenizer is asked to count as the job's original prompt, or None.

        A continuation's own prompt holds the answer so far: vLLM counts the messages before it
        (`/tokenize` with `add_generation_prompt`), llama-cpp-python the original prompt rendered
        here. llama-cpp-python's streams carry no usage at all (it ignores `stream_options`), so
        every answer of it without a prompt count gets one, except with tools: its chat handler
        renders them into the prompt its own way.
        """
        served = self._served_name(job)
        if self.flavour == VLLM and job.continue_final:
            return {"model": served, "messages": job.messages[:-1], "add_generation_prompt": True}
        if self.flavour != LLAMA_CPP_PYTHON or self.template is None:
            return None
        if job.continue_final:
            return {"model": served, "input": self.template.original_prompt(job.messages)}
        if not final.prompt_eval_count and not job.tools:
            return {"model": served, "input": self.template.render(job.messages)}
        return None

    def note(self) -> str:
        """The fleet record's word on VRAM."""
        return VRAM_NOTE

    async def usage(self, job: GenerateJob, final: Final) -> Final:
        """The prompt tokens the client is billed: the original prompt's, counted by the engine's own
        tokenizer where it has one (`_count_body`), after the stream ended so that no request cuts
        it off; else the base approximation."""
        url, body = self.count_url.get(self.flavour), self._count_body(job, final)
        if url is None or body is None:
            return await super().usage(job, final)
        served = self._served_name(job)
        try:
            answer = await self.http.call("POST", url, lambda status, raw: error_for_status(status, raw, served=served,
                                          url=self.url), json_body=body, timeout=COUNT_TIMEOUT_S)  # fmt: skip
            count = answer.get("count") if isinstance(answer, dict) else None
        except BackendError as exc:
            logger.warning("job for %s: the engine did not count the prompt (%s); usage approximated", job.model_id,
                           exc.msg)  # fmt: skip
            count = None
        if not isinstance(count, int) or count < 0:
            return await super().usage(job, final)
        return dataclasses.replace(final, prompt_eval_count=count)
