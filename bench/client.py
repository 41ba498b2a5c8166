"""A lean HTTP/1.1 streaming client on asyncio sockets, the same code (and cost) for both paths.

One connection per request, `Connection: close`; the request is written by hand, the answer's
chunked transfer-encoding undone incrementally. Until the first content token is seen, complete
lines are handed to a detector; after that bytes are only collected (checked after the stream).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

READ_SIZE = 65536
TIMEOUT_S = 300.0

Detector = Callable[[bytes], bool]


@dataclass
class Reply:
    """One answer: status, headers, de-chunked body and perf_counter_ns timestamps."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    t_send: int = 0  # before connecting
    t_first: int = 0  # first content token parsed (0: never)
    t_end: int = 0  # end of the answer (last chunk, or EOF)
    error: str = ""

    @property
    def ttft_ms(self) -> float:
        """Send → first content token, in ms (NaN if none came)."""
        return (self.t_first - self.t_send) / 1e6 if self.t_first else float("nan")

    @property
    def total_ms(self) -> float:
        """Send → end of the answer, in ms."""
        return (self.t_end - self.t_send) / 1e6


def sse_token(line: bytes) -> bool:
    """Whether an SSE line is a chunk with content (the runner's first token)."""
    if not line.startswith(b"data: {"):
        return False
    delta = json.loads(line[6:])["choices"][0].get("delta") or {}
    return bool(delta.get("content"))


def openai_token(line: bytes) -> bool:
    """Whether an SSE line is a chunk with content (the OpenAI API's first token)."""
    if not line.startswith(b"data: {"):
        return False
    choices = json.loads(line[6:]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


def ndjson_token(line: bytes) -> bool:
    """Whether an NDJSON line carries content (Ollama's first token)."""
    if not line.startswith(b"{"):
        return False
    obj = json.loads(line)
    return bool(not obj.get("done") and (obj.get("message") or {}).get("content"))


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    """A POST with a JSON body and Connection: close."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench\r\nContent-Type: application/json\r\n"
        f"Accept: */*\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Dechunker:
    """Undoes chunked transfer-encoding incrementally; `done` once the last chunk is seen."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.out = bytearray()
        self.left = 0  # payload bytes of the current chunk still to copy
        self.crlf = False  # a chunk's trailing CRLF is still to skip
        self.done = False

    def feed(self, data: bytes) -> None:
        """Take the next bytes off the wire; payload goes to `out`."""
        raw = self.raw
        raw += data
        while not self.done:
            if self.left:
                take = min(self.left, len(raw))
                if not take:
                    return
                self.out += raw[:take]
                del raw[:take]
                self.left -= take
                if self.left:
                    return
                self.crlf = True
            if self.crlf:
                if len(raw) < 2:
                    return
                del raw[:2]
                self.crlf = False
            eol = raw.find(b"\r\n")
            if eol < 0:
                return
            size = int(bytes(raw[:eol]).split(b";", 1)[0], 16)
            del raw[: eol + 2]
            if size == 0:
                self.done = True
                return
            self.left = size


async def stream(host: str, port: int, path: str, body: bytes, detect: Detector) -> Reply:
    """POST `body` and read the whole streamed answer, timing the first token and the end."""
    reply = Reply()
    try:
        await asyncio.wait_for(_stream(reply, host, port, path, body, detect), TIMEOUT_S)
    except (TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        reply.error = f"{type(exc).__name__}: {exc}"
        reply.t_end = reply.t_end or time.perf_counter_ns()
    return reply


async def _stream(reply: Reply, host: str, port: int, path: str, body: bytes, detect: Detector) -> None:
    clock = time.perf_counter_ns
    reply.t_send = clock()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request_bytes(host, port, path, body))
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        reply.status = int(lines[0].split(" ", 2)[1])
        reply.headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        chunked = reply.headers.get("transfer-encoding", "").lower() == "chunked"
        length = int(reply.headers.get("content-length", "-1"))
        dec = _Dechunker()
        out = dec.out if chunked else bytearray()
        scanned = 0
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            if chunked:
                dec.feed(data)
            else:
                out += data
            if not reply.t_first:
                end = out.rfind(b"\n")
                if end >= scanned:
                    for line in bytes(out[scanned:end]).split(b"\n"):
                        if detect(line.rstrip(b"\r")):
                            reply.t_first = clock()
                            break
                    scanned = end + 1
            if dec.done or (not chunked and 0 <= length <= len(out)):
                break
        reply.t_end = clock()
        reply.body = bytes(out)
        if chunked and not dec.done:
            reply.error = "connection closed before the last chunk"
    finally:
        writer.close()
