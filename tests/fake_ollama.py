"""A fake Ollama server speaking Ollama's real HTTP/NDJSON wire format, failure modes included.

Stdlib only: a hand-written HTTP/1.1 server on asyncio streams, sharing no HTTP code with the
client under test.  In-process: ``with FakeOllama(...).start() as fake: ...``.  Subprocess:
``python -m tests.fake_ollama --port 0`` prints ``READY <port>`` once listening.

It behaves as Ollama's source does where the runner depends on it, each rule citing the file it
follows: the scheduler (``fake_ollama_sched``: at most ``max_loaded_models``, eviction only when
idle, keep-alive refreshed by new requests, pending loads that starve, loads owned by their
requester, /api/ps waiting on loads), names, single-sequence architectures, thinking and prompt
truncation (``fake_ollama_models``), clean done-less ends (``truncate_after``), silent digest
verification in pulls (``verify_s``). What would slow the suite is opt-in (``load_time_s``,
``verify_s``, ``max_loaded_models``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from tests.fake_ollama_models import (
    KNOWN_MODELS,
    SINGLE_SEQUENCE,
    ModelSpec,
    fit_prompt,
    norm,
    parse_name,
    shortest,
    thinking_tokens,
)
from tests.fake_ollama_options import apply_stop, json_tokens, tool_calls_line
from tests.fake_ollama_sched import LoadAborted, Scheduler
from tests.fake_ollama_templates import TEMPLATES, continues

__all__ = ["KNOWN_MODELS", "ChatRecord", "FakeOllama", "ModelSpec", "gojson", "main", "parse_go_duration"]

KNOBS = frozenset(
    {
        "status",
        "error",
        "error_after",
        "truncate_after",
        "drop_after",
        "stall_after",
        "first_byte_delay",
        "tokens_per_s",
        "reply_tokens",
        "tokens",
        "load_time_s",
        "slots",
        "pull_error",
        "thinking_tokens",
        "verify_s",
        "tool_calls",
    }
)
FAIL_KNOBS = ("error_after", "truncate_after", "drop_after", "stall_after")
FINAL = ("done", "cancelled", "error")
JSON_CT = "application/json; charset=utf-8"
RUNNER_ERROR = "an error was encountered while running the model"
PULL_ERROR = "pull model manifest: file does not exist"
DEFAULT_KEEP_ALIVE_S, DEFAULT_NUM_CTX = 300.0, 4096
MAX_HEAD, MAX_BODY, HIGH_WATER = 64 * 1024, 32 * 1024 * 1024, 64 * 1024


@dataclass
class ChatRecord:
    """What the fake saw and did for one /api/chat call (times are time.monotonic())."""

    model: str
    body: dict[str, Any]
    headers: dict[str, str]  # lower-case names
    received_at: float
    started_at: float | None = None  # slot acquired
    tokens_sent: int = 0
    outcome: str = "queued"  # queued | generating | done | cancelled | error
    cancelled_at: float | None = None
    finished_at: float | None = None
    status: int = 200
    done_reason: str | None = None


# ---------------------------------------------------------------- encoding helpers
_GO_ESC = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def gojson(obj: Any) -> bytes:
    """Encode like Go's encoding/json: compact, raw UTF-8, HTML-escaped <, >, &."""
    # Ollama writes every response and NDJSON line with gin's c.JSON / json.Marshal (server/routes.go
    # streamResponse), i.e. Go's encoding/json defaults (SetEscapeHTML true).
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).translate(_GO_ESC).encode()


_ts_cache: tuple[int, bytes] = (-1, b"")


def _created_at() -> bytes:
    """Current UTC time in Go's RFC3339Nano (trailing zeros trimmed)."""
    # api/types.go ChatResponse.CreatedAt is a time.Time, marshalled by Go as RFC3339Nano.
    global _ts_cache
    secs, frac = divmod(time.time_ns(), 1_000_000_000)
    if _ts_cache[0] != secs:
        _ts_cache = (secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode())
    f = (b"%09d" % frac).rstrip(b"0")
    return _ts_cache[1] + (b"." + f if f else b"") + b"Z"


def _rfc3339(wall: float) -> str:
    wall = min(wall, 10_000_000_000.0)  # keep_alive < 0: Ollama shows a date centuries away
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1e6) % 1_000_000:06d}Z"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Parse a Go time.ParseDuration string into seconds; ValueError carries Go's message."""
    # Ollama's api/types.go Duration.UnmarshalJSON hands strings to Go's time.ParseDuration
    # (src/time/format.go ParseDuration), whose error texts these are.
    s, total, neg = text.lstrip("+-"), 0.0, text[:1] == "-"
    if len(text) - len(s) > 1 or not s:
        raise ValueError(f'time: invalid duration "{text}"')
    if s == "0":
        return 0.0
    while s:
        num = re.match(r"\d*(\.\d*)?", s)
        unit = re.match(r"[^\d.]*", s[num.end() :]) if num else None
        if not num or not unit or not re.search(r"\d", num.group()):
            raise ValueError(f'time: invalid duration "{text}"')
        if not unit.group():
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit.group() not in _DUR_UNITS:
            raise ValueError(f'time: unknown unit "{unit.group()}" in duration "{text}"')
        total += float(num.group()) * _DUR_UNITS[unit.group()]
        s = s[num.end() + unit.end() :]
    return -total if neg else total


class _ApiError(Exception):
    """Answered as {"error": msg} by the router; as plain text if raised while parsing HTTP."""

    def __init__(self, status: int, msg: str = "") -> None:
        super().__init__(msg)
        self.status, self.msg = status, msg


def _keep_alive_seconds(v: Any) -> float:
    """Ollama's api.Duration: number = seconds, string = Go duration, negative = forever."""
    # ollama/ollama api/types.go Duration.UnmarshalJSON: float64 → seconds, string →
    # time.ParseDuration, any other type → "Unsupported type", a negative value → forever.
    if v is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _ApiError(400, f"Unsupported type: '{type(v).__name__}'")
    try:
        secs = parse_go_duration(v) if isinstance(v, str) else float(v)
    except ValueError as e:
        raise _ApiError(400, str(e)) from None
    return math.inf if secs < 0 else secs


def _parse_json(raw: bytes) -> dict[str, Any]:
    """Decode a request body with Go-flavoured error messages."""
    text = raw.decode("utf-8", "replace")
    if not text.strip():
        raise _ApiError(400, "missing request body")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise _ApiError(400, "unexpected EOF") from None
        raise _ApiError(400, f"invalid character {text[e.pos]!r} looking for beginning of value") from None
    if not isinstance(obj, dict):
        raise _ApiError(400, f"json: cannot unmarshal {type(obj).__name__} into Go value of type api.Request")
    return obj


# ---------------------------------------------------------------- HTTP/1.1 connection
@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    close: bool


class _Conn:
    """One client connection: own read buffer (shared with the EOF watcher) and response writers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.buf, self.close_after = reader, writer, bytearray(), False

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        self.buf += data
        return bool(data)

    async def _read_until(self, sep: bytes, limit: int) -> bytes | None:
        while (i := self.buf.find(sep)) < 0:
            if len(self.buf) > limit:
                raise _ApiError(431)
            if not await self._fill():
                return None
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    async def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise ConnectionResetError("EOF in request body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_request(self) -> _Request | None:
        """Parse one request (Content-Length or chunked body); None on EOF between requests."""
        while self.buf[:2] == b"\r\n":
            del self.buf[:2]
        head = await self._read_until(b"\r\n\r\n", MAX_HEAD)
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _ApiError(400)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _ApiError(400)
            headers[name.lower()] = value.strip()
        conn_opts = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        close = "close" in conn_opts or (parts[2] == "HTTP/1.0" and "keep-alive" not in conn_opts)
        if headers.get("expect", "").lower() == "100-continue":
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body, te, cl = b"", headers.get("transfer-encoding"), headers.get("content-length")
        if te is not None:
            if te.lower() != "chunked" or cl is not None:
                raise _ApiError(400 if cl is not None else 501)
            body = await self._read_chunked()
        elif cl is not None:
            if not cl.isdigit() or int(cl) > MAX_BODY:
                raise _ApiError(413 if cl.isdigit() else 400)
            body = await self._read_exact(int(cl))
        return _Request(parts[0], parts[1].split("?", 1)[0], headers, body, close)

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = await self._read_until(b"\r\n", 1024)
            if line is None:
                raise ConnectionResetError("EOF in chunked body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ApiError(400) from None
            if size == 0:
                while await self._read_until(b"\r\n", MAX_HEAD):  # trailers
                    pass
                return bytes(body)
            body += await self._read_exact(size)
            if await self._read_exact(2) != b"\r\n" or len(body) > MAX_BODY:
                raise _ApiError(400)

    async def watch_eof(self) -> None:
        """Return once the client closes or resets (like Go's background read)."""
        with contextlib.suppress(ConnectionError, OSError):
            while await self._fill():
                pass

    def head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        """Status line + headers sorted by name, as Go's net/http writes them."""
        hs = headers + [("Date", formatdate(usegmt=True))] + ([("Connection", "close")] if self.close_after else [])
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"] + [f"{k}: {v}" for k, v in sorted(hs)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def stream_head(self) -> bytes:
        """Headers of a chunked NDJSON stream (written together with its first line)."""
        return self.head(200, [("Content-Type", "application/x-ndjson"), ("Transfer-Encoding", "chunked")])

    async def send(self, status: int, ctype: str | None, body: bytes, head_only: bool = False) -> None:
        """Send a complete Content-Length response."""
        hs = [("Content-Length", str(len(body)))] + ([("Content-Type", ctype)] if ctype else [])
        self.writer.write(self.head(status, hs) + (b"" if head_only else body))
        await self.writer.drain()

    async def send_json(self, status: int, obj: Any) -> None:
        """Gin's c.JSON(): charset in the content type, no trailing newline."""
        await self.send(status, JSON_CT, gojson(obj))


# ---------------------------------------------------------------- the server
@dataclass
class _ModelState:
    active: int = 0  # slots in use
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


class FakeOllama:
    """Fake Ollama server on its own asyncio loop in a daemon thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        models: dict[str, ModelSpec] | None = None,
        slots: int = 1,
        tokens_per_s: float = 0.0,
        load_time_s: float = 0.0,
        require_local_host: bool = False,
        max_loaded_models: int = 0,
    ) -> None:
        self.host, self.port = host, port
        self.models = {
            norm(t): dataclasses.replace(s, tag=shortest(t))  # copies: pulls must not leak
            for t, s in (KNOWN_MODELS if models is None else models).items()
        }
        self.slots, self.tokens_per_s, self.load_time_s = slots, tokens_per_s, load_time_s
        self.require_local_host = require_local_host
        self.max_loaded_models = max_loaded_models
        self.sched: Scheduler | None = None
        # Seconds every /api/ps answer is held back (a slow Ollama, for liveness tests).
        self.ps_delay_s = 0.0
        self.ps_started = 0  # slow /api/ps answers under way or sent (a test waits for one to begin)
        self.requests: list[ChatRecord] = []
        self.loaded: dict[str, float] = {}
        self.pulls: list[str] = []
        self._cond = threading.Condition(threading.RLock())
        self._behaviors: dict[str, dict[str, Any]] = {}
        self._states: dict[str, _ModelState] = {}
        self._conns: dict[_Conn, asyncio.Task[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_ev: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:11434."""
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

    # ---- lifecycle
    def start(self) -> FakeOllama:
        """Start the loop thread; return once the socket is listening."""
        self._thread = threading.Thread(target=self._thread_main, name="fake-ollama", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then join the thread."""
        loop, ev, th = self._loop, self._stop_ev, self._thread
        if loop is not None and ev is not None and th is not None and th.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
            th.join(10)

    def __enter__(self) -> FakeOllama:
        return self if self._thread else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:
            self._start_error = e
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stop_ev = asyncio.Event()
        self.sched = Scheduler(self.max_loaded_models, self._mirror_loaded)
        server = await asyncio.start_server(self._handle_conn, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_ev.wait()
        server.close()
        for conn, task in list(self._conns.items()):
            conn.writer.transport.abort()
            task.cancel()
        await asyncio.gather(*self._conns.values(), return_exceptions=True)
        self.sched.close()

    # ---- test-facing API (any thread)
    def set_behavior(self, tag: str, **kw: Any) -> None:
        """Set per-model knobs for subsequent requests ("*" = all models); a None value removes a knob."""
        if set(kw) - KNOBS:
            raise ValueError(f"unknown behaviour knob(s): {sorted(set(kw) - KNOBS)}; known: {sorted(KNOBS)}")
        with self._cond:
            beh = self._behaviors.setdefault(tag if tag == "*" else norm(tag), {})
            for k, v in kw.items():
                if v is None:
                    beh.pop(k, None)
                else:
                    beh[k] = [str(t) for t in v] if k == "tokens" else v

    def clear_behaviors(self) -> None:
        """Forget every behaviour knob."""
        with self._cond:
            self._behaviors.clear()

    def _behavior(self, tag: str) -> dict[str, Any]:
        with self._cond:
            return {**self._behaviors.get("*", {}), **self._behaviors.get(tag, {})}

    def chat_records(self) -> list[ChatRecord]:
        """Consistent snapshot (copies) of every /api/chat call so far."""
        with self._cond:
            return [dataclasses.replace(r) for r in self.requests]

    def active_generations(self) -> int:
        """Chat requests holding a slot and generating right now (not queued, not finished)."""
        with self._cond:
            return sum(r.outcome == "generating" for r in self.requests)

    def wait_for(self, predicate: Callable[[FakeOllama], bool], timeout: float = 5.0) -> bool:
        """Wait until predicate(self) holds; woken by every state change (re-polled every 20 ms too)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.02))
            return True

    def _update(self, rec: ChatRecord, **kw: Any) -> None:
        with self._cond:
            if rec.outcome in FINAL and "outcome" in kw:
                return  # final states are final
            for k, v in kw.items():
                setattr(rec, k, v)
            if kw.get("outcome") in FINAL:
                rec.finished_at = time.monotonic()
                if kw["outcome"] == "cancelled":
                    rec.cancelled_at = rec.finished_at
            self._cond.notify_all()

    # ---- model load / keep-alive / slots (loop thread only)
    def _state(self, tag: str) -> _ModelState:
        return self._states.setdefault(tag, _ModelState())

    def _mirror_loaded(self, loaded: dict[str, float]) -> None:
        """Keep `loaded` (model key → expiry, inf while in use or kept forever) for tests."""
        with self._cond:
            self.loaded = {self.models[k].tag if k in self.models else k: v for k, v in loaded.items()}
            self._cond.notify_all()

    def slots_for(self, spec: ModelSpec, beh: dict[str, Any]) -> int:
        """Parallel sequences for a model: OLLAMA_NUM_PARALLEL, but 1 for some architectures."""
        return 1 if spec.family in SINGLE_SEQUENCE else int(beh.get("slots", self.slots))

    async def _acquire_slot(self, tag: str, st: _ModelState, beh: dict[str, Any]) -> None:
        if st.active < self.slots_for(self.models[tag], beh) and not st.waiters:
            st.active += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        st.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release_slot(tag, st)  # granted just as the client left
            else:
                with contextlib.suppress(ValueError):
                    st.waiters.remove(fut)
            raise

    def _release_slot(self, tag: str, st: _ModelState) -> None:
        st.active -= 1
        slots = self.slots_for(self.models[tag], self._behavior(tag))
        while st.waiters and st.active < slots:
            fut = st.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                st.active += 1

    # ---- connections and routing
    async def _handle_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        self._conns[conn] = asyncio.current_task()  # type: ignore[assignment]
        try:
            while (req := await conn.read_request()) is not None:
                conn.close_after = req.close
                if not await self._dispatch(conn, req) or req.close:
                    break
        except _ApiError as e:  # malformed HTTP
            conn.close_after = True
            with contextlib.suppress(ConnectionError):
                msg = f"{e.status} {HTTPStatus(e.status).phrase}".encode()
                await conn.send(e.status, "text/plain; charset=utf-8", msg)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        except Exception:
            traceback.print_exc(file=sys.stderr)
        finally:
            self._conns.pop(conn, None)
            writer.close()  # flushes what is buffered; a no-op after transport.abort()

    def _host_ok(self, host: str) -> bool:
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        name, port = (name, port) if name else (host, "")
        return name.lower() in ("127.0.0.1", "localhost", "[::1]") and port in ("", str(self.port))

    async def _dispatch(self, conn: _Conn, req: _Request) -> bool:
        """Route one request; returns False when the connection must close."""
        if self.require_local_host and not self._host_ok(req.headers.get("host", "")):
            await conn.send(403, None, b"")  # Ollama's allowedHostsMiddleware: empty 403
            return True
        route, head_only = ("GET" if req.method == "HEAD" else req.method, req.path), req.method == "HEAD"
        try:
            if route == ("GET", "/"):
                await conn.send(200, "text/plain; charset=utf-8", b"Ollama is running", head_only)
            elif route in (("GET", "/api/version"), ("GET", "/api/tags")):
                body = {"/api/version": lambda: {"version": "0.12.6"}, "/api/tags": self._tags}
                await conn.send(200, JSON_CT, gojson(body[req.path]()), head_only)
            elif route == ("GET", "/api/ps"):
                assert self.sched is not None
                await self.sched.wait_loads()  # routes.go PsHandler → sched.loadedModels waits on refMu
                # PsHandler lists the runners loadedModels returned, then builds its answer from
                # them: a slow answer describes the moment the list was taken.
                answer = gojson(self._ps())
                if self.ps_delay_s:
                    # A fault to inject beyond that: PsHandler also asks every loaded runner for its
                    # MemorySize(), which waits on a runner busy decoding.
                    self.ps_started += 1
                    await asyncio.sleep(self.ps_delay_s)
                await conn.send(200, JSON_CT, answer, head_only)
            elif route == ("POST", "/api/show"):
                await conn.send_json(200, self._show(_parse_json(req.body)))
            elif route == ("POST", "/api/pull"):
                return await self._pull(conn, _parse_json(req.body))
            elif route == ("POST", "/api/chat"):
                return await self._chat(conn, req)
            else:
                await conn.send(404, "text/plain", b"404 page not found", head_only)
        except _ApiError as e:
            await conn.send_json(e.status, {"error": e.msg})
        return True

    # ---- simple endpoints
    def _installed(self, tag: str) -> ModelSpec:
        spec = self.models.get(norm(tag))
        if spec is None or not spec.installed:
            # server/routes.go ChatHandler: GetModel fails → 404 `model '<name>' not found`.
            raise _ApiError(404, f"model '{tag}' not found")
        return spec

    def _tags(self) -> dict[str, Any]:
        # server/routes.go ListHandler answers the model list cache (server/model_list_cache.go):
        # installed manifests, named by name.DisplayShortest(), size = bytes on disk.
        return {
            "models": [
                {
                    "name": s.tag,
                    "model": s.tag,
                    "modified_at": "2025-01-01T00:00:00Z",
                    "size": s.size,
                    "digest": s.digest,
                    "details": s.details(),
                }
                for s in self.models.values()
                if s.installed
            ]
        }

    def _ps(self) -> dict[str, Any]:
        out, now, wall = [], time.monotonic(), time.time()
        assert self.sched is not None
        for key, runner in self.sched.runners.items():
            s, ctx, exp = self.models[key], runner.num_ctx, runner.expires_at if runner.refs == 0 else math.inf
            # KV for num_ctx × parallel sequences (llm/llama_server.go passes -c num_ctx*numParallel).
            size = s.size + s.kv_bytes(ctx * self.slots_for(s, self._behavior(key)))
            out.append(
                {
                    "name": s.tag,
                    "model": s.tag,
                    "size": size,
                    "digest": s.digest,
                    "details": s.details(),
                    "expires_at": _rfc3339(wall + (exp - now)),
                    "size_vram": size,
                    "context_length": ctx,
                }
            )
        return {"models": out}

    def _show(self, body: dict[str, Any]) -> dict[str, Any]:
        tag = str(body.get("model") or body.get("name") or "")
        if not tag:
            raise _ApiError(400, "model is required")
        s = self._installed(tag)
        a = s.arch
        pcount = int(float(s.parameter_size.rstrip("BM")) * (1e9 if s.parameter_size.endswith("B") else 1e6))
        info: dict[str, Any] = {
            "general.architecture": a,
            "general.parameter_count": pcount,
            f"{a}.block_count": s.block_count,
            f"{a}.attention.head_count": s.head_count,
            f"{a}.attention.head_count_kv": s.head_count_kv,
            f"{a}.embedding_length": s.embedding_length,
            f"{a}.context_length": s.context_length,
        }
        if s.key_length:
            info[f"{a}.attention.key_length"] = info[f"{a}.attention.value_length"] = s.key_length
        if body.get("verbose") is not True:
            # server/routes.go getModelData decodes with maxArraySize 0 unless verbose, and fs/ggml/gguf.go
            # newArray then keeps no values: every array, per-layer ones included, is null.
            info = {k: None if isinstance(v, list) else v for k, v in info.items()}
        template = TEMPLATES[s.template].text
        # server/routes.go GetModelInfo: `modelfile` is the model's Modelfile as server/images.go
        # Model.String writes it (FROM, TEMPLATE, RENDERER, PARSER, ...), under two comment lines.
        # FROM names the blob under the server's models directory: here the Linux service's
        # (scripts/install.sh configure_systemd makes the `ollama` user, home /usr/share/ollama).
        modelfile = (f'# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this, replace FROM '
                     f'with:\n# FROM {s.tag}\n\nFROM /usr/share/ollama/.ollama/models/blobs/sha256-{s.digest}\n'
                     f'TEMPLATE """{template}"""\n' + (f"RENDERER {s.renderer}\n" if s.renderer else ""))  # fmt: skip
        return {
            "license": "",
            "modelfile": modelfile,
            "parameters": "",
            "template": template,
            "details": s.details(),
            "model_info": info,
            "capabilities": list(s.capabilities),
            "modified_at": "2025-01-01T00:00:00Z",
        }

    async def _pull(self, conn: _Conn, body: dict[str, Any]) -> bool:
        tag = str(body.get("model") or body.get("name") or "")
        if not tag:
            raise _ApiError(400, "model is required")
        spec = self.models.get(norm(tag))
        ok = spec is not None and not self._behavior(norm(tag)).get("pull_error")
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if spec is not None and ok:
            for layer, total in ((spec.digest, spec.size), (hashlib.sha256(spec.digest.encode()).hexdigest(), 487)):
                lines += [
                    {
                        "status": f"pulling {layer[:12]}",
                        "digest": f"sha256:{layer}",
                        "total": total,
                        "completed": total * k // 4,
                    }
                    for k in range(5)
                ]
            lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        else:
            lines.append({"error": PULL_ERROR})
        with self._cond:
            self.pulls.append(tag)
            self._cond.notify_all()
        verify_s = float(self._behavior(norm(tag)).get("verify_s", 0))
        if body.get("stream", True) is False:
            if not ok:
                raise _ApiError(500, PULL_ERROR)
            await asyncio.sleep(verify_s)
            assert spec is not None
            spec.installed = True
            await conn.send_json(200, {"status": "success"})
            return True
        head = conn.stream_head()
        for line in lines:
            if line.get("status") == "writing manifest":
                # server/images.go PullModel: "verifying sha256 digest", then nothing while every
                # layer's sha256 is checked (minutes for a big model), then the manifest is written.
                await conn.writer.drain()
                await asyncio.sleep(verify_s)
                assert spec is not None
                spec.installed = True
            conn.writer.write(head + _chunk(gojson(line) + b"\n"))
            head = b""
            await asyncio.sleep(0)
        conn.writer.write(b"0\r\n\r\n")
        await conn.writer.drain()
        return True

    # ---- /api/chat
    async def _chat(self, conn: _Conn, req: _Request) -> bool:
        """Validate, then run the work while watching for the client going away."""
        rec = ChatRecord(model="", body={}, headers=dict(req.headers), received_at=time.monotonic())
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
        try:
            body = _parse_json(req.body)
            self._update(rec, body=body, model=str(body.get("model") or ""))
            keep_alive = _keep_alive_seconds(body.get("keep_alive"))
            if not body.get("model"):
                raise _ApiError(400, "model is required")
            if not isinstance(body.get("messages") or [], list):
                raise _ApiError(400, "json: cannot unmarshal object into Go struct field ChatRequest.messages")
            spec = self._installed(str(body["model"]))
            if body.get("think") not in (None, False) and "thinking" not in spec.capabilities:
                raise _ApiError(400, f'"{body["model"]}" does not support thinking')
            if body.get("tools") and "tools" not in spec.capabilities:
                host, namespace, name, tag = parse_name(spec.tag)  # Model.Name: the full name
                raise _ApiError(400, f"{host}/{namespace}/{name}:{tag} does not support tools")
        except _ApiError as e:
            self._update(rec, outcome="error", status=e.status)
            await conn.send_json(e.status, {"error": e.msg})
            return True
        watcher = asyncio.ensure_future(conn.watch_eof())
        work = asyncio.ensure_future(self._chat_work(conn, rec, body, spec.tag, keep_alive))
        try:
            await asyncio.wait({watcher, work}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            work.cancel()  # no-op when already done
            watcher.cancel()
            await asyncio.gather(work, watcher, return_exceptions=True)
        exc = None if work.cancelled() else work.exception()
        if not work.cancelled() and exc is None:
            return work.result()
        if exc is not None and not isinstance(exc, (ConnectionError, OSError)):
            self._update(rec, outcome="error", status=500)  # a bug in the fake: fail loudly
            raise exc
        self._update(rec, outcome="cancelled")
        return False

    def _plan(self, body: dict[str, Any], beh: dict[str, Any], open_last: bool) -> tuple[list[str], int, int]:
        """(token cycle, natural number of answer tokens, tokens already answered) for a request.

        The answer is deterministic: with a trailing assistant message left open by the template
        (`open_last`), the model goes on from where that text ends: the tokens it holds are the
        first of its answer, and it answers the rest. A closed one is a finished turn: the model
        starts a new answer from the beginning.
        """
        if "tokens" in beh:
            units, natural = list(beh["tokens"]), len(beh["tokens"])
        else:
            users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
            words = str(users[-1].get("content") or "").split() if users else []
            if body.get("format") not in (None, "", "null"):
                units = json_tokens(body["format"], words or ["ok"])  # the answer the grammar allows
                natural = len(units)
            else:
                units, natural = [w + " " for w in words or ["ok"]], int(beh.get("reply_tokens", 8))
        done, text = 0, str(body["messages"][-1].get("content") or "") if open_last else ""
        while text and done < len(text) and text.startswith("".join(units[i % len(units)] for i in range(done + 1))):
            done += 1
        if text and "".join(units[i % len(units)] for i in range(done)) != text:
            done = len(text.split())  # someone else's words: the model goes on after them
        return units, natural, done

    async def _chat_work(self, conn: _Conn, rec: ChatRecord, body: dict[str, Any], tag: str, keep_alive: float) -> bool:
        key, messages, model = norm(tag), body.get("messages") or [], str(body["model"])
        beh, spec = self._behavior(key), self.models[norm(tag)]

        async def short(status: int, reason: str, obj: dict[str, Any] | None = None) -> bool:
            self._update(rec, outcome="done" if status == 200 else "error", status=status, done_reason=reason or None)
            await conn.send_json(
                status,
                obj
                or {
                    "model": model,
                    "created_at": _created_at().decode(),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": reason,
                    "done": True,
                },
            )
            return True

        sched = self.sched
        assert sched is not None
        # server/routes.go ChatHandler: no messages + keep_alive 0 → unload, done_reason "unload";
        # no messages otherwise → load only, done_reason "load" (both answered as one JSON object).
        if not messages and keep_alive == 0:
            sched.expire(key)
            return await short(200, "unload")
        if "status" in beh:
            await asyncio.sleep(float(beh.get("first_byte_delay", 0)))
            return await short(int(beh["status"]), "", {"error": str(beh.get("error", RUNNER_ERROR))})
        options = body.get("options") or {}
        # llm/server.go NewLlamaServer: num_ctx is capped at the model's training context.
        num_ctx = min(int(options.get("num_ctx") or DEFAULT_NUM_CTX), spec.context_length)
        shift = body.get("shift") is not False
        try:
            load_s = float(beh.get("load_time_s", self.load_time_s))
            load_ns = await sched.acquire(key, num_ctx, shift, keep_alive, load_s)
        except LoadAborted as e:
            return await short(500, "", {"error": str(e)})
        try:
            if not messages:
                return await short(200, "load")
            st = self._state(key)
            await self._acquire_slot(key, st, beh)
            try:
                return await self._generate(conn, rec, body, spec, beh, num_ctx, shift, load_ns, short)
            finally:
                self._release_slot(key, st)
        finally:
            sched.release(key)

    async def _generate(
        self,
        conn: _Conn,
        rec: ChatRecord,
        body: dict[str, Any],
        spec: ModelSpec,
        beh: dict[str, Any],
        num_ctx: int,
        shift: bool,
        load_ns: int,
        short: Callable[..., Any],
    ) -> bool:
        self._update(rec, outcome="generating", started_at=time.monotonic())
        if beh.get("first_byte_delay"):
            await asyncio.sleep(float(beh["first_byte_delay"]))
        messages = body.get("messages") or []
        open_last = continues(spec.template, messages)
        fitted = fit_prompt(messages, num_ctx, body.get("truncate") is not False, shift, open_last)
        if isinstance(fitted, str):
            return bool(await short(400, "", {"error": fitted}))
        if isinstance(fitted, dict):  # llama-server's body, relayed as the error text (statusErrorMessage)
            return bool(await short(400, "", {"error": gojson(fitted).decode()}))
        units, natural, done = self._plan(body, beh, open_last)
        units, natural = units[done % len(units) :] + units[: done % len(units)], max(natural - done, 0)
        thinking = thinking_tokens(spec, body.get("think"), beh)
        limit = math.inf
        num_predict = (body.get("options") or {}).get("num_predict")
        if isinstance(num_predict, (int, float)) and num_predict >= 0:
            limit = num_predict
        # Without context shift llama-server stops a full slot with STOP_TYPE_LIMIT (llama.cpp
        # tools/server/server-context.cpp), which Ollama reports as "length" (llm/llama_server.go Completion).
        if not shift:
            limit = min(limit, num_ctx - fitted - 1)
        count, reason = thinking + natural, "stop"
        if count > limit:
            count, reason = int(limit), "length"
        units, answered, stopped = apply_stop(units, count - thinking, (body.get("options") or {}).get("stop"))
        if stopped:
            count, reason = thinking + answered, "stop"
        calls = beh.get("tool_calls") if body.get("tools") else None
        if calls:
            count, reason = thinking + 1, "stop"  # the calls come whole, in one line
        mode = next((k for k in FAIL_KNOBS if k in beh), None)
        count = min(count, int(beh[mode])) if mode else count
        stats = {"prompt_eval_count": fitted, "load_duration": load_ns, "thinking": thinking, "tool_calls": calls}
        rate = float(beh.get("tokens_per_s", self.tokens_per_s))
        model = str(body["model"])
        args = (conn, rec, model, units, count, reason, mode, beh, rate, stats)
        return await (self._whole(*args) if body.get("stream", True) is False else self._stream(*args))

    def _final(
        self, model: str, content: str, reason: str, rec: ChatRecord, n: int, t_gen: int, stats: dict[str, Any]
    ) -> dict[str, Any]:
        now = time.monotonic_ns()
        return {
            "model": model,
            "created_at": _created_at().decode(),
            "message": {"role": "assistant", "content": content},
            "done_reason": reason,
            "done": True,
            "total_duration": max(now - int(rec.received_at * 1e9), 1),
            "load_duration": stats["load_duration"],
            "prompt_eval_count": stats["prompt_eval_count"],
            "prompt_eval_duration": stats["prompt_eval_count"] * 20_000,
            "eval_count": n,
            "eval_duration": max(now - t_gen, 1),
        }

    async def _stream(
        self,
        conn: _Conn,
        rec: ChatRecord,
        model: str,
        units: list[str],
        count: int,
        reason: str,
        mode: str | None,
        beh: dict[str, Any],
        rate: float,
        stats: dict[str, Any],
    ) -> bool:
        """One chunk per NDJSON line, paced at `rate`; then the ending that `mode` asks for."""
        w, tr, loop = conn.writer, conn.writer.transport, asyncio.get_running_loop()
        pre = b'{"model":' + gojson(model) + b',"created_at":"'
        mid, post = b'","message":{"role":"assistant","content":', b'},"done":false}\n'
        enc, m = [gojson(u) for u in units], len(units)
        # Reasoning first, in message.thinking with an empty content (server/routes.go ChatHandler).
        thinking, think_mid = int(stats.get("thinking", 0)), b'","message":{"role":"assistant","content":"","thinking":'
        interval, t0, t_gen = (1.0 / rate if rate > 0 else 0.0), loop.time(), time.monotonic_ns()
        head = conn.stream_head()  # Ollama sends headers only with the first line
        for i in range(count):
            if tr.is_closing():
                raise ConnectionResetError("client went away")
            if i < thinking:
                line = pre + _created_at() + think_mid + b'"Hmm, "' + post
            elif stats.get("tool_calls"):
                line = pre + _created_at() + b'","message":' + gojson(tool_calls_line(stats["tool_calls"])) + post[1:]
            else:
                line = pre + _created_at() + mid + enc[(i - thinking) % m] + post
            w.write(head + b"%x\r\n%b\r\n" % (len(line), line))
            head, rec.tokens_sent = b"", i + 1
            if tr.get_write_buffer_size() > HIGH_WATER:
                await w.drain()
            delay = t0 + (i + 1) * interval - loop.time() if interval else 0.0
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % 64 == 63:
                await asyncio.sleep(0)
        if mode == "stall_after":
            await asyncio.Event().wait()  # until the watcher sees the client leave
        if mode == "drop_after":
            tr.set_write_buffer_limits(0)
            await w.drain()  # flush the n lines, then reset the connection
            self._update(rec, outcome="error")
            tr.abort()
            return False
        if mode == "error_after":
            tail = _chunk(gojson({"error": str(beh.get("error", RUNNER_ERROR))}) + b"\n")
        elif mode == "truncate_after":
            # A clean end without a `done` line: Ollama's repetition stop (llm/llama_server.go
            # Completion returns ctx.Err() = nil after 30 repeated tokens, with no final response).
            tail = b""
        else:
            tail = _chunk(gojson(self._final(model, "", reason, rec, count, t_gen, stats)) + b"\n")
        # record first, so a client that has seen the end also sees a final record
        self._update(rec, outcome="error" if mode else "done", done_reason=None if mode else reason)
        w.write(head + tail + b"0\r\n\r\n")
        return True

    async def _whole(
        self,
        conn: _Conn,
        rec: ChatRecord,
        model: str,
        units: list[str],
        count: int,
        reason: str,
        mode: str | None,
        beh: dict[str, Any],
        rate: float,
        stats: dict[str, Any],
    ) -> bool:
        """stream:false - one Content-Length JSON object; failure knobs mapped onto that."""
        t_gen = time.monotonic_ns()
        if rate > 0:
            await asyncio.sleep(count / rate)
        rec.tokens_sent = count
        if mode == "stall_after":
            await asyncio.Event().wait()
        if mode == "drop_after":
            self._update(rec, outcome="error")
            conn.writer.transport.abort()
            return False
        if mode == "error_after":
            self._update(rec, outcome="error", status=500)
            await conn.send_json(500, {"error": str(beh.get("error", RUNNER_ERROR))})
            return True
        thinking = min(int(stats.get("thinking", 0)), count)
        content = "".join(units[i % len(units)] for i in range(count - thinking))
        body = gojson(self._final(model, content, reason, rec, count, t_gen, stats))
        if mode == "truncate_after":  # promise the whole body, deliver half, hang up
            self._update(rec, outcome="error")
            conn.writer.write(
                conn.head(200, [("Content-Length", str(len(body))), ("Content-Type", JSON_CT)]) + body[: len(body) // 2]
            )
            return False
        self._update(rec, outcome="done", done_reason=reason)
        await conn.send(200, JSON_CT, body)
        return True


# ---------------------------------------------------------------- subprocess mode
def main(argv: list[str] | None = None) -> int:
    """CLI: serve until SIGTERM/SIGINT, after printing `READY <port>` on stdout."""
    p = argparse.ArgumentParser(prog="python -m tests.fake_ollama", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11434, help="0 = pick a free port")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="0 = as fast as possible")
    p.add_argument("--slots", type=int, default=1, help="concurrent generations per model")
    p.add_argument("--load-time", type=float, default=0.0, help="seconds to load a model")
    p.add_argument("--models", default="", help="comma-separated tags; unknown tags get llama3.2:3b numbers")
    p.add_argument("--reply-tokens", type=int, default=None, help="tokens per reply (default 8)")
    p.add_argument("--require-local-host", action="store_true")
    p.add_argument("--max-loaded-models", type=int, default=0, help="Ollama's OLLAMA_MAX_LOADED_MODELS (0: no limit)")
    a = p.parse_args(argv)
    models = None
    if a.models:
        models = {
            t: KNOWN_MODELS.get(t) or dataclasses.replace(KNOWN_MODELS["llama3.2:3b"], tag=t)
            for t in a.models.split(",")
            if t
        }
    fake = FakeOllama(
        a.host,
        a.port,
        models=models,
        slots=a.slots,
        tokens_per_s=a.tokens_per_s,
        load_time_s=a.load_time,
        require_local_host=a.require_local_host,
        max_loaded_models=a.max_loaded_models,
    )
    if a.reply_tokens is not None:
        fake.set_behavior("*", reply_tokens=a.reply_tokens)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fake.start()
    print(f"READY {fake.port}", flush=True)
    while not stop.wait(3600):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
