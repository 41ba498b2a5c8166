"""One streamed chat call to the engine (Ollama or OpenAI-compatible), relayed read by read.

Closing the connection is the only way to stop an engine generating (Ollama, vLLM, SGLang,
llama.cpp's servers all stop on it), so `abort()` (from any thread) cancels the call's task,
which drops its connection. Each read's complete lines go to the call's `on_lines` at once: a
slow stream is relayed token by token, a fast one in batches, and hundreds of streams cost one
thread, not a thread wake-up per token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from common.errors import BackendError, JobCancelled
from worker.http import MAX_ERROR_BODY, EngineHttp, ErrorMap, describe

# Receives a batch of complete lines; returns True once the answer is complete.
LinesHandler = Callable[[list[bytes]], bool]
# Called when the answer ended (clean EOF) before a line completed it: returns or raises BackendError.
EndHandler = Callable[[], None]
# Given an error answer (status, body) before the stream, the body to send instead, or None.
Retry = Callable[[int, bytes], bytes | None]

_JSON = {"Content-Type": "application/json"}
# The idle deadline moves at most this often (so it fires up to this much late).
RESCHEDULE_S = 0.25
# How long the end of a complete answer may take to arrive before its connection is dropped.
DRAIN_S = 1.0


class ChatStream:
    """One POST whose streamed answer goes, read by read, to `on_lines`."""

    def __init__(
        self,
        http: EngineHttp,
        path: str,
        body: bytes,
        *,
        on_error: ErrorMap,
        first_byte_timeout: float,
        idle_timeout: float,
        on_lines: LinesHandler,
        on_end: EndHandler,
        retry: Retry | None = None,
    ) -> None:
        self.http = http
        self.url = http.base_url + path
        self.body = body
        self.on_error = on_error
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.on_lines = on_lines
        self.on_end = on_end
        self.retry = retry  # asked once
        self.cancelled = False
        self._task: asyncio.Task[object] | None = None

    def abort(self) -> None:
        """Stop the call from any thread: the engine sees the connection close and stops generating."""
        self.cancelled = True
        self.http.streams.loop.call_soon_threadsafe(self._abort_in_loop)

    def _abort_in_loop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def run(self, on_sent: Callable[[], None]) -> None:
        """Send the request, call `on_sent`, and relay the answer until it is complete.

        Raises BackendError (error status, unreachable, timeouts: first byte while the model
        loads, then between tokens; a broken stream), or JobCancelled once `abort()` was called.
        """
        if self.cancelled:
            raise JobCancelled("cancelled before the request was sent")
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        # The job's Started event goes out while the request connects and is written.
        loop.call_soon(on_sent)
        while not await self._relay(loop):
            pass

    def _asked_again(self, status: int, body: bytes) -> bool:
        """Whether the request is sent again with the body `retry` gives for this error answer."""
        retry, self.retry = self.retry, None
        again = retry(status, body) if retry is not None else None
        if again is None:
            return False
        self.body = again
        return True

    async def _relay(self, loop: asyncio.AbstractEventLoop) -> bool:
        """One request and its answer; False when it is to be sent again (after `retry`)."""
        response: aiohttp.ClientResponse | None = None
        complete = False
        first = True
        try:
            async with asyncio.timeout_at(loop.time() + self.first_byte_timeout) as deadline:
                try:
                    response = await self.http.session().post(
                        self.url, data=self.body, headers=_JSON, proxy=self.http.proxy
                    )
                except (aiohttp.ClientError, OSError) as exc:
                    raise self.http.unreachable(exc) from None
                if response.status != 200:
                    error_body = await _error_body(response)
                    if self._asked_again(response.status, error_body):
                        return False
                    raise self.on_error(response.status, error_body)
                content, tail = response.content, b""
                rescheduled = 0.0
                while data := await content.readany():
                    first = False
                    *lines, tail = (tail + data).split(b"\n")
                    now = loop.time()
                    # Not on every read (each is a timer's churn), and not for keep-alive comments
                    # (sse-starlette's ": ping" every 15 s would hide an engine that stalled).
                    if now - rescheduled > RESCHEDULE_S and any(line[:1] not in (b":", b"", b"\r") for line in lines):
                        deadline.reschedule(now + self.idle_timeout)
                        rescheduled = now
                    if lines and self.on_lines(lines):
                        complete = True
                        return True
                if tail.strip() and self.on_lines([tail]):
                    complete = True
                    return True
                self.on_end()
                return True
        except TimeoutError:
            raise self._timed_out(first) from None
        except asyncio.CancelledError:
            if self.cancelled:
                raise JobCancelled("cancelled") from None
            raise
        except aiohttp.ClientPayloadError as exc:
            engine = self.http.engine
            raise BackendError(f"{engine} broke the stream off: {describe(exc)}", reason="truncated") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendError(f"{self.http.engine} closed the connection mid-stream: {describe(exc)}",
                               reason="truncated") from None  # fmt: skip
        finally:
            if response is not None:
                # Complete answers give their connection back to the pool (the next job saves a
                # connect); anything else drops it, which is what stops the engine generating.
                if response.content.is_eof():
                    response.release()
                elif complete:
                    _drain_later(response)
                else:
                    response.close()

    def _timed_out(self, first: bool) -> BackendError:
        engine = self.http.engine
        if first:
            return BackendError(f"{engine} sent nothing for {self.first_byte_timeout:g} s (model still loading?)",
                                reason="timeout")  # fmt: skip
        return BackendError(f"{engine} stalled: no token for {self.idle_timeout:g} s", reason="stalled")


_draining: set[asyncio.Task[None]] = set()


def _drain_later(response: aiohttp.ClientResponse) -> None:
    """Read what follows a complete answer (the end of the chunked body) off the job's path."""
    task = asyncio.get_running_loop().create_task(_drain(response))
    _draining.add(task)
    task.add_done_callback(_draining.discard)


async def _drain(response: aiohttp.ClientResponse) -> None:
    try:
        async with asyncio.timeout(DRAIN_S):
            while await response.content.readany():
                pass
        response.release()
    except (TimeoutError, aiohttp.ClientError, OSError):
        response.close()
    except asyncio.CancelledError:
        response.close()
        raise


async def _error_body(response: aiohttp.ClientResponse) -> bytes:
    """An error answer's body, up to MAX_ERROR_BODY bytes."""
    try:
        return await response.content.read(MAX_ERROR_BODY)
    except (aiohttp.ClientError, OSError):
        return b""
