"""The worker's one HTTP client (aiohttp) for its engine, Ollama or OpenAI-compatible, on one loop thread.

Every engine call of a worker process runs on one asyncio loop thread: the streams of all its
slots, and the management calls (which other threads make through the blocking `call`). One
aiohttp session per engine keeps its connections alive between requests, speaks TLS for
`https://` engines, honours HTTP(S)_PROXY / NO_PROXY, and sends the API key as a bearer token.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from common.errors import BackendError
from common.version import __version__

T = TypeVar("T")
MAX_ERROR_BODY = 64 * 1024
# Idle pooled connections are dropped before uvicorn's default keep-alive timeout (5 s) closes them
# from the engine's side (vLLM, SGLang and llama-cpp-python all serve through uvicorn): a request
# sent on a connection the server is closing at that moment would fail.
KEEPALIVE_S = 4.0

# Maps an error status and body to the BackendError the client should see.
ErrorMap = Callable[[int, bytes], BackendError]


class StreamLoop:
    """The event loop thread on which every engine call of this process runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # Closed when the loop stops (each engine client's session).
        self.closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="engine-streams", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for its result (from another thread)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    def stop(self) -> None:
        """Cancel what still runs on the loop, then stop and close it."""

        async def cancel_all() -> None:
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()
            await asyncio.sleep(0)  # let the cancelled tasks drop their connections
            for close in self.closers:
                await close()

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=2.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            self.loop.close()


def describe(exc: BaseException) -> str:
    """A short text for a connection failure (aiohttp's own, OSError, a timeout)."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _env_proxy(url: str) -> str | None:
    """The proxy HTTP(S)_PROXY names for `url`, unless NO_PROXY exempts its host."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


class EngineHttp:
    """One engine's base URL, headers and aiohttp session (created lazily, on the loop)."""

    def __init__(
        self, streams: StreamLoop, base_url: str, *, engine: str, api_key: str | None = None, connect_timeout: float
    ) -> None:
        self.streams = streams
        self.base_url = base_url.rstrip("/")
        self.engine = engine  # "Ollama", "the engine": how messages name it
        self.connect_timeout = connect_timeout
        self.headers = {"User-Agent": f"livepeer-llm-runner/{__version__}"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        # The proxy is read from the environment once: aiohttp's trust_env would read it (and
        # ~/.netrc) on every request in a thread, two thread hops on every job's path.
        self.proxy = _env_proxy(self.base_url)
        streams.closers.append(self.close)

    def session(self) -> aiohttp.ClientSession:
        """The session (call on the loop): unlimited pooled connections, no overall timeout."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                auto_decompress=False,
            )
        return self._session

    def unreachable(self, exc: BaseException) -> BackendError:
        """The error for a request that never got an answer."""
        return BackendError(f"{self.engine} at {self.base_url} is unreachable: {describe(exc)}", reason="unreachable")

    async def call(self, method: str, path: str, on_error: ErrorMap, *, json_body: Any = None, timeout: float) -> Any:
        """One request with an optional JSON body (`path` under the base URL, or a whole URL); the
        decoded JSON answer, or BackendError."""
        try:
            async with self.session().request(
                method,
                path if "://" in path else self.base_url + path,
                json=json_body,
                proxy=self.proxy,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.content.read(MAX_ERROR_BODY) if response.status != 200 else await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self.unreachable(exc) from None
        if status != 200:
            raise on_error(status, body)
        try:
            return json.loads(body)
        except ValueError:
            raise BackendError(f"{self.engine} at {self.base_url} answered {path} with something other than JSON: "
                               f"{body[:120]!r}", reason="protocol") from None  # fmt: skip

    def call_blocking(
        self, method: str, path: str, on_error: ErrorMap, *, json_body: Any = None, timeout: float
    ) -> Any:
        """`call` from a thread other than the loop's."""
        return self.streams.run(self.call(method, path, on_error, json_body=json_body, timeout=timeout))

    async def lines(
        self,
        path: str,
        on_error: ErrorMap,
        on_line: Callable[[bytes], bool],
        *,
        json_body: Any,
        idle_timeout: float,
    ) -> None:
        """POST and hand each line of the streamed answer to `on_line` until it returns True or the
        answer ends; BackendError if nothing arrives for `idle_timeout` seconds."""
        try:
            async with self.session().post(
                self.base_url + path,
                json=json_body,
                proxy=self.proxy,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=idle_timeout),
            ) as response:
                if response.status != 200:
                    raise on_error(response.status, await response.content.read(MAX_ERROR_BODY))
                async for line in response.content:
                    if line.strip() and on_line(line):
                        return
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:  # ValueError: a line too long
            raise BackendError(f"{self.engine} at {self.base_url}: {path} broke off: {describe(exc)}",
                               reason="unreachable") from None  # fmt: skip

    async def close(self) -> None:
        """Close the session's connections (on the loop)."""
        if self._session is not None:
            await self._session.close()
