"""A fake OpenAI-compatible engine: llama-cpp-python's server by default, vLLM's ways on request.

Stdlib only (a small HTTP/1.1 server on asyncio streams, keep-alive and chunked SSE as uvicorn
sends them), sharing no HTTP code with the client under test. What it does, and where from:

- `GET /v1/models` lists the served names (`get_models`, llama-cpp-python `llama_cpp/server/app.py`);
  `max_model_len` too in vLLM mode (`show_available_models`, vLLM `serving_engine.py`/`serving_models.py`).
- `POST /v1/chat/completions` with `stream: true`: a first chunk whose delta holds only the role,
  one chunk per token, a chunk with an empty delta and the finish_reason
  (`_convert_text_completion_chunks_to_chat`, `llama_cpp/llama_chat_format.py`), then `data: [DONE]`
  (`get_event_publisher`). llama-cpp-python ignores `stream_options`: no usage anywhere. In vLLM
  mode, with `stream_options.include_usage`, a last chunk with empty `choices` and the usage
  (`chat_completion_stream_generator`, vLLM `serving_chat.py`).
- One request at a time, and the running stream is interrupted by **any** other request,
  `/v1/models` included: after its current chunk it sends `[DONE]` with no finish_reason and
  stops; the newcomer then runs (`interrupt_requests`, default true; `get_llama_proxy`'s two locks).
  vLLM mode serves many at once.
- `max_tokens` beyond the context is cut to what fits, finish_reason "length" (`Llama._create_completion`);
  a prompt that fills the context is a 400 `context_length_exceeded` (`llama_cpp/server/errors.py`).
  vLLM instead refuses prompt + max_tokens beyond `max_model_len` with a 400 saying both counts
  (`OpenAIServing._validate_input`, vllm/entrypoints/openai/serving_engine.py).
- `owned_by` in /v1/models: "me" (llama-cpp-python's `get_models`), "vllm" (vLLM's ModelCard).
- A trailing assistant message: llama-cpp-python's chat handler closes it and opens a new turn
  (`Jinja2ChatFormatter`, add_generation_prompt always true), so the answer starts over; vLLM
  continues it with `continue_final_message` and refuses that with `add_generation_prompt`
  (protocol.py `check_generation_prompt`). The answer is deterministic (`token_text`), so a
  continued one goes on with the next token. `POST /v1/completions` (llama-cpp-python, `text`
  chunks, `Llama._create_completion`) continues its prompt as it ends.
- Token counts: vLLM's `POST /tokenize` (messages; `count`, `max_model_len`), llama-cpp-python's
  `POST /extras/tokenize/count` (`input`; `count`), the latter holding the engine like any request.
- API key: a missing or wrong bearer token gets 401 `{"detail": "Invalid API key"}` (`authenticate`).
- Errors: `{"error": {"message", "type", "param", "code"}}` with the configured status (llama-cpp-python's
  `RouteErrorHandler`, vLLM's `create_error_response`); mid-stream, vLLM's error event
  `data: {"error": {...}}` then `[DONE]` (`create_streaming_error_response`).
- Closing the connection stops the generation (llama-cpp-python checks `request.is_disconnected()`
  after every chunk).

Knobs (`set_behavior`): first_token_delay, tokens_per_s, reply_tokens, status + error (before the
stream), error_after (vLLM's error event after N tokens), drop_after (connection cut after N tokens),
stall_after (no token after N tokens), done_after (after N tokens, `[DONE]` with no finish_reason, as
llama-cpp-python ends an interrupted stream, without waiting for a second request), ping_s (during a
stall, sse-starlette's `: ping - <time>` comment every so many seconds, as `EventSourceResponse`
sends them), interrupt (bool), usage (bool: vLLM's usage chunk), tool_calls (the calls the model
makes when offered tools: [{name, arguments}]).
What each server does with stop, response_format and tools: tests/fake_openai_options.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests import fake_openai_options as options

KNOBS = frozenset({"first_token_delay", "tokens_per_s", "reply_tokens", "status", "error", "error_after",
                   "drop_after", "stall_after", "interrupt", "usage", "ping_s", "done_after",
                   "tool_calls"})  # fmt: skip
PROMPT_TOKENS_PER_MESSAGE = 7


@dataclass
class Record:
    """One request as the fake saw it, and how it ended."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    outcome: str = "running"  # done, interrupted, cancelled, error, refused
    sent_tokens: int = 0
    received_at: float = field(default_factory=time.monotonic)


def token_text(i: int) -> str:
    """The i-th token of every answer (deterministic, so tests know the exact text)."""
    return f"t{i} "


class FakeOpenAI:
    """In-process: `with FakeOpenAI(["served"]) as fake: ... fake.url ...` (url ends in /v1)."""

    def __init__(
        self,
        served: list[str],
        *,
        api_key: str | None = None,
        n_ctx: int = 2048,
        vllm: bool = False,
        tls: ssl.SSLContext | None = None,
    ):
        self.served = served
        self.tls = tls
        self.api_key = api_key
        self.n_ctx = n_ctx
        self.behavior: dict[str, Any] = {"interrupt": not vllm, "usage": vllm, "tokens_per_s": 0.0,
                                         "reply_tokens": 8, "first_token_delay": 0.0}  # fmt: skip
        self.vllm = vllm
        self.records: list[Record] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._lock: asyncio.Lock | None = None
        self._waiting = 0  # requests waiting for the engine (llama_outer_lock held)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The base URL, as OPENAI_BASE_URL takes it."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        self._lock = asyncio.Lock()
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def set_behavior(self, **knobs: Any) -> None:
        """Change how the next requests are answered."""
        unknown = set(knobs) - KNOBS
        if unknown:
            raise TypeError(f"unknown knobs {sorted(unknown)}")
        self.behavior.update(knobs)

    def chats(self) -> list[Record]:
        """The chat requests so far."""
        return [r for r in self.records if r.path.endswith("/chat/completions")]

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Poll `predicate(self)` until true or `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.01)
        return bool(predicate(self))

    # ---- HTTP/1.1, as uvicorn speaks it
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                body = json.loads(raw) if raw else {}
                record = Record(method, path, headers, body if isinstance(body, dict) else {})
                self.records.append(record)
                if not await self._dispatch(record, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                     .encode() + body)  # fmt: skip
        await writer.drain()

    async def _dispatch(self, rec: Record, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for the next."""
        if self.api_key is not None and rec.headers.get("authorization") != f"Bearer {self.api_key}":
            rec.outcome = "refused"
            await self._send(writer, 401, {"detail": "Invalid API key"})
            return True
        if rec.method == "GET" and rec.path == "/v1/models":
            async with self._engine():
                # llama-cpp-python's get_models says owned_by "me"; vLLM's ModelCard "vllm".
                owner = "vllm" if self.vllm else "me"
                data = [{"id": n, "object": "model", "owned_by": owner, "permissions": []} for n in self.served]
                if self.vllm:
                    for entry in data:
                        entry["max_model_len"] = self.n_ctx
                rec.outcome = "done"
                await self._send(writer, 200, {"object": "list", "data": data})
            return True
        if rec.method == "POST" and rec.path in ("/v1/chat/completions", "/v1/completions"):
            await self._chat(rec, reader, writer)
            # A stream watches its connection for the client leaving: it is not reused after.
            return rec.outcome == "error"
        if rec.method == "POST" and rec.path == ("/tokenize" if self.vllm else "/extras/tokenize/count"):
            async with self._engine():
                rec.outcome = "done"
                await self._send(writer, 200, self._count(rec.body))
            return True
        rec.outcome = "refused"
        await self._send(writer, 404, {"detail": "Not Found"})
        return True

    @contextlib.asynccontextmanager
    async def _engine(self) -> Any:
        """llama-cpp-python's single model: one request holds it; vLLM mode: no bound."""
        if self.vllm:
            yield
            return
        assert self._lock is not None
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    def _error(self, status: int, message: str, code: str | None = None) -> dict[str, Any]:
        kind = "invalid_request_error" if status < 500 else "internal_server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    async def _chat(self, rec: Record, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        beh, body = dict(self.behavior), rec.body
        if beh.get("status"):
            rec.outcome = "error"
            await self._send(writer, beh["status"], self._error(beh["status"], beh.get("error") or "failed"))
            return
        model = body.get("model")
        if model not in self.served:
            rec.outcome = "error"
            status = 404 if self.vllm else 400
            await self._send(
                writer, status, self._error(status, f"The model `{model}` does not exist", "model_not_found")
            )
            return
        if (refused := options.refusal(body, self.vllm)) is not None:
            rec.outcome = "error"
            await self._send(writer, *refused)
            return
        refusal = self._refusal(rec)
        if refusal is not None:
            rec.outcome = "error"
            await self._send(writer, 400, refusal)
            return
        prompt = self._prompt_tokens(body)
        async with self._engine():
            # uvicorn tells the app when the client has gone (`request.is_disconnected()`).
            gone = asyncio.ensure_future(reader.read(1))
            try:
                await self._stream(rec, beh, prompt, writer, gone)
            finally:
                gone.cancel()

    def _prompt_tokens(self, body: dict[str, Any]) -> int:
        """The fake's tokenizer: 7 tokens a chat message, one a word of a completion prompt."""
        if "prompt" in body:
            return len(str(body["prompt"]).split())
        return PROMPT_TOKENS_PER_MESSAGE * len(body.get("messages") or [])

    def _count(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's TokenizeResponse (serving_tokenization.py: count, max_model_len, tokens), or
        llama-cpp-python's TokenizeInputCountResponse (app.py count_query_tokens: count)."""
        if self.vllm:
            count = PROMPT_TOKENS_PER_MESSAGE * len(body.get("messages") or [])
            return {"count": count, "max_model_len": self.n_ctx, "tokens": list(range(count))}
        return {"count": len(str(body.get("input") or "").split())}

    def _refusal(self, rec: Record) -> dict[str, Any] | None:
        """A 400 the engine answers before generating, or None."""
        body, prompt = rec.body, self._prompt_tokens(rec.body)
        if self.vllm and body.get("continue_final_message") and body.get("add_generation_prompt"):
            # vllm/entrypoints/openai/protocol.py ChatCompletionRequest.check_generation_prompt.
            message = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            return self._error(400, message)
        max_tokens = body.get("max_tokens")
        if self.vllm and isinstance(max_tokens, int) and prompt + max_tokens > self.n_ctx:
            # vllm/entrypoints/openai/serving_engine.py OpenAIServing._validate_input (7ded96b3), answered
            # by create_error_response as a flat ErrorResponse (protocol.py) with status 400.
            message = (f"This model's maximum context length is {self.n_ctx} tokens. However, you requested "
                       f"{max_tokens + prompt} tokens ({prompt} in the messages, {max_tokens} in the completion). "
                       "Please reduce the length of the messages or completion.")  # fmt: skip
            return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
        if prompt >= self.n_ctx:  # llama_cpp/server/errors.py: context_length_exceeded
            message = f"This model's maximum context length is {self.n_ctx} tokens. However, you requested more"
            return self._error(400, message, "context_length_exceeded")
        return None

    def _answered(self, rec: Record) -> int:
        """How much of its (deterministic) answer the prompt already holds, left open to continue.

        vLLM continues a trailing assistant message with `continue_final_message` (the chat
        template rendered without closing it); otherwise, and always in llama-cpp-python's chat
        handler (`Jinja2ChatFormatter` renders with add_generation_prompt=True), it is closed and a
        new assistant turn starts: a new answer. A completion prompt is continued as it ends.
        """
        body = rec.body
        if "prompt" in body:
            text = str(body["prompt"])
        else:
            messages = body.get("messages") or [{}]
            last = messages[-1] if isinstance(messages[-1], dict) else {}
            if not (self.vllm and body.get("continue_final_message") and last.get("role") == "assistant"):
                return 0
            text = str(last.get("content") or "")
        said = [k for k in range(1, len(text.split()) + 1) if text.endswith("".join(map(token_text, range(k))))]
        return max(said, default=0)

    async def _stream(
        self, rec: Record, beh: dict[str, Any], prompt: int, writer: asyncio.StreamWriter, gone: asyncio.Future[bytes]
    ) -> None:
        body = rec.body
        room = self.n_ctx - prompt
        limit = min(int(body.get("max_tokens") or room), room)
        first = self._answered(rec)
        natural = max(int(beh["reply_tokens"]) - first, 0)
        count = min(limit, natural)
        reason = "length" if limit < natural else "stop"
        text_chunks = rec.path.endswith("/v1/completions")
        # The answer's tokens from where the prompt left it (a continuation), cut by stop/format.
        texts, stopped = options.texts(body, [token_text(first + i) for i in range(count)])
        if stopped or len(texts) != count:
            count, reason = min(limit, len(texts)), "length" if limit < len(texts) else "stop"
        call = options.tool_call(body, beh.get("tool_calls"), self.vllm)
        deltas = options.tool_call_deltas(call, "fake", self.vllm) if call else []
        if call:
            count, reason = len(deltas), "tool_calls"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                     b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")  # fmt: skip

        def event_bytes(text: str) -> bytes:
            data = text.encode()
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        def event(obj: Any) -> bytes:
            return event_bytes(f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\r\n\r\n")

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            if text_chunks:  # llama_cpp/llama.py Llama._create_completion: `text` per token, "" at the end
                choice = {"text": delta.get("content", ""), "index": 0, "logprobs": None, "finish_reason": finish}
                return {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                        "model": body.get("model"), "choices": [choice]}  # fmt: skip
            return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": body.get("model"), "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                             "finish_reason": finish}]}  # fmt: skip

        try:
            await asyncio.sleep(float(beh.get("first_token_delay") or 0))
            if not text_chunks:
                writer.write(event(chunk({"role": "assistant"}, None)))
                await writer.drain()
            pace = 1.0 / beh["tokens_per_s"] if beh.get("tokens_per_s") else 0.0
            for i in range(count):
                if i == beh.get("stall_after"):
                    ping = float(beh.get("ping_s") or 3600)
                    while not gone.done():
                        await asyncio.wait([gone], timeout=ping)
                        writer.write(event_bytes(f": ping - {time.strftime('%Y-%m-%d %H:%M:%S')}\r\n\r\n"))
                if i == beh.get("drop_after"):
                    writer.transport.abort()
                    rec.outcome = "dropped"
                    return
                if i == beh.get("error_after"):
                    writer.write(event(self._error(500, "engine failure mid-stream")) + event("[DONE]") + b"0\r\n\r\n")
                    rec.outcome = "error"
                    return
                if i == beh.get("done_after") or (not self.vllm and beh.get("interrupt") and self._waiting):
                    writer.write(event("[DONE]") + b"0\r\n\r\n")
                    await writer.drain()
                    rec.outcome = "interrupted"
                    return
                delta = {"tool_calls": [deltas[i]]} if call else {"content": texts[i]}
                writer.write(event(chunk(delta, None)))
                await writer.drain()
                rec.sent_tokens += 1
                await asyncio.sleep(pace)
                if gone.done():  # checked after every chunk, as llama-cpp-python's get_event_publisher does
                    raise ConnectionResetError
            out = event(chunk({}, reason))
            if beh.get("usage") and (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": prompt, "completion_tokens": count, "total_tokens": prompt + count}
                out += event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                              "model": body.get("model"), "choices": [], "usage": usage})  # fmt: skip
            writer.write(out + event("[DONE]") + b"0\r\n\r\n")
            await writer.drain()
            rec.outcome = "done"
        except (ConnectionError, RuntimeError):
            rec.outcome = "cancelled"
            raise ConnectionResetError from None
