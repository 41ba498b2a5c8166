"""Streaming /api/chat calls to Ollama, all on one event loop thread of the worker process.

Closing the connection is the only way to stop Ollama generating, so each call owns its
connection, and `abort()` (from any thread) closes it. The loop hands every read's complete
NDJSON lines to the call's `on_lines` at once: a slow stream is relayed token by token, a fast
one in batches, and hundreds of streams cost one thread, not a thread wake-up per token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from common.errors import BackendError, JobCancelled, RunnerError
from common.version import __version__
from worker.http1 import ResponseParser
from worker.ollama_wire import error_for_status

T = TypeVar("T")
_MAX_ERROR_BODY = 64 * 1024

# Receives a batch of complete lines; returns True once the answer is complete (its final line).
LinesHandler = Callable[[list[bytes]], bool]


class StreamLoop:
    """The event loop thread on which every Ollama stream of this process runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ollama-streams", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel what still runs on the loop, then stop and close it."""

        async def cancel_all() -> None:
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=2.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            self.loop.close()


class ChatStream:
    """One POST /api/chat whose NDJSON answer goes, read by read, to `on_lines`."""

    def __init__(
        self,
        streams: StreamLoop,
        base_url: str,
        body: bytes,
        *,
        tag: str,
        connect_timeout: float,
        first_byte_timeout: float,
        idle_timeout: float,
        on_lines: LinesHandler,
    ) -> None:
        parts = urlsplit(base_url)
        self.url = base_url
        self.tag = tag
        self.on_lines = on_lines
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self._streams = streams
        self._address = (parts.hostname or "localhost", parts.port or 80)
        self._connect_timeout = connect_timeout
        path = (parts.path.rstrip("/") or "") + "/api/chat"
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: livepeer-llm-runner/{__version__}\r\n"
            f"Content-Type: application/json\r\nAccept: application/x-ndjson\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._protocol: _ChatProtocol | None = None
        self.cancelled = False

    def abort(self) -> None:
        """Stop the call from any thread: Ollama sees the connection close and stops generating."""
        self.cancelled = True
        self._streams.loop.call_soon_threadsafe(self._abort_in_loop)

    def _abort_in_loop(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(JobCancelled("cancelled"))

    async def run(self, on_sent: Callable[[], None]) -> None:
        """Send the request, call `on_sent`, and relay the answer until its final line.

        Raises BackendError (error status, unreachable, timeouts: first byte while the model
        loads, then between tokens; a broken stream), or JobCancelled once `abort()` was called.
        """
        if self.cancelled:
            raise JobCancelled("cancelled before the request was sent")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: _ChatProtocol(self, done), *self._address), self._connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise BackendError(f"Ollama at {self.url} is unreachable: {exc or 'connect timeout'}",
                               reason="unreachable") from None  # fmt: skip
        if self.cancelled:
            self._abort_in_loop()
        on_sent()
        await done

    def attach(self, protocol: _ChatProtocol) -> None:
        """Called by the protocol once connected (abort needs it)."""
        self._protocol = protocol


class _ChatProtocol(asyncio.Protocol):
    """Sends the request, de-frames the answer, and turns every failure into an exception on `done`."""

    def __init__(self, call: ChatStream, done: asyncio.Future[None]) -> None:
        self.call = call
        self.done = done
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""
        self.error_body = b""
        self.first_byte = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.call.attach(self)
        transport.write(self.call.request)
        self._arm(self.call.first_byte_timeout)

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def _timed_out(self) -> None:
        if self.first_byte:
            self.fail(BackendError(f"Ollama sent nothing for {self.call.first_byte_timeout:g} s (model still "
                                   "loading?)", reason="timeout"))  # fmt: skip
        else:
            self.fail(BackendError(f"Ollama stalled: no token for {self.call.idle_timeout:g} s", reason="stalled"))

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.first_byte = False
        self._arm(self.call.idle_timeout)
        try:
            self._relay(self.parser.feed(data))
        except RunnerError as exc:
            self.fail(exc)
        except ValueError as exc:
            self.fail(BackendError(f"Ollama broke the HTTP stream: {exc}", reason="truncated"))

    def _relay(self, body: bytes) -> None:
        status = self.parser.status
        if status is None:
            return
        if status != 200:
            self.error_body += body
            if self.parser.complete or len(self.error_body) >= _MAX_ERROR_BODY:
                raise error_for_status(status, self.error_body, tag=self.call.tag, url=self.call.url)
            return
        if body:
            *lines, self.tail = (self.tail + body).split(b"\n")
            lines = [line for line in lines if line.strip()]
            if lines and self.call.on_lines(lines):
                self.finish()
                return
        if self.parser.complete:
            if self.tail.strip() and self.call.on_lines([self.tail]):
                self.finish()
                return
            # A clean end (chunked terminator) without a `done` line is Ollama stopping a repetition
            # loop (llm/llama_server.go, Completion): a finish; only a cut connection is an error.
            self.finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.call.cancelled:
            self.fail(JobCancelled("cancelled"))
        elif self.parser.status is None:
            self.fail(BackendError(f"Ollama at {self.call.url} closed the connection without answering",
                                   reason="truncated"))  # fmt: skip
        else:
            self.fail(BackendError("Ollama closed the connection mid-stream", reason="truncated"))

    def finish(self) -> None:
        """The answer is complete: close the connection."""
        if not self.done.done():
            self.done.set_result(None)
        self._close(abort=False)

    def fail(self, exc: RunnerError) -> None:
        """End the call with an error and drop the connection (so Ollama stops)."""
        if not self.done.done():
            self.done.set_exception(exc)
        self._close(abort=True)

    def _close(self, *, abort: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
