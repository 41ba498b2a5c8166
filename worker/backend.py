"""The engine behind a worker, as one small interface: Ollama's native API or an OpenAI-compatible server.

Both kinds share the worker's streaming path (`worker.engine_stream.ChatStream`, its timeouts,
cancel by closing the connection) and its error mapping to go-livepeer's statuses; a backend
only says how to ask (path and body), how to read the answer, and how to get ready.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Protocol

from common.errors import BackendError
from common.fleet import ModelFit
from common.jobs import GenerateJob
from common.settings import Settings
from worker.engine_stream import ChatStream, EndHandler, LinesHandler
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
            on_lines=on_lines, on_end=on_end,
        )  # fmt: skip

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
