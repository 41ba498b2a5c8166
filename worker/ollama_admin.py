"""Ollama's management calls (version, tags, show, ps, pull, load, unload) over the worker's HTTP client."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import BackendError
from common.models import ollama_name_key
from worker.http import EngineHttp, StreamLoop
from worker.ollama_wire import error_for_status, load_body

ADMIN_TIMEOUT_S = 10.0
# A pull's or a load's answer may take minutes to start or to go on (sha256 checks, big models).
NO_READ_TIMEOUT_S = 24 * 3600.0


def normalize_tag(tag: str) -> str:
    """The key under which Ollama knows a tag (case, `library/` and `:latest` as Ollama resolves them)."""
    return ollama_name_key(tag)


@dataclass(frozen=True)
class Loaded:
    """A model Ollama holds in memory: total size and how much of it is in VRAM."""

    size: int
    size_vram: int


class OllamaAdmin:
    """Client for one Ollama's management API; every failure becomes a BackendError.

    Given a URL (the operator's commands), it runs its own loop thread; a worker passes the
    EngineHttp its streams use, so one client talks to its Ollama.
    """

    def __init__(self, engine: EngineHttp | str, *, timeout: float = ADMIN_TIMEOUT_S):
        if isinstance(engine, str):
            engine = EngineHttp(StreamLoop(), engine, engine="Ollama", connect_timeout=timeout)
        self.http = engine
        self.base_url = engine.base_url
        self._timeout = timeout

    def _on_error(self, tag: str) -> Callable[[int, bytes], BackendError]:
        def on_error(status: int, body: bytes) -> BackendError:
            return error_for_status(status, body, tag=tag, url=self.base_url)

        return on_error

    def _call(self, method: str, path: str, *, json_body: dict[str, Any] | None = None,
              timeout: float | None = None) -> dict[str, Any]:  # fmt: skip
        tag = str((json_body or {}).get("model", ""))
        answer = self.http.call_blocking(
            method, path, self._on_error(tag), json_body=json_body, timeout=timeout or self._timeout
        )
        return answer if isinstance(answer, dict) else {}

    def version(self) -> str:
        """Ollama's version string."""
        return str(self._call("GET", "/api/version").get("version", "?"))

    def tags(self) -> dict[str, int]:
        """Installed models: normalised tag → bytes on disk."""
        models = self._call("GET", "/api/tags").get("models") or []
        return {normalize_tag(m["name"]): int(m.get("size", 0)) for m in models if isinstance(m, dict) and "name" in m}

    def show(self, tag: str) -> dict[str, Any]:
        """The model's description: `model_info` with per-layer arrays (`verbose`), `details`."""
        # Without verbose every array in model_info is null (server/routes.go getModelData, fs/ggml/gguf.go).
        return self._call("POST", "/api/show", json_body={"model": tag, "verbose": True})

    def ps(self) -> dict[str, Loaded]:
        """Loaded models: normalised tag → sizes."""
        models = self._call("GET", "/api/ps").get("models") or []
        return {
            normalize_tag(m["name"]): Loaded(int(m.get("size", 0)), int(m.get("size_vram", 0)))
            for m in models
            if isinstance(m, dict) and "name" in m
        }

    def pull(
        self, tag: str, on_progress: Callable[[dict[str, Any]], None], *, stop: threading.Event | None = None
    ) -> None:
        """Pull a model, reporting each progress line; BackendError if it fails or `stop` is set.

        No read timeout: after the download Ollama verifies each layer's sha256 and sends nothing
        until it is done (server/images.go, PullModel), minutes for a big model. `stop` closes
        the connection, which also cancels the pull in Ollama.
        """
        last: dict[str, Any] = {}

        def on_line(raw: bytes) -> bool:
            nonlocal last
            try:
                line = json.loads(raw)
            except ValueError:
                return False
            if not isinstance(line, dict):
                return False
            if "error" in line:
                raise BackendError(f"pulling {tag!r} failed: {line['error']}", reason="pull_failed")
            last = line
            on_progress(line)
            return False

        async def pull_until_stopped() -> None:
            task = asyncio.ensure_future(
                self.http.lines("/api/pull", self._on_error(tag), on_line, json_body={"model": tag, "stream": True},
                                idle_timeout=NO_READ_TIMEOUT_S)
            )  # fmt: skip
            while not task.done():
                await asyncio.wait([task], timeout=1.0)
                if stop is not None and stop.is_set():
                    task.cancel()  # drops the connection: Ollama cancels the pull
                    raise BackendError(f"pulling {tag!r} interrupted: the worker is stopping", reason="pull_failed")
            task.result()

        self.http.streams.run(pull_until_stopped())
        if last.get("status") != "success":
            raise BackendError(f"pulling {tag!r} ended without success", reason="pull_failed")

    def preload(self, tag: str, *, num_ctx: int, keep_alive: int | str, timeout: float | None) -> None:
        """Load a model into memory with the options jobs will use (timeout None: no read timeout)."""
        body = load_body(tag, num_ctx=num_ctx, keep_alive=keep_alive)
        self._call("POST", "/api/chat", json_body=body, timeout=timeout if timeout is not None else NO_READ_TIMEOUT_S)

    def unload(self, tag: str) -> None:
        """Ask Ollama to unload a model once its requests end (`keep_alive: 0`, no messages)."""
        self._call("POST", "/api/chat", json_body={"model": tag, "messages": [], "keep_alive": 0})
