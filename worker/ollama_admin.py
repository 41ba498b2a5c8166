"""Ollama's management calls (version, tags, show, ps, pull, preload) over `requests`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from common.errors import BackendError
from common.models import ollama_name_key
from worker.ollama_wire import error_for_status, load_body

ADMIN_TIMEOUT_S = 10.0


def normalize_tag(tag: str) -> str:
    """The key under which Ollama knows a tag (case, `library/` and `:latest` as Ollama resolves them)."""
    return ollama_name_key(tag)


@dataclass(frozen=True)
class Loaded:
    """A model Ollama holds in memory: total size and how much of it is in VRAM."""

    size: int
    size_vram: int


class OllamaAdmin:
    """Client for one Ollama's management API; every failure becomes a BackendError."""

    def __init__(self, base_url: str, *, session: requests.Session | None = None, timeout: float = ADMIN_TIMEOUT_S):
        self.base_url = base_url.rstrip("/")
        self._session = session or requests.Session()
        self._timeout = timeout

    def _call(
        self, method: str, path: str, *, timeout: float | tuple[float, None] | None = None, **kwargs: Any
    ) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            response = self._session.request(method, url, timeout=timeout or self._timeout, **kwargs)
        except requests.RequestException as exc:
            raise BackendError(f"Ollama at {self.base_url} is unreachable: {exc}", reason="unreachable") from None
        if response.status_code != 200:
            tag = str((kwargs.get("json") or {}).get("model", ""))
            raise error_for_status(response.status_code, response.content, tag=tag, url=self.base_url)
        return response

    def version(self) -> str:
        """Ollama's version string."""
        return str(self._call("GET", "/api/version").json().get("version", "?"))

    def tags(self) -> dict[str, int]:
        """Installed models: normalised tag → bytes on disk."""
        models = self._call("GET", "/api/tags").json().get("models") or []
        return {normalize_tag(m["name"]): int(m.get("size", 0)) for m in models if isinstance(m, dict) and "name" in m}

    def show(self, tag: str) -> dict[str, Any]:
        """The model's description: `model_info` with per-layer arrays (`verbose`), `details`."""
        # Without verbose every array in model_info is null (server/routes.go getModelData, fs/ggml/gguf.go).
        shown = self._call("POST", "/api/show", json={"model": tag, "verbose": True}).json()
        return shown if isinstance(shown, dict) else {}

    def ps(self) -> dict[str, Loaded]:
        """Loaded models: normalised tag → sizes."""
        models = self._call("GET", "/api/ps").json().get("models") or []
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
        response = self._call(
            "POST", "/api/pull", json={"model": tag, "stream": True}, stream=True, timeout=(ADMIN_TIMEOUT_S, None)
        )
        if stop is not None:
            threading.Thread(target=_close_on, args=(stop, response), name="pull-stop", daemon=True).start()
        with response:
            last: dict[str, Any] = {}
            for line in response.iter_lines():
                if stop is not None and stop.is_set():
                    raise BackendError(f"pulling {tag!r} interrupted: the worker is stopping", reason="pull_failed")
                if not line:
                    continue
                if stop is not None and stop.is_set():
                    break
                try:
                    last = json.loads(line)
                except ValueError:
                    continue
                if "error" in last:
                    raise BackendError(f"pulling {tag!r} failed: {last['error']}", reason="pull_failed")
                on_progress(last)
        if stop is not None and stop.is_set():
            raise BackendError(f"pulling {tag!r} interrupted: the worker is stopping", reason="pull_failed")
        if last.get("status") != "success":
            raise BackendError(f"pulling {tag!r} ended without success", reason="pull_failed")

    def preload(self, tag: str, *, num_ctx: int, keep_alive: int | str, timeout: float | None) -> None:
        """Load a model into memory with the options jobs will use (timeout None: no read timeout)."""
        wait = timeout if timeout is not None else (ADMIN_TIMEOUT_S, None)
        self._call("POST", "/api/chat", json=load_body(tag, num_ctx=num_ctx, keep_alive=keep_alive), timeout=wait)

    def unload(self, tag: str) -> None:
        """Ask Ollama to unload a model once its requests end (`keep_alive: 0`, no messages)."""
        self._call("POST", "/api/chat", json={"model": tag, "messages": [], "keep_alive": 0})


def _close_on(stop: threading.Event | None, response: requests.Response) -> None:
    """Close a streamed response once `stop` is set (a blocked read then ends at once)."""
    if stop is None:
        return
    while not stop.wait(1.0):
        if response.raw is None or response.raw.closed:
            return
    response.close()
