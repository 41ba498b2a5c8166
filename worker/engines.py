"""Which engine a worker drives: the backend BACKEND names (worker.backend's two implementations)."""

from __future__ import annotations

from common.settings import Settings
from worker.backend import Backend
from worker.http import StreamLoop
from worker.ollama_backend import OllamaBackend
from worker.openai_backend import OpenAIBackend


def make_backend(settings: Settings, streams: StreamLoop) -> Backend:
    """The backend BACKEND names, on this process's loop."""
    if settings.backend == "openai":
        return OpenAIBackend(settings, streams)
    return OllamaBackend(settings, streams)
