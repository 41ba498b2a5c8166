"""The engine behind a worker, as one small interface: Ollama's native API or an OpenAI-compatible server.

Both kinds share the worker's streaming path (`worker.engine_stream.ChatStream`, its timeouts,
cancel by closing the connection) and its error mapping to go-livepeer's statuses; a backend
only says how to ask (path and body), how to read the answer, and how to get ready.
"""

from __future__ import annotations

import dataclasses
import threading
from abc import ABC, abstractmethod
from typing import Protocol

from common.errors import NOT_CONTINUABLE, BackendError
from common.fleet import ModelFit
from common.jobs import GenerateJob
from common.settings import Settings
from worker.engine_stream import ChatStream, EndHandler, LinesHandler, Retry
from worker.http import EngineHttp
from worker.ollama_wire import Final, Parsed


class AnswerParser(Protocol):
    """Reads one streamed answer: token texts batch by batch, then its end."""

    def feed(self, lines: list[bytes]) -> Parsed:
        """Parse complete lines."""

    def end(self) -> Final:
        """The stream closed cleanly without a line that completed it: the end, or BackendError."""


class Backend(ABC):
    """One worker's engine: how jobs reach it, and how the worker gets it ready."""

    kind: str
    # Whether the heartbeat may ask the engine what it holds while jobs run: false for engines that
    # a second request disturbs (llama-cpp-python's server interrupts its running stream on any).
    polls: bool

    def __init__(self, settings: Settings, http: EngineHttp) -> None:
        self.settings = settings
        self.http = http

    @property
    def url(self) -> str:
        """The engine's base URL."""
        return self.http.base_url

    @abstractmethod
    def request(self, job: GenerateJob) -> tuple[str, bytes]:
        """The streamed chat request for a job: path (under the base URL) and JSON body."""

    @abstractmethod
    def parser(self) -> AnswerParser:
        """A fresh reader for one answer."""

    @abstractmethod
    def error(self, status: int, body: bytes, job: GenerateJob) -> BackendError:
        """The engine's error answer, mapped to what the client should see."""

    def stream(self, job: GenerateJob, *, on_lines: LinesHandler, on_end: EndHandler) -> ChatStream:
        """The job's call, ready to `run` on the loop."""
        path, body = self.request(job)
        settings = self.settings
        return ChatStream(
            self.http, path, body,
            on_error=lambda status, raw: self.error(status, raw, job),
            first_byte_timeout=settings.first_byte_timeout_s, idle_timeout=settings.idle_timeout_s,
            on_lines=on_lines, on_end=on_end, retry=self.retry(job),
        )  # fmt: skip

    def retry(self, job: GenerateJob) -> Retry | None:
        """How to ask again after an error answer before the stream (once), if the engine tells how."""
        return None

    async def explain(self, job: GenerateJob, error: BackendError, relayed: int) -> BackendError:
        """What a stream that broke after `relayed` tokens should end with (called on the loop once
        the stream is gone): `error` itself, unless the engine can say better (see the subclasses)."""
        return error

    async def usage(self, job: GenerateJob, final: Final) -> Final:
        """The counts the job's Done event carries (called on the loop once the answer is complete).

        A continuation's own prompt holds the text already generated, but the client's usage is
        the ORIGINAL prompt's tokens plus every completion token it got: so its prompt tokens are
        the engine's count less `sent_tokens` (the prefix as the first generation counted it; a
        re-tokenised prefix may differ by a token or two at the seam). Engines that can count the
        original prompt themselves do better (see the subclasses).
        """
        if not job.continue_final or not final.prompt_eval_count:
            return final
        return dataclasses.replace(final, prompt_eval_count=max(final.prompt_eval_count - job.sent_tokens, 0))

    @abstractmethod
    def wait_ready(self, stop: threading.Event) -> bool:
        """Block until the engine answers (True) or `stop` is set (False)."""

    @abstractmethod
    def assess(self, budget: int | None, stop: threading.Event, fits: dict[str, ModelFit]) -> None:
        """Fill in each configured model's verdict (present on the engine, fits, loaded)."""

    def refresh_loaded(self, fits: dict[str, ModelFit]) -> None:  # noqa: B027 (only polled engines)
        """Update which models the engine holds now (only called when `polls`)."""

    def note(self) -> str:
        """What the fleet record should tell operators about this engine's VRAM."""
        return ""


def refuse_continuation(job: GenerateJob, fit: ModelFit | None) -> BackendError | None:
    """The error a continuation job ends with on this worker (its model cannot be continued here,
    or the job lacks the answer to continue), else None: such a job is never run as a new answer."""
    if not job.continue_final:
        return None
    if not job.prefix:
        msg = f"continuation #{job.attempt} of a {job.model_id} job carries no answer to continue"
        return BackendError(f"{msg} (its last message must be the assistant's text so far)", reason="bad_continuation")
    if fit is None or not fit.continuation:
        why = fit.continuation_note if fit is not None and fit.continuation_note else "not established for it"
        return BackendError(f"this worker cannot continue an answer of {job.model_id}: {why}", reason=NOT_CONTINUABLE)
    return None
